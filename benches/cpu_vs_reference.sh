#!/usr/bin/env bash
# graft against Hugging Face transformers + PEFT on the CPU cores of one machine, in one
# call: `graft bench train --backend cpu` (burn's Flex backend, f32) and the reference
# script with `--device cpu --dtype fp32` on the tiny preset (seq 512, batch 8, LoRA
# r=16), then a table of both figures and their ratio. Runs wherever both exist; the
# published figures were taken on the GPU machine's 16 cores (shared/DEVICE.md).
#
#   benches/cpu_vs_reference.sh
#   CONFIGS="tiny:128:4" STEPS=5 benches/cpu_vs_reference.sh
#   THREADS="1 2 4 8 16" benches/cpu_vs_reference.sh   # a thread sweep: graft with
#       RAYON_NUM_THREADS, the reference with OMP_NUM_THREADS, each count in turn
#
# Figures from different calls or machines are not comparable.
set -u

GRAFT=${GRAFT:-}
if [ -z "$GRAFT" ]; then
  for candidate in .gpu/graft target/release/graft; do
    if [ -x "$candidate" ]; then GRAFT=$(realpath "$candidate"); break; fi
  done
fi
REF=${REF:-}
if [ -z "$REF" ]; then
  for candidate in .gpu/hf_peft_lora.py ../shared/bench/hf_peft_lora.py shared/bench/hf_peft_lora.py; do
    if [ -f "$candidate" ]; then REF=$(realpath "$candidate"); break; fi
  done
fi
CONFIGS=${CONFIGS:-"tiny:512:8"}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
RANK=${RANK:-16}
TIMEOUT=${TIMEOUT:-400}
LOGS=${LOGS:-${OUT:-/tmp}/bench-cpu-logs}
mkdir -p "$LOGS"

results=$LOGS/results.jsonl
: >"$results"
# "" runs each side once on every core.
THREADS=${THREADS:-""}
with_threads() { # THREADS LINE: the JSON line with the thread count in it
  if [ -n "$1" ]; then echo "$2" | sed "s/^{/{\"threads\":$1,/"; else echo "$2"; fi
}
for threads in ${THREADS:-all}; do
[ "$threads" = all ] && threads=""
for config in $CONFIGS; do
  IFS=: read -r preset seq batch <<<"$config"
  name="$preset-${seq}x$batch${threads:+-t$threads}"
  echo "== graft cpu $name" >&2
  ${threads:+env RAYON_NUM_THREADS=$threads} timeout "$TIMEOUT" "$GRAFT" bench train --backend cpu --preset "$preset" --seq "$seq" \
    --batch "$batch" --rank "$RANK" --steps "$STEPS" --warmup "$WARMUP" \
    >"$LOGS/graft-$name.out" 2>"$LOGS/graft-$name.err"
  status=$?
  line=$(grep '^{' "$LOGS/graft-$name.out" | tail -n 1)
  if [ -z "$line" ]; then
    line="{\"impl\":\"graft\",\"preset\":\"$preset\",\"seq\":$seq,\"batch\":$batch,\"error\":\"exit $status: $(tail -c 300 "$LOGS/graft-$name.err" | tr -d '"\\\n')\"}"
  fi
  with_threads "$threads" "$line" | tee -a "$results"
  echo "== reference cpu $name" >&2
  ${threads:+env OMP_NUM_THREADS=$threads} timeout "$TIMEOUT" python3 "$REF" --device cpu --dtype fp32 --preset "$preset" --seq "$seq" \
    --batch "$batch" --rank "$RANK" --steps "$STEPS" --warmup "$WARMUP" \
    >"$LOGS/ref-$name.out" 2>"$LOGS/ref-$name.err"
  status=$?
  line=$(grep '^{' "$LOGS/ref-$name.out" | tail -n 1)
  if [ -z "$line" ]; then
    line="{\"impl\":\"hf-peft\",\"preset\":\"$preset\",\"seq\":$seq,\"batch\":$batch,\"error\":\"exit $status: $(tail -c 300 "$LOGS/ref-$name.err" | tr -d '"\\\n')\"}"
  fi
  with_threads "$threads" "$line" | tee -a "$results"
done
done

python3 "$(dirname "$0")/compare_table.py" "$results"
