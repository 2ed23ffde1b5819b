#!/usr/bin/env bash
# Does llama.cpp compute what graft computes on `graft export --gguf` files? For each model
# family's fixture (shared/fixtures' llama-tiny and qwen2-tiny, tests/fixtures' qwen3, phi3,
# gemma2 and gemma3) and for a wider random Llama (hidden 256, so that Q4_K and Q6_K
# blocks fit where the fixtures' 64-wide rows fall back to Q5_0 and Q8_0): train a short
# LoRA run, export it merged (--merged, f32) and as GGUF in f16, q8_0 and q4_k_m, run each
# GGUF in llama.cpp through llama-cpp-python on the fixture's reference token ids
# (benches/gguf_roundtrip.py), and compare with `graft model parity` graft's own logits of
# the merged model with llama.cpp's. Prints one table: max |a - b| / max |llama.cpp| over
# all logits (rel), the same unscaled (abs), the loss difference, and, as a control, the
# relative error of the base model without the adapter (how far training moved the logits:
# an export that dropped the adapter would show that figure, not the first).
#
# Needs llama-cpp-python and numpy (pip install llama-cpp-python numpy; it builds llama.cpp
# with cmake, 10-20 minutes on 2 cores). Runs on the CPU.
#
#   PYTHON=/path/to/venv/bin/python3 benches/gguf_roundtrip.sh
set -u
GRAFT=${GRAFT:-$PWD/target/debug/graft}
PYTHON=${PYTHON:-python3}
SHARED=${SHARED:-$PWD/../shared/fixtures}
FAMILIES=${FAMILIES:-$PWD/tests/fixtures}
WORK=${WORK:-/tmp/graft-gguf-roundtrip}
DATA=$PWD/experiments/data/reverse.jsonl
HERE=$(cd "$(dirname "$0")" && pwd)
status=0
rm -rf "$WORK"
mkdir -p "$WORK"
rows=$WORK/rows.txt
: >"$rows"

# The wider Llama: random weights from `graft model init`, the fixture tokenizer and
# llama-tiny's reference token ids.
wide=$WORK/llama-wide-base
"$GRAFT" model init "$wide" --tokenizer "$SHARED/llama-tiny" --hidden 256 --layers 2 \
  --heads 4 --kv-heads 2 --intermediate 768 --seed 1 >/dev/null || status=1
cp "$SHARED/llama-tiny/reference.json" "$wide/reference.json"

for fixture in llama-tiny qwen2-tiny qwen3-tiny phi3-tiny gemma2-tiny gemma3-tiny llama-wide; do
  case $fixture in
    llama-tiny|qwen2-tiny) base=$SHARED/$fixture ;;
    llama-wide) base=$wide ;;
    *) base=$FAMILIES/$fixture ;;
  esac
  base=$(realpath "$base")
  dir=$WORK/$fixture
  mkdir -p "$dir"
  cat >"$dir/exp.toml" <<TOML
[model]
base = "$base"

[adapter]
rank = 4
alpha = 8
dropout = 0.0

[data]
train = [{ path = "$DATA", format = "chat" }]
seq_len = 64
template = "plain"
val_fraction = 0.0

[optim]
lr = 1e-2
batch_size = 4

[train]
steps = 8
baseline_eval = false
checkpoint_every = 8
TOML
  echo "== $fixture: train, export"
  run=$("$GRAFT" --store "$dir/store" train "$dir/exp.toml" --quiet --json \
    | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["run"])') || { echo "train failed"; status=1; continue; }
  "$GRAFT" --store "$dir/store" export "$run" --merged "$dir/merged" >/dev/null || { status=1; continue; }
  # The base without its adapter, to show how far the trained adapter moved the logits.
  mkdir -p "$dir/base-only"
  cp "$base/config.json" "$base/model.safetensors" "$dir/base-only/"
  for quant in f16 q8_0 q4_k_m; do
    "$GRAFT" --store "$dir/store" export "$run" --gguf "$dir/$quant.gguf" --quant "$quant" || { status=1; continue; }
    meta=$("$PYTHON" "$HERE/gguf_roundtrip.py" "$base/reference.json" "$dir/llama-$quant.json" "$dir/$quant.gguf") \
      || { echo "llama.cpp failed on $fixture $quant"; status=1; continue; }
    parity=$("$GRAFT" model parity "$dir/merged" "$dir/llama-$quant.json" --json)
    unmerged=$("$GRAFT" model parity "$dir/base-only" "$dir/llama-$quant.json" --json)
    "$PYTHON" - "$fixture" "$quant" "$meta" "$parity" "$unmerged" "$(stat -c %s "$dir/$quant.gguf")" >>"$rows" <<'PY'
import json, sys
fixture, quant, meta, parity, unmerged, size = sys.argv[1:7]
meta, merged, base = json.loads(meta), json.loads(parity)["base"], json.loads(unmerged)["base"]
print(f"| {fixture} | {meta['architecture']} | {quant} | {merged['logits_rel_err']:.2e} | "
      f"{merged['logits_rel_err'] * meta['max_abs_logit']:.2e} | {merged['loss_abs_diff']:.2e} | "
      f"{base['logits_rel_err']:.2e} | {int(size):,} |")
PY
  done
done
echo
echo "| fixture | llama.cpp arch | quant | max rel err | max abs err | loss diff | base without adapter: rel err | file bytes |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
cat "$rows"
exit $status
