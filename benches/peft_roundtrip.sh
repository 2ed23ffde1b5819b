#!/usr/bin/env bash
# Train a LoRA run that also trains the embeddings (and Llama's untied head) on each
# shared fixture, export it with `graft export --peft` and `--merged`, load both with
# transformers + PEFT (benches/peft_roundtrip.py), and check with `graft model parity`
# that graft's own logits match transformers' within f32 parity tolerance:
#   1. graft loading its PEFT export (adapter + modules_to_save) against PEFT on the base;
#   2. graft's merged folder against transformers on that folder.
# Runs on a machine with transformers and peft (the GPU machine), on the CPU backend.
#
#   GRAFT=.gpu/graft FIXTURES=.gpu/fixtures benches/peft_roundtrip.sh
set -u
GRAFT=${GRAFT:-$PWD/target/release/graft}
FIXTURES=${FIXTURES:-../shared/fixtures}
WORK=${WORK:-/tmp/graft-peft-roundtrip}
DATA=$PWD/experiments/data/reverse.jsonl
HERE=$(cd "$(dirname "$0")" && pwd)
status=0
rm -rf "$WORK"
for fixture in llama-tiny qwen2-tiny; do
  dir=$WORK/$fixture
  mkdir -p "$dir"
  base=$(realpath "$FIXTURES/$fixture")
  # llama-tiny has its own head; qwen2-tiny ties it to the embeddings.
  layers="embed,lm_head"
  [ "$fixture" = qwen2-tiny ] && layers="embed"
  cat >"$dir/exp.toml" <<TOML
[model]
base = "$base"

[adapter]
rank = 4
alpha = 8
dropout = 0.0

[unfreeze]
schedule = [{ at = 0, layers = "$layers" }]

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
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["run"])') || { echo "train failed"; status=1; continue; }
  "$GRAFT" --store "$dir/store" export "$run" --peft "$dir/peft" || status=1
  "$GRAFT" --store "$dir/store" export "$run" --merged "$dir/merged" || status=1
  echo "== $fixture: transformers + PEFT"
  python3 "$HERE/peft_roundtrip.py" "$base" "$dir/peft" "$dir/merged" "$dir/check" || { status=1; continue; }
  echo "== $fixture: graft's logits against transformers + PEFT on its PEFT export"
  "$GRAFT" model parity "$dir/check" "$dir/check/reference.json" || status=1
  echo "== $fixture: graft's logits against transformers on its merged export"
  "$GRAFT" model parity "$dir/merged" "$dir/check/merged_reference.json" || status=1
done
exit $status
