#!/usr/bin/env bash
# Time from `graft train` to its first step over a large model folder, split into
# its parts, with the process's peak resident memory, for a quantized base (`nf4`,
# `int8`) and the plain one (`dtype`). Each run is one LoRA step (r=16 on the seven
# projections, SEQ tokens, batch 1) on a fresh store, timed by /usr/bin/time -v; its
# stderr lines are stamped as they arrive. Printed per run:
#
#   - before load: the process start to the start of the load (planning: hashing
#     the folder's tensors, reading the tokenizer and data);
#   - load: reading the tensors, converting/quantizing them, making the device
#     tensors (graft's own split, from the "loaded the base model" line);
#   - after load: the end of the load to the exit (the first step, its record, the
#     final checkpoint);
#   - the peak RSS.
#
# Make a folder first (random bf16 weights with a preset's shapes; needs torch and
# transformers), then run from the repository root with a release build:
#
#   python3 benches/make_llama_folder.py /tmp/llama-1b --preset llama-1b --tokens 20000
#   cargo build --release
#   benches/load_time.sh /tmp/llama-1b
#   BASES="nf4" SEQ=128 GRAFT=.gpu/graft BACKEND=cuda DTYPE=bf16 benches/load_time.sh /tmp/llama-8b
set -eu
FOLDER=$(realpath "${1:?usage: benches/load_time.sh MODEL_FOLDER}")
GRAFT=$(realpath "${GRAFT:-target/release/graft}")
BASES=${BASES:-nf4 int8 dtype}
SEQ=${SEQ:-64}
BACKEND=${BACKEND:-cpu}
DTYPE=${DTYPE:-f32}
WORK=${WORK:-$(mktemp -d /tmp/graft-load-time.XXXXXX)}
mkdir -p "$WORK"
# bench_experiment: the GPU benches' LoRA experiment on $FOLDER, $SEQ x $BATCH, $STEPS.
# shellcheck source=benches/gpu_common.sh
. "$(dirname "$0")/gpu_common.sh"
STEPS=1
BATCH=1
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 1; }
[ -f "$FOLDER/train.jsonl" ] || { echo "$FOLDER has no train.jsonl (make it with benches/make_llama_folder.py)" >&2; exit 1; }
echo "folder $FOLDER: $(du -sh "$FOLDER" | cut -f1), graft $GRAFT, backend $BACKEND, dtype $DTYPE, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-6s %10s %12s %8s %8s %9s %8s %11s %12s\n' base total_s before_s read_s convert_s device_s load_s after_s peak_rss_MiB
for BASE in $BASES; do
  STORE=$WORK/store-$BASE
  rm -rf "$STORE"
  bench_experiment "$WORK/$BASE.toml" "dtype = \"$DTYPE\"
base = \"$BASE\""
  start=$(date +%s.%N)
  # Each stderr line stamped with the seconds since the start.
  /usr/bin/time -v -o "$WORK/$BASE.time" "$GRAFT" --store "$STORE" train "$WORK/$BASE.toml" \
    --backend "$BACKEND" --json >"$WORK/$BASE.out" \
    2> >(while IFS= read -r line; do
           printf '%.2f %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { print a - b }')" "$line"
         done >"$WORK/$BASE.err") || { echo "$BASE: graft failed" >&2; cat "$WORK/$BASE.err" >&2; exit 1; }
  sleep 0.2 # the stamping loop finishes its last line
  total=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$WORK/$BASE.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$WORK/$BASE.time")
  # "<t> loaded the base model (X GB) in L s: reading R s, <verb> C s, to the device D s"
  line=$(grep 'loaded the base model' "$WORK/$BASE.err" | head -n 1 || true)
  if [ -z "$line" ]; then
    # A graft from before the load said where its time went: the total only.
    printf '%-6s %10.1f %12s %8s %8s %9s %8s %11s %12s\n' "$BASE" "$total" - - - - - - "$rss"
    continue
  fi
  read -r at load read_s convert device < <(echo "$line" | sed -E 's/^([0-9.]+) .* in ([0-9.]+) s: reading ([0-9.]+) s, .* ([0-9.]+) s, to the device ([0-9.]+) s.*/\1 \2 \3 \4 \5/')
  # awk, not bc: the GPU machine has no bc.
  before=$(awk -v a="$at" -v b="$load" 'BEGIN { print a - b }')
  after=$(awk -v a="$total" -v b="$at" 'BEGIN { print a - b }')
  printf '%-6s %10.1f %12.1f %8.1f %8.1f %9.1f %8.1f %11.1f %12s\n' "$BASE" "$total" "$before" "$read_s" "$convert" "$device" "$load" "$after" "$rss"
done
echo "logs in $WORK"
