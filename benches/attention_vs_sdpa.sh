#!/usr/bin/env bash
# graft's flash-attention kernels against PyTorch's SDPA on the same shapes, forward
# and backward timed apart, in one device call. Shapes are SEQ:BATCH:HEADS:KV_HEADS:D
# (default: llama-1b's heads at 2k-32k and llama-8b's at 8k). Run from the repository
# root on the GPU machine with the CUDA build in .gpu/graft:
#   benches/attention_vs_sdpa.sh
#   SHAPES="16384:1:32:8:64" STEPS=20 benches/attention_vs_sdpa.sh
set -u
GRAFT=${GRAFT:-$PWD/.gpu/graft}
STEPS=${STEPS:-10}
SHAPES=${SHAPES:-"2048:4:32:8:64 8192:1:32:8:64 16384:1:32:8:64 32768:1:32:8:64 8192:1:32:8:128"}
HERE=$(dirname "$0")
for shape in $SHAPES; do
  IFS=: read -r seq batch heads kv d <<<"$shape"
  args=(--seq "$seq" --batch "$batch" --heads "$heads" --kv-heads "$kv" --head-dim "$d" --steps "$STEPS")
  "$GRAFT" bench attention "${args[@]}" || echo "{\"kernel\": \"graft-flash\", \"error\": \"exit $?\", \"seq\": $seq}"
  python3 "$HERE/attention_sdpa.py" "${args[@]}" || echo "{\"kernel\": \"sdpa\", \"error\": \"exit $?\", \"seq\": $seq}"
done | tee "${OUT:-/tmp}/attention.jsonl"
python3 - "${OUT:-/tmp}/attention.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print("| shape (b x h/kv x s x d) | kernel | forward ms | TFLOP/s | backward ms | TFLOP/s |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for r in rows:
    if "error" in r:
        print(f"| seq {r.get('seq')} | {r['kernel']} | {r['error']} | | | |")
        continue
    s = r["shape"]
    name = f"{s['batch']} x {s['heads']}/{s['kv_heads']} x {s['seq']} x {s['head_dim']}"
    print(f"| {name} | {r['kernel']} | {r['forward_ms']:.2f} | {r['forward_tflops']:.0f} | "
          f"{r['backward_ms']:.2f} | {r['backward_tflops']:.0f} |")
PY
