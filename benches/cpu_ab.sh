#!/usr/bin/env bash
# Several graft builds on the CPU, alternating in one sitting: `graft bench train
# --backend cpu` with each build in turn, ROUNDS times per configuration, then each
# build's runs and their median tokens/s. Figures from one machine move by several
# percent between minutes, so a change to the CPU path is judged by alternating runs
# like these, not by two calls apart.
#
#   BUILDS="before=/tmp/graft-before after=target/release/graft" benches/cpu_ab.sh
#   BUILDS="..." THREADS=16 CONFIGS="tiny:512:8 smol-135m:512:2" ROUNDS=3 benches/cpu_ab.sh
set -u
BUILDS=${BUILDS:?NAME=PATH for each build, in the order they alternate}
CONFIGS=${CONFIGS:-"tiny:512:8"}
THREADS=${THREADS:-""}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-6}
WARMUP=${WARMUP:-2}
RANK=${RANK:-16}
TIMEOUT=${TIMEOUT:-300}
LOGS=${LOGS:-/tmp/cpu-ab-logs}
mkdir -p "$LOGS"
ROWS=()
for config in $CONFIGS; do
  IFS=: read -r preset seq batch <<<"$config"
  declare -A runs=()
  for round in $(seq "$ROUNDS"); do
    for build in $BUILDS; do
      name=${build%%=*} bin=${build#*=}
      log=$LOGS/$preset-$name-$round
      ${THREADS:+env RAYON_NUM_THREADS=$THREADS} timeout "$TIMEOUT" "$bin" bench train --backend cpu \
        --preset "$preset" --seq "$seq" --batch "$batch" --rank "$RANK" --steps "$STEPS" \
        --warmup "$WARMUP" >"$log.out" 2>"$log.err"
      tokens=$(grep '^{' "$log.out" | tail -n 1 | python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"]))' 2>/dev/null || echo "-")
      echo "$preset $seq x $batch, threads ${THREADS:-all}, round $round, $name: $tokens tokens/s"
      runs[$name]="${runs[$name]:-} $tokens"
    done
  done
  for build in $BUILDS; do
    name=${build%%=*}
    median=$(echo "${runs[$name]:-}" | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -n | awk '{a[NR]=$1} END {if (NR) print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2); else print "-"}')
    ROWS+=("| $preset $seq x $batch | ${THREADS:-all} | $name |${runs[$name]:-} | $median |")
  done
  unset runs
done
echo "| preset | threads | build | tokens/s, each run | median |"
echo "| --- | ---: | --- | --- | ---: |"
printf '%s\n' "${ROWS[@]}"
