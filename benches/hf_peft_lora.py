#!/usr/bin/env python3
"""Reference throughput for LoRA fine-tuning with Hugging Face transformers + PEFT.

Runs on a CUDA machine that has torch, transformers and peft installed. Builds a
Llama-architecture model with random weights from a named preset (no download),
wraps it with a PEFT LoRA adapter, and times optimizer steps on random token ids.
Prints one JSON line per preset: tokens/s, ms/step, peak GPU memory.

  python3 hf_peft_lora.py --preset llama-1b --seq 2048 --batch 4 --steps 20

This is shared/bench/hf_peft_lora.py with one addition, `--gate PREFIX`, which lets
benches/gpu_vs_reference.sh prepare many reference runs at once and time them one at a
time: the run builds its model, waits for its turn to warm up (below), runs its warm-up
steps (torch.compile compiles in the first), gives its cached blocks back to the
driver, writes PREFIX.ready and waits for PREFIX.go. Then it runs two more warm-up
steps (the allocator grows its cache again) and times its steps exactly as without the
gate, alone on the card. The workload, the model, the optimizer and what is timed are
unchanged. A gated run draws its random weights on the GPU rather than the CPU (the
same initialisation, other random values): ten runs drawing theirs on 16 host cores at
once, an 8B model among them, took minutes. It prints on stderr when it was built, when
its turn came and when it was ready, in seconds since it started.

Turns, through locks in PREFIX's directory: an eager run warms up alone on the card
(`gpu.lock` held exclusively: its activations are the largest); compiled runs, whose
warm-up is mostly compilation on the host, two at a time (`compile-0.lock` or
`compile-1.lock`, with `gpu.lock` shared), which two llama-1b compiled warm-ups' memory
allows on a 141 GB card beside the waiting runs' weights.
"""
import argparse, contextlib, fcntl, json, os, sys, time

PRESETS = {
    # Llama-3.2-1B shapes
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     tie_word_embeddings=True, rope_theta=500000.0),
    # Llama-3.1-8B shapes
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     tie_word_embeddings=False, rope_theta=500000.0),
    # SmolLM2-135M shapes
    "smol-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                      tie_word_embeddings=True, rope_theta=100000.0),
    # a tiny model for smoke tests
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, vocab_size=4096,
                 tie_word_embeddings=False, rope_theta=10000.0),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def taken(lock_file):
    """Whether this process now holds `lock_file` (it did not wait for it)."""
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def warm_up_turn(folder, compiled):
    """Holds this run's turn to warm up: alone if eager, one of two if compiled."""
    with contextlib.ExitStack() as stack:
        card = stack.enter_context(open(os.path.join(folder, "gpu.lock"), "w"))
        if compiled:
            slots = [stack.enter_context(open(os.path.join(folder, f"compile-{i}.lock"), "w"))
                     for i in range(2)]
            while not any(taken(slot) for slot in slots):
                time.sleep(0.5)
            fcntl.flock(card, fcntl.LOCK_SH)
        else:
            fcntl.flock(card, fcntl.LOCK_EX)
        yield


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-1b", choices=sorted(PRESETS))
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--gate", default=None, metavar="PREFIX",
                    help="warm up under PREFIX's directory's gpu.lock, then wait for PREFIX.go")
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    cfg = LlamaConfig(max_position_embeddings=max(a.seq, 2048), rms_norm_eps=1e-5,
                      attn_implementation=a.attn, **PRESETS[a.preset])
    started = time.perf_counter()

    def say(event):
        if a.gate:
            print(f"{event} at {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)

    with torch.device(a.device) if a.gate else contextlib.nullcontext():
        model = LlamaForCausalLM(cfg)
    model = model.to(device=a.device, dtype=dtype)
    if a.gate:
        torch.cuda.empty_cache()  # the float32 draw's blocks, before others warm up
    say("built")
    if a.grad_ckpt:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.rank, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    if a.compile:
        model = torch.compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=(a.device == "cuda"))
    gen = torch.Generator(device="cpu").manual_seed(1)

    def batch():
        ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=gen)
        return ids.to(a.device)

    def step():
        ids = batch()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    if a.gate:
        with warm_up_turn(os.path.dirname(a.gate) or ".", a.compile):
            say("turn came")
            for _ in range(a.warmup):
                step()
            sync()
            torch.cuda.empty_cache()
        say("ready")
        open(a.gate + ".ready", "w").close()
        while not os.path.exists(a.gate + ".go"):
            time.sleep(0.2)
        for _ in range(2):
            step()
    else:
        for _ in range(a.warmup):
            step()
    sync()
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    toks = a.batch * a.seq * a.steps
    print(json.dumps(dict(
        impl="hf-peft", preset=a.preset, seq=a.seq, batch=a.batch, rank=a.rank, attn=a.attn,
        dtype=a.dtype, grad_ckpt=a.grad_ckpt, compile=a.compile, steps=a.steps,
        tokens_per_s=round(toks / dt, 1), ms_per_step=round(1000 * dt / a.steps, 2),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if a.device == "cuda" else None,
        trainable=sum(p.numel() for p in params), loss=float(loss),
        device=torch.cuda.get_device_name() if a.device == "cuda" else "cpu")))


if __name__ == "__main__":
    main()
