#!/usr/bin/env bash
# `graft train` (the product's own code path) against `graft bench train` and HF +
# PEFT, in one device call, on Llama-3.2-1B's shapes: LoRA r=16 on all seven
# projections, bf16 base, seq 2048 x batch 4, AdamW, clip 1.0.
#
# Run from the repository root on the GPU machine with the CUDA build in .gpu/graft
# (see shared/DEVICE.md). Writes logs under $OUT (or /tmp) and prints one JSON line
# per measurement, then the table.
#
#   benches/train_vs_reference.sh                 # llama-1b 2048 x 4
#   PRESET=smol-135m BATCH=8 benches/train_vs_reference.sh
set -u
GRAFT=${GRAFT:-$PWD/.gpu/graft}
PRESET=${PRESET:-llama-1b}
SEQ=${SEQ:-2048}
BATCH=${BATCH:-4}
STEPS=${STEPS:-30}
SET=${SET:-}
LOGS=${LOGS:-${OUT:-/tmp}/train-logs}
WORK=${WORK:-/tmp/graft-train-bench}
mkdir -p "$LOGS" "$WORK"
# shellcheck source=benches/gpu_common.sh
. "$(dirname "$0")/gpu_common.sh"
FOLDER=$WORK/$PRESET
make_folder "$FOLDER" "$PRESET" $(( (STEPS + 2) * SEQ * BATCH + SEQ * 8 )) || exit 1
bench_experiment "$WORK/train.toml" 'dtype = "bf16"'
cd "$WORK"
rm -rf "$WORK/store"
echo "== graft train" >&2
# shellcheck disable=SC2086
peak_of "$LOGS/train" "$GRAFT" --store "$WORK/store" train "$WORK/train.toml" --backend cuda --quiet --json $SET \
  >"$LOGS/train.out" 2>"$LOGS/train.err"
echo "graft train exit $?: $(tail -c 2000 "$LOGS/train.out")"
tail -c 3000 "$LOGS/train.err"
echo "== graft bench train" >&2
peak_of "$LOGS/bench" "$GRAFT" bench train --backend cuda --preset "$PRESET" --seq "$SEQ" --batch "$BATCH" \
  --steps 20 --warmup 5 >"$LOGS/bench.out" 2>"$LOGS/bench.err"
echo "graft bench exit $?: $(tail -c 2000 "$LOGS/bench.out")"
tail -c 2000 "$LOGS/bench.err"
echo "== reference" >&2
peak_of "$LOGS/ref" python3 "$REF" --preset "$PRESET" --seq "$SEQ" --batch "$BATCH" --steps 20 --warmup 5 \
  >"$LOGS/ref.out" 2>"$LOGS/ref.err"
echo "reference exit $?: $(grep '^{' "$LOGS/ref.out" | tail -n 1)"
tail -c 1000 "$LOGS/ref.err"
echo "== graft reproduce (same backend)" >&2
RUN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"])' "$LOGS/train.out" 2>/dev/null)
if [ -n "$RUN" ]; then
  "$GRAFT" --store "$WORK/store" reproduce "$RUN" --quiet >"$LOGS/reproduce.out" 2>"$LOGS/reproduce.err"
  echo "reproduce exit $?: $(cat "$LOGS/reproduce.out")"
  tail -c 1000 "$LOGS/reproduce.err"
  if [ -n "${REPRO_SET:-}" ]; then
    echo "== graft reproduce --set $REPRO_SET" >&2
    # shellcheck disable=SC2086
    "$GRAFT" --store "$WORK/store" reproduce "$RUN" --quiet --set $REPRO_SET \
      >"$LOGS/reproduce-set.out" 2>"$LOGS/reproduce-set.err"
    echo "reproduce --set exit $?: $(cat "$LOGS/reproduce-set.out")"
    tail -c 1000 "$LOGS/reproduce-set.err"
  fi
fi
