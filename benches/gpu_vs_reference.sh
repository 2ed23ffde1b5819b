#!/usr/bin/env bash
# graft against Hugging Face transformers + PEFT on the same GPU, in one device call:
# for each preset, `graft bench train --backend cuda` and then the reference script
# `hf_peft_lora.py` on the same workload (random weights and tokens, LoRA r=16 on all
# seven projections, AdamW, clip 1.0), then a table of both figures and their ratio.
#
# Run from the repository root on the GPU machine, with the CUDA build of graft and
# the reference script carried in `.gpu/` (see shared/DEVICE.md):
#
#   benches/gpu_vs_reference.sh                      # llama-1b, smol-135m, tiny
#   CONFIGS="tiny:512:8" STEPS=10 benches/gpu_vs_reference.sh
#   CONFIGS="llama-1b:32768:1:ckpt" benches/gpu_vs_reference.sh
#       # a fourth field `ckpt`: activation checkpointing on both sides, per layer
#       # (graft `--checkpointing layers --keep-projections`: the layers' inputs and
#       # their projections' outputs kept, the rest recomputed; HF `--grad-ckpt`)
#   REF_ARGS=--compile CONFIGS="llama-1b:2048:4" benches/gpu_vs_reference.sh
#       # the reference under torch.compile
#
# Figures from different calls are not comparable: both sides run in this one call.
# cubecl's compiled-kernel (PTX) and autotune caches live in $CUBECL_DIR, so only the
# first graft run of a call pays for compilation; each run also warms up before timing.
set -u

GRAFT=${GRAFT:-$PWD/.gpu/graft}
REF=${REF:-}
if [ -z "$REF" ]; then
  for candidate in .gpu/hf_peft_lora.py ../shared/bench/hf_peft_lora.py shared/bench/hf_peft_lora.py; do
    if [ -f "$candidate" ]; then REF=$(realpath "$candidate"); break; fi
  done
fi
CONFIGS=${CONFIGS:-"llama-1b:2048:4 smol-135m:2048:8 tiny:512:8"}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
RANK=${RANK:-16}
TIMEOUT=${TIMEOUT:-400}
GRAFT_ARGS=${GRAFT_ARGS:-}
REF_ARGS=${REF_ARGS:-}
LOGS=${LOGS:-${OUT:-/tmp}/bench-logs}
CUBECL_DIR=${CUBECL_DIR:-$PWD/.gpu/cubecl}
mkdir -p "$LOGS" "$CUBECL_DIR"

# cubecl reads cubecl.toml from the working directory: keep PTX and autotune results
# on disk so that later runs (and later presets) reuse them.
if [ ! -f "$CUBECL_DIR/cubecl.toml" ]; then
  cat >"$CUBECL_DIR/cubecl.toml" <<'TOML'
[compilation]
cache = "local"

[autotune]
cache = "local"
TOML
fi

# shellcheck source=benches/gpu_common.sh
. "$(dirname "$0")/gpu_common.sh"

results=$LOGS/results.jsonl
: >"$results"
for config in $CONFIGS; do
  IFS=: read -r preset seq batch ckpt <<<"$config"
  name="$preset-${seq}x$batch${ckpt:+-ckpt}"
  graft_ckpt=${ckpt:+--checkpointing layers --keep-projections}
  ref_ckpt=${ckpt:+--grad-ckpt}
  ckpt_json=$([ -n "$ckpt" ] && echo true || echo false)
  echo "== graft $name" >&2
  # shellcheck disable=SC2086
  (cd "$CUBECL_DIR" && timeout "$TIMEOUT" "$GRAFT" bench train --backend cuda --preset "$preset" \
    --seq "$seq" --batch "$batch" --rank "$RANK" --steps "$STEPS" --warmup "$WARMUP" $graft_ckpt $GRAFT_ARGS) \
    >"$LOGS/graft-$name.out" 2>"$LOGS/graft-$name.err"
  status=$?
  line=$(grep '^{' "$LOGS/graft-$name.out" | tail -n 1)
  if [ -z "$line" ]; then
    line="{\"impl\":\"graft\",\"preset\":\"$preset\",\"seq\":$seq,\"batch\":$batch,\"grad_ckpt\":$ckpt_json,\"error\":\"exit $status: $(tail -c 300 "$LOGS/graft-$name.err" | tr -d '"\\\n' )\"}"
  fi
  echo "$line" | tee -a "$results"
  echo "== reference $name" >&2
  # shellcheck disable=SC2086
  timeout "$TIMEOUT" python3 "$REF" --preset "$preset" --seq "$seq" --batch "$batch" --rank "$RANK" \
    --steps "$STEPS" --warmup "$WARMUP" $ref_ckpt $REF_ARGS >"$LOGS/ref-$name.out" 2>"$LOGS/ref-$name.err"
  status=$?
  line=$(grep '^{' "$LOGS/ref-$name.out" | tail -n 1)
  if [ -z "$line" ]; then
    line="{\"impl\":\"hf-peft\",\"preset\":\"$preset\",\"seq\":$seq,\"batch\":$batch,\"grad_ckpt\":$ckpt_json,\"error\":\"exit $status: $(tail -c 300 "$LOGS/ref-$name.err" | tr -d '"\\\n')\"}"
  fi
  echo "$line" | tee -a "$results"
done

python3 "$(dirname "$0")/compare_table.py" "$results"
