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
#       # (graft `$CKPT_ARGS`, by default `--checkpointing layers --keep-projections
#       # narrow --loss-chunk-tokens 2048`: the layers' inputs, their attention outputs
#       # and the outputs of the projections that do not widen kept, the rest
#       # recomputed, the head and loss 2048 tokens at a time; HF `--grad-ckpt`)
#   REF_ARGS=--compile CONFIGS="llama-1b:2048:4" benches/gpu_vs_reference.sh
#       # the reference under torch.compile
#   CONFIGS="llama-1b:2048:4::eager,compile smol-135m:2048:8" GATED=1 benches/gpu_vs_reference.sh
#       # a fifth field: the reference's modes for that row (default $REF_MODES, "eager");
#       # `compile` runs it under torch.compile, beside the eager run, in one table
#   GATED=1 STEPS=5 WARMUP=2 READY_TIMEOUT=400 TIMEOUT=300 CONFIGS="llama-1b:2048:4::eager,compile \
#     llama-1b:8192:1::eager,compile llama-1b:16384:1::eager,compile \
#     llama-1b:32768:1:ckpt:eager,compile smol-135m:2048:8 llama-8b:2048:1" benches/gpu_vs_reference.sh
#       # the README's table in one device call (about five and a half minutes on an H200, 2026-12-02)
#
# GATED=1 prepares every reference run at once before anything is timed: each builds
# its model in parallel, waits for its turn to run its warm-up steps (eager runs alone
# on the card, compiled runs two at a time: torch.compile compiles there) and then
# waits again (benches/hf_peft_lora.py's --gate). The timed part of each run starts only
# when the script lets it, after the row's graft run, so every timed run, graft's and
# the reference's, has the card to itself; only the waiting runs' weights stay resident
# (about 3.5 GiB for llama-1b, 17 for llama-8b). A run not warmed up within
# READY_TIMEOUT seconds is stopped with its process group (torch.compile's workers).
# This is what fits graft, eager HF and HF + torch.compile on every row into one
# ten-minute device call; one after another they take about 100 s a compiled row.
#
# Figures from different calls are not comparable: both sides run in this one call.
# cubecl's compiled-kernel (PTX) and autotune caches live in $CUBECL_DIR, so only the
# first graft run of a call pays for compilation; each run also warms up before timing.
set -u

GRAFT=${GRAFT:-$PWD/.gpu/graft}
REF=${REF:-}
if [ -z "$REF" ]; then
  for candidate in benches/hf_peft_lora.py .gpu/hf_peft_lora.py ../shared/bench/hf_peft_lora.py shared/bench/hf_peft_lora.py; do
    if [ -f "$candidate" ]; then REF=$(realpath "$candidate"); break; fi
  done
fi
CONFIGS=${CONFIGS:-"llama-1b:2048:4 smol-135m:2048:8 tiny:512:8"}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
RANK=${RANK:-16}
TIMEOUT=${TIMEOUT:-400}
GRAFT_ARGS=${GRAFT_ARGS:-}
CKPT_ARGS=${CKPT_ARGS:---checkpointing layers --keep-projections narrow --loss-chunk-tokens 2048}
REF_ARGS=${REF_ARGS:-}
REF_MODES=${REF_MODES:-eager}
GATED=${GATED:-0}
READY_TIMEOUT=${READY_TIMEOUT:-420}
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

