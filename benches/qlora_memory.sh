#!/usr/bin/env bash
# QLoRA on Llama-3.1-8B's shapes: `graft train` with the frozen base stored as NF4,
# int8 and bf16 (`[compute] base`), against HF + PEFT in bf16, in one device call.
# LoRA r=16 on all seven projections, batch 1, seq 2048 and 8192, activation
# checkpointing on (graft: `compute.checkpointing = "layers"`, per-layer recomputation as
# HF's, or $CHECKPOINTING; HF: --grad-ckpt),
# AdamW, clip 1.0. Prints, per run, tokens/s (graft: the trainer's steady figure as
# `graft train --json` reports it; HF: its own JSON line) and the peak device memory
# nvidia-smi saw (the pool cubecl reserved for graft, with the CUDA context; torch's
# cache for HF, whose `max_memory_allocated` is in its JSON as peak_gib), graft's own
# figure of its pool at the end (`pool_reserved_gib` in `graft train --json`), then a
# table.
#
# Run from the repository root on the GPU machine with the CUDA build in .gpu/graft
# (see shared/DEVICE.md). Making the folder (random bf16 weights via transformers,
# ~16 GB on disk) takes a few minutes; it is kept in $WORK while the machine stays
# warm. Each run loads the 16 GB folder (and quantizes it, on all cores), so within a
# device call's 10 minutes run one sequence length a call:
#
#   SEQS=2048 benches/qlora_memory.sh             # nf4, int8, bf16 and HF at 2048
#   SEQS=8192 benches/qlora_memory.sh             # the same at 8192
#   SEQS=2048 SCHEMES="nf4 bf16" HF=0 benches/qlora_memory.sh
#
# TIMEOUT (seconds, default 240) bounds each graft run, HF_TIMEOUT (default TIMEOUT) the
# reference's, which initialises the 8B model's random weights on the host first.
set -u
GRAFT=${GRAFT:-$PWD/.gpu/graft}
PRESET=${PRESET:-llama-8b}
SEQS=${SEQS:-2048 8192}
SCHEMES=${SCHEMES:-nf4 int8 bf16}
BATCH=${BATCH:-1}
STEPS=${STEPS:-12}
HF=${HF:-1}
TIMEOUT=${TIMEOUT:-240}
HF_TIMEOUT=${HF_TIMEOUT:-$TIMEOUT}
CHECKPOINTING=${CHECKPOINTING:-layers}
# Tokens per part of the staged head and loss (compute.loss_chunk_tokens; 0: whole).
LOSS_CHUNK=${LOSS_CHUNK:-0}
# A smoke run on the CPU: BACKEND=cpu DTYPE=f32 SCHEMES="nf4 int8 dtype" HF=0.
BACKEND=${BACKEND:-cuda}
DTYPE=${DTYPE:-bf16}
LOGS=${LOGS:-${OUT:-/tmp}/qlora-logs}
WORK=${WORK:-/tmp/graft-qlora-bench}
mkdir -p "$LOGS" "$WORK"
# shellcheck source=benches/gpu_common.sh
. "$(dirname "$0")/gpu_common.sh"
FOLDER=$WORK/$PRESET
MAX_SEQ=$(echo $SEQS | tr ' ' '\n' | sort -n | tail -n 1)
make_folder "$FOLDER" "$PRESET" $(( (STEPS + 2) * MAX_SEQ * BATCH + MAX_SEQ * 8 )) || exit 1
baseline=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1)
echo "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1); in use before: ${baseline:-?} MiB"
# The peak a run added to what was in use before, in MiB ("-" without nvidia-smi).
added() {
  local peak
  peak=$(cat "$1.peak" 2>/dev/null)
  if [ -n "$peak" ] && [ -n "$baseline" ]; then echo $(( peak - baseline )); else echo "-"; fi
}
ROWS=()
cd "$WORK"
for SEQ in $SEQS; do
  for SCHEME in $SCHEMES; do
    NAME=graft-$SCHEME-$SEQ
    bench_experiment "$WORK/$NAME.toml" "dtype = \"$DTYPE\"
base = \"$SCHEME\"
checkpointing = \"$CHECKPOINTING\"
loss_chunk_tokens = $LOSS_CHUNK"
    rm -rf "$WORK/store-$NAME"
    echo "== $NAME" >&2
    peak_of "$LOGS/$NAME" timeout "$TIMEOUT" "$GRAFT" --store "$WORK/store-$NAME" train "$WORK/$NAME.toml" --backend "$BACKEND" --quiet --json \
      >"$LOGS/$NAME.out" 2>"$LOGS/$NAME.err"
    status=$?
    tokens=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["tokens_per_s"]))' "$LOGS/$NAME.out" 2>/dev/null || echo "-")
    pool=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["pool_reserved_gib"] * 1024))' "$LOGS/$NAME.out" 2>/dev/null || echo "-")
    echo "$NAME exit $status: $(tail -c 600 "$LOGS/$NAME.out")"
    [ "$status" -eq 0 ] || tail -c 2000 "$LOGS/$NAME.err"
    ROWS+=("| graft train, base $SCHEME | $SEQ x $BATCH | $tokens | $(added "$LOGS/$NAME") | $pool |")
  done
  if [ "$HF" = 1 ] && [ -z "$REF" ]; then
    echo "HF=1 but no hf_peft_lora.py was found: set REF to its path" >&2
    ROWS+=("| HF + PEFT bf16 (no reference script found) | $SEQ x $BATCH | - | - | - |")
  elif [ "$HF" = 1 ]; then
    NAME=hf-bf16-$SEQ
    echo "== $NAME" >&2
    peak_of "$LOGS/$NAME" timeout "$HF_TIMEOUT" python3 "$REF" --preset "$PRESET" --seq "$SEQ" --batch "$BATCH" --steps 10 --warmup 3 --grad-ckpt \
      >"$LOGS/$NAME.out" 2>"$LOGS/$NAME.err"
    status=$?
    line=$(grep '^{' "$LOGS/$NAME.out" | tail -n 1)
    echo "$NAME exit $status: $line"
    [ "$status" -eq 0 ] || tail -c 1500 "$LOGS/$NAME.err"
    tokens=$(echo "$line" | python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"]))' 2>/dev/null || echo "-")
    allocated=$(echo "$line" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["peak_gib"])' 2>/dev/null || echo "-")
    ROWS+=("| HF + PEFT bf16 (max_memory_allocated $allocated GiB) | $SEQ x $BATCH | $tokens | $(added "$LOGS/$NAME") | - |")
  fi
done
echo
echo "| run | seq x batch | tokens/s | peak device memory, MiB (nvidia-smi, less what was in use before) | graft's pool at the end, MiB |"
echo "| --- | --- | ---: | ---: | ---: |"
printf '%s\n' "${ROWS[@]}"
