# Sourced by the GPU bench scripts: what each of them needs before it measures.
#
# - cuBLAS on the library path: graft loads it at run time for its CUDA products
#   (the CUDA toolkit's copy, or the one PyTorch ships); without it graft warns and
#   falls back to burn's own matmul.
# - REF: shared/bench/hf_peft_lora.py, the HF + PEFT reference (or the copy carried to
#   the GPU machine as .gpu/hf_peft_lora.py), as an absolute path, unless set.
# - make_folder FOLDER PRESET TOKENS: a model folder with the preset's shapes, random
#   weights and TOKENS of random-word text (benches/make_llama_folder.py), unless
#   FOLDER has them already; its log goes to $LOGS/make-folder.out.
# - bench_experiment FILE COMPUTE [TRAIN]: the benches' experiment on $FOLDER: LoRA
#   r=16 on the seven projections, $SEQ x $BATCH packed text, AdamW at a constant 1e-4,
#   $STEPS steps without evaluation; COMPUTE is the [compute] section's lines, TRAIN
#   extra [train] lines (default: no checkpoint before the end).
# - peak_of LOG COMMAND...: runs COMMAND while nvidia-smi samples the card's used
#   memory every 100 ms (the pool cubecl reserved, for graft; torch's cache, for the
#   reference); the peak in MiB goes to LOG.peak and to stderr.
for dir in /usr/local/cuda/lib64 \
  "$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null)"; do
  if [ -n "$dir" ] && ls "$dir"/libcublas.so* >/dev/null 2>&1; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    break
  fi
done
REF=${REF:-}
if [ -z "$REF" ]; then
  for candidate in shared/bench/hf_peft_lora.py ../shared/bench/hf_peft_lora.py .gpu/hf_peft_lora.py; do
    if [ -f "$candidate" ]; then REF=$(realpath "$candidate"); break; fi
  done
fi
peak_of() {
  local log=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log.mem" 2>/dev/null &
  local sampler=$!
  "$@"
  local status=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  sort -n "$log.mem" | tail -n 1 >"$log.peak"
  echo "peak MiB $(cat "$log.peak")" >&2
  return $status
}
make_folder() {
  local folder=$1 preset=$2 tokens=$3
  [ -f "$folder/train.jsonl" ] && return 0
  python3 "$(dirname "${BASH_SOURCE[0]}")/make_llama_folder.py" "$folder" --preset "$preset" \
    --tokens "$tokens" >"$LOGS/make-folder.out" 2>&1 || { cat "$LOGS/make-folder.out"; return 1; }
}
bench_experiment() {
  local file=$1 compute=$2 train=${3:-checkpoint_every = 100000}
  cat >"$file" <<TOML
[model]
base = "$FOLDER"

[adapter]
rank = 16
alpha = 16
dropout = 0.0

[data]
train = [{ path = "$FOLDER/train.jsonl", format = "text" }]
seq_len = $SEQ
pack = true
val_fraction = 0.0

[optim]
lr = 1e-4
schedule = "constant"
weight_decay = 0.01
batch_size = $BATCH

[compute]
$compute

[train]
steps = $STEPS
baseline_eval = false
eval_every = 100000
$train
TOML
}