# The row's name, its graft checkpointing flags, its reference flags and its modes.
parse() {
  IFS=: read -r preset seq batch ckpt modes <<<"$1"
  name="$preset-${seq}x$batch${ckpt:+-ckpt}"
  graft_ckpt=${ckpt:+$CKPT_ARGS}
  ref_ckpt=${ckpt:+--grad-ckpt}
  ckpt_json=$([ -n "$ckpt" ] && echo true || echo false)
  modes=${modes:-$REF_MODES}
  modes=${modes//,/ }
}

# The reference's command for a row in a mode, with any extra arguments.
ref_command() {
  local mode=$1; shift
  # shellcheck disable=SC2206
  ref_cmd=(python3 "$REF" --preset "$preset" --seq "$seq" --batch "$batch" --rank "$RANK"
    --steps "$STEPS" --warmup "$WARMUP" $ref_ckpt $REF_ARGS "$@")
  [ "$mode" = compile ] && ref_cmd+=(--compile)
  return 0
}

# The JSON line a run printed, or one that says how it failed.
line_of() {
  local impl=$1 log=$2 status=$3 line
  line=$(grep '^{' "$log.out" 2>/dev/null | tail -n 1)
  if [ -z "$line" ]; then
    line="{\"impl\":\"$impl\",\"preset\":\"$preset\",\"seq\":$seq,\"batch\":$batch,\"grad_ckpt\":$ckpt_json,\"compile\":$([ "${mode:-}" = compile ] && echo true || echo false),\"error\":\"exit $status: $(tail -c 300 "$log.err" 2>/dev/null | tr -d '"\\\n')\"}"
  fi
  echo "$line" | tee -a "$results"
}

# GATED=1: start every reference run now; each waits at its gate once warmed up.
declare -A gate_pid=()
if [ "$GATED" = 1 ]; then
  gates=$LOGS/gates
  rm -rf "$gates"; mkdir -p "$gates"
  runs=0  # timed runs in all: each row's graft run and its reference runs
  # Started last row first: the long rows' compiled warm-ups (32k with checkpointing
  # compiles longest) reach the two compile turns first, so the short ones fill in
  # after them instead of the longest starting last.
  reversed=()
  for config in $CONFIGS; do
    parse "$config"
    runs=$((runs + 1))
    for mode in $modes; do runs=$((runs + 1)); done
    reversed=("$config" ${reversed[@]+"${reversed[@]}"})
  done
  for config in "${reversed[@]}"; do
    parse "$config"
    for mode in $modes; do
      ref_command "$mode" --gate "$gates/$name-$mode"
      # A session of its own, so that stopping it stops torch.compile's workers too (in
      # this non-interactive script setsid execs in place, so $! is the group's id).
      # The limit covers the wait at the gate while the rows before it are timed.
      setsid timeout $((READY_TIMEOUT + TIMEOUT * runs)) "${ref_cmd[@]}" \
        >"$LOGS/ref-$name-$mode.out" 2>"$LOGS/ref-$name-$mode.err" &
      gate_pid[$name-$mode]=$!
      sleep 1
    done
  done
  echo "== waiting for ${#gate_pid[@]} reference runs to warm up" >&2
  deadline=$((SECONDS + READY_TIMEOUT))
  declare -A seen=()
  settled=0
  while [ $settled -lt ${#gate_pid[@]} ] && [ $SECONDS -lt $deadline ]; do
    for key in "${!gate_pid[@]}"; do
      [ -n "${seen[$key]:-}" ] && continue
      if [ -f "$gates/$key.ready" ]; then
        seen[$key]=ready; settled=$((settled + 1))
        echo "   $key warmed up at ${SECONDS}s" >&2
      elif ! kill -0 "${gate_pid[$key]}" 2>/dev/null; then
        seen[$key]=ended; settled=$((settled + 1))
        echo "   $key ended at ${SECONDS}s" >&2
      fi
    done
    [ $settled -lt ${#gate_pid[@]} ] && sleep 1
  done
  # A run still warming up now would share the card with the timed runs: stop it and
  # its process group.
  stopped=()
  for key in "${!gate_pid[@]}"; do
    if [ ! -f "$gates/$key.ready" ] && kill -0 "${gate_pid[$key]}" 2>/dev/null; then
      echo "not warmed up within READY_TIMEOUT=${READY_TIMEOUT}s" >>"$LOGS/ref-$key.err"
      kill -TERM -- "-${gate_pid[$key]}" 2>/dev/null
      stopped+=("${gate_pid[$key]}")
    fi
  done
  # Nothing is timed until they are gone: 10 s to end, then killed outright.
  for pid in ${stopped[@]+"${stopped[@]}"}; do
    for _ in $(seq 10); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null
  done
  echo "== warmed up after ${SECONDS}s" >&2
fi
# BEFORE_TIMING: a command run here, before anything is timed (a caller's other GPU
# work started beside the warm-up, such as tests, finishes here).
if [ -n "${BEFORE_TIMING:-}" ]; then
  eval "$BEFORE_TIMING"
fi

for config in $CONFIGS; do
  parse "$config"
  echo "== graft $name" >&2
  # shellcheck disable=SC2086
  (cd "$CUBECL_DIR" && timeout "$TIMEOUT" "$GRAFT" bench train --backend cuda --preset "$preset" \
    --seq "$seq" --batch "$batch" --rank "$RANK" --steps "$STEPS" --warmup "$WARMUP" $graft_ckpt $GRAFT_ARGS) \
    >"$LOGS/graft-$name.out" 2>"$LOGS/graft-$name.err"
  mode="" line_of graft "$LOGS/graft-$name" $?
  for mode in $modes; do
    echo "== reference $name $mode" >&2
    if [ "$GATED" = 1 ]; then
      touch "$gates/$name-$mode.go"
      wait "${gate_pid[$name-$mode]}"
      status=$?
    else
      ref_command "$mode"
      timeout "$TIMEOUT" "${ref_cmd[@]}" >"$LOGS/ref-$name-$mode.out" 2>"$LOGS/ref-$name-$mode.err"
      status=$?
    fi
    line_of hf-peft "$LOGS/ref-$name-$mode" $status
  done
done

python3 "$(dirname "$0")/compare_table.py" "$results"
