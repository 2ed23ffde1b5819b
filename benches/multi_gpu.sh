#!/usr/bin/env bash
# Data-parallel `graft train` on one GPU and on several (compute.devices), in one
# device call, on Llama-3.2-1B's shapes with random weights: LoRA r=16 on all seven
# projections, bf16 base, seq 2048, global batch 8, AdamW, clip 1.0.
#
# Prints, as JSON lines and a table: tokens/s on 1 and on N devices and their ratio;
# the largest relative difference of the per-step losses between them; and whether a
# run on N devices killed with SIGKILL after a checkpoint and resumed ends at the
# uninterrupted N-device run's final checkpoint id. Finally `graft reproduce` of the
# N-device run on one device, which names compute.devices and compares within the
# tolerance.
#
# Run from the repository root on the multi-GPU machine with the CUDA build in
# .gpu/graft (see shared/DEVICE.md):
#   benches/multi_gpu.sh                 # 2 devices, 24 steps
#   DEVICES=4 STEPS=40 benches/multi_gpu.sh
#   ONE=0 REPRODUCE=0 benches/multi_gpu.sh    # only the N-device run and the kill test
#   DEVICES=1 ONE=0 REPRODUCE=0 TWICE=1 DTYPE=f32 benches/multi_gpu.sh
#       # one device: is a repeat bit-identical, and does a resume end where it should
#
# With TWICE=1 the N-device run is trained a second time into its own store, and the
# summary says whether the two end at the same checkpoint ids (a resume can only be
# exact if the kernels are deterministic). The summary lists every run's checkpoints
# and the first step at which the killed-and-resumed run's loss left the
# uninterrupted one's.
set -u
ONE=${ONE:-1}
TWICE=${TWICE:-0}
REPRODUCE=${REPRODUCE:-1}
GRAFT=${GRAFT:-$PWD/.gpu/graft}
PRESET=${PRESET:-llama-1b}
SEQ=${SEQ:-2048}
BATCH=${BATCH:-8}
STEPS=${STEPS:-24}
DEVICES=${DEVICES:-2}
LOGS=${LOGS:-${OUT:-/tmp}/multi-gpu-logs}
WORK=${WORK:-/tmp/graft-multi-gpu}
mkdir -p "$LOGS" "$WORK"
. "$(dirname "$0")/gpu_common.sh"
# NCCL from PyTorch's wheel where the toolkit has none: the wheel ships libnccl.so.2,
# and the loader asks for libnccl.so, so link it under that name.
NCCL_LIB=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(os.path.dirname(nvidia.nccl.__file__), "lib", "libnccl.so.2"))' 2>/dev/null)
if [ -n "$NCCL_LIB" ] && [ -f "$NCCL_LIB" ]; then
  mkdir -p "$WORK/nccl" && ln -sf "$NCCL_LIB" "$WORK/nccl/libnccl.so"
  export LD_LIBRARY_PATH="$WORK/nccl:$LD_LIBRARY_PATH"
fi
# This workplace's machines keep NVLink multicast off.
export NCCL_NVLS_ENABLE=0
FOLDER=$WORK/$PRESET
make_folder "$FOLDER" "$PRESET" $(( (STEPS + 2) * SEQ * BATCH + SEQ * 8 )) || exit 1
bench_experiment "$WORK/train.toml" "dtype = \"${DTYPE:-bf16}\"" "checkpoint_every = $(( STEPS / 3 ))
keep_last = 10"
cd "$WORK" || exit 1
train() { # STORE DEVICES [extra args]: one `graft train`, JSON on stdout
  local store=$1 devices=$2; shift 2
  "$GRAFT" --store "$store" train "$WORK/train.toml" --backend cuda --quiet --json \
    --set compute.devices="$devices" "$@"
}
losses() { # STORE RUN: the per-step losses as JSON
  "$GRAFT" --store "$1" metrics "$2" --series loss --json
}
rm -rf store-1 store-n store-n2 store-kill
if [ "$ONE" = 1 ]; then
  echo "== 1 device" >&2
  train store-1 1 >"$LOGS/one.out" 2>"$LOGS/one.err"; echo "1 device exit $?" >&2
  tail -c 1500 "$LOGS/one.err" >&2
