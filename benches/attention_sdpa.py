#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention (causal, bf16) on the shapes of
`graft bench attention`: forward and backward timed apart with CUDA events, one JSON
line in the same schema (FLOP counted the same way), so the two can be compared from
one device call (benches/attention_vs_sdpa.sh)."""
import argparse
import json

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    dev = "cuda"
    shape = lambda h: (a.batch, h, a.seq, a.head_dim)
    q = torch.randn(shape(a.heads), device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(shape(a.kv_heads), device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(shape(a.kv_heads), device=dev, dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(shape(a.heads), device=dev, dtype=torch.bfloat16)

    def attend():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    for _ in range(a.warmup):
        torch.autograd.grad(attend(), (q, k, v), dout)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(a.steps):
        out = attend()
    end.record()
    torch.cuda.synchronize()
    forward_ms = start.elapsed_time(end) / a.steps
    total = 0.0
    for _ in range(a.steps):
        out = attend()
        start.record()
        torch.autograd.grad(out, (q, k, v), dout)
        end.record()
        torch.cuda.synchronize()
        total += start.elapsed_time(end)
    backward_ms = total / a.steps
    visible = a.seq * (a.seq + 1) / 2
    flop = 4.0 * a.batch * a.heads * visible * a.head_dim
    print(json.dumps({
        "kernel": f"torch-sdpa {torch.__version__}",
        "shape": {"batch": a.batch, "heads": a.heads, "kv_heads": a.kv_heads, "seq": a.seq,
                  "head_dim": a.head_dim},
        "forward_ms": forward_ms,
        "backward_ms": backward_ms,
        "forward_tflops": flop / (forward_ms * 1e9),
        "backward_tflops": 2.5 * flop / (backward_ms * 1e9),
    }))


if __name__ == "__main__":
    main()
