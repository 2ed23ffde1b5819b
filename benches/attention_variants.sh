#!/usr/bin/env bash
# The Hopper attention kernels against their variants, in one device call: for each
# variant (a line of #defines prepended to src/compute/flash_attention_sm90.cu, as
# `graft bench attention --sm90-source` takes it) and each shape, the forward and
# backward times and each output's error against f32 attention (--check fails a
# variant above 2%). Run from the repository root on the GPU machine with the CUDA
# build in .gpu/graft:
#   benches/attention_variants.sh
#   VARIANTS="built-in|mma.sync:EMPTY" SEQS="8192 16384" benches/attention_variants.sh
# VARIANTS holds NAME:DEFINES pairs separated by '|' (DEFINES: '\n'-separated lines,
# EMPTY for no Hopper source at all, i.e. the mma.sync kernels); `built-in` is the
# source as it is.
set -u
GRAFT=${GRAFT:-$PWD/.gpu/graft}
STEPS=${STEPS:-5}
SEQS=${SEQS:-"8192 16384 32768"}
HEAD_DIM=${HEAD_DIM:-64}
VARIANTS=${VARIANTS:-"built-in|mma.sync:EMPTY|dkv keys in shared memory:#define SM90_DKV_KV_REGISTERS(D) 0"}
SM90=src/compute/flash_attention_sm90.cu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '| variant | seq | forward ms | TFLOP/s | backward ms | TFLOP/s | largest error |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n'
IFS='|' read -r -a entries <<<"$VARIANTS"
for i in "${!entries[@]}"; do
  entry=${entries[$i]}
  name=${entry%%:*}
  defines=${entry#*:}
  file=$work/variant$i.cu
  if [ "$entry" = "built-in" ]; then
    cp "$SM90" "$file"
  elif [ "$defines" = "EMPTY" ]; then
    : >"$file"
  else
    { printf '%b\n' "$defines"; cat "$SM90"; } >"$file"
  fi
  for seq in $SEQS; do
    line=$("$GRAFT" bench attention --seq "$seq" --head-dim "$HEAD_DIM" --steps "$STEPS" --warmup 1 \
      --check --sm90-source "$file" 2>"$work/err" | grep '^{' | tail -n 1)
    if [ -z "$line" ]; then
      printf '| %s | %s | failed: %s | | | | |\n' "$name" "$seq" "$(tail -c 200 "$work/err" | tr -d '\n|')"
      continue
    fi
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
worst = max((r.get("relative_errors") or {"-": 0}).values())
row = (sys.argv[2], r["shape"]["seq"], r["forward_ms"], r["forward_tflops"], r["backward_ms"], r["backward_tflops"], worst)
print("| %s | %s | %.2f | %.0f | %.2f | %.0f | %.2e |" % row)' "$line" "$name"
  done
done