fi
echo "== $DEVICES devices" >&2
train store-n "$DEVICES" >"$LOGS/n.out" 2>"$LOGS/n.err"; echo "$DEVICES devices exit $?" >&2
tail -c 1500 "$LOGS/n.err" >&2
RUN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run"])' "$LOGS/n.out" 2>/dev/null)
[ -n "$RUN" ] || { echo "no run from the $DEVICES-device train" >&2; exit 1; }
[ "$ONE" = 1 ] && losses store-1 "$RUN" >"$LOGS/one-losses.json"
losses store-n "$RUN" >"$LOGS/n-losses.json"
if [ "$TWICE" = 1 ]; then
  echo "== $DEVICES devices, again" >&2
  train store-n2 "$DEVICES" >"$LOGS/n2.out" 2>"$LOGS/n2.err"; echo "again exit $?" >&2
fi

echo "== $DEVICES devices, SIGKILL after the first checkpoint, then resume" >&2
# `exec`, so that $! is graft itself and the SIGKILL reaches it.
(exec "$GRAFT" --store store-kill train "$WORK/train.toml" --backend cuda --quiet --json \
  --set compute.devices="$DEVICES" >"$LOGS/kill.out" 2>"$LOGS/kill.err") &
PID=$!
FIRST=$(( STEPS / 3 ))
for _ in $(seq 1 600); do
  if "$GRAFT" --store store-kill show "$RUN" 2>/dev/null | grep -q "step $FIRST\b"; then break; fi
  sleep 0.2
done
kill -9 $PID 2>/dev/null; wait $PID 2>/dev/null
"$GRAFT" --store store-kill resume "$RUN" --backend cuda --quiet --json >"$LOGS/resume.out" 2>"$LOGS/resume.err"
echo "resume exit $?" >&2
tail -c 1500 "$LOGS/resume.err" >&2
losses store-kill "$RUN" >"$LOGS/kill-losses.json"

if [ "$REPRODUCE" = 1 ]; then
  echo "== reproduce the $DEVICES-device run on 1 device" >&2
  "$GRAFT" --store store-n reproduce "$RUN" --backend cuda --set compute.devices=1 >"$LOGS/reproduce.out" 2>"$LOGS/reproduce.err"
  echo "reproduce exit $?" >&2
  cat "$LOGS/reproduce.out" "$LOGS/reproduce.err" | tail -n 12 >&2
fi

python3 - "$LOGS" "$DEVICES" <<'PY'
import json, sys, os
logs, devices = sys.argv[1], int(sys.argv[2])
def load(name):
    try:
        return json.load(open(os.path.join(logs, name)))
    except Exception as e:
        return {"error": str(e)}
one, n, resumed, again = load("one.out"), load("n.out"), load("resume.out"), load("n2.out")
def series(name):
    data = load(name)
    rows = data.get("loss") or data.get("series", {}).get("loss") or data
    if isinstance(rows, dict):
        rows = rows.get("points", rows)
    out = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict):
            out[int(row["step"])] = float(row.get("value", row.get("loss")))
        else:
            out[int(row[0])] = float(row[1])
    return out
a, b = series("one-losses.json"), series("n-losses.json")
steps = sorted(set(a) & set(b))
rel = max((abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in steps), default=float("nan"))
final = lambda d: (d.get("checkpoints") or [{}])[-1].get("id")
listed = lambda d: [(c.get("step"), c.get("id")) for c in d.get("checkpoints") or []]
killed = series("kill-losses.json")
left = [s for s in sorted(set(b) & set(killed)) if b[s] != killed[s]]
result = {
    "tokens_per_s_1": one.get("tokens_per_s"),
    f"tokens_per_s_{devices}": n.get("tokens_per_s"),
    "speedup": (n.get("tokens_per_s") or 0) / (one.get("tokens_per_s") or float("inf")),
    "steps_compared": len(steps),
    "max_rel_loss_diff": rel,
    "final_loss_1": a.get(max(steps)) if steps else None,
    f"final_loss_{devices}": b.get(max(steps)) if steps else None,
    "uninterrupted_final": final(n),
    "resumed_final": final(resumed),
    "resume_matches": final(n) is not None and final(n) == final(resumed),
    "checkpoints": listed(n),
    "resumed_checkpoints": listed(resumed),
    "first_step_resumed_loss_differs": left[0] if left else None,
    "resumed_loss_steps_compared": len(set(b) & set(killed)),
}
if "error" not in again:
    result["again_checkpoints"] = listed(again)
    result["repeat_matches"] = listed(again) == listed(n)
print(json.dumps(result))
PY
