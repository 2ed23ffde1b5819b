"""llama.cpp (through llama-cpp-python) runs what `graft export --gguf` writes.

    python3 benches/gguf_roundtrip.py REFERENCE.json OUT.json MODEL.gguf

Loads MODEL.gguf with llama-cpp-python (the llama.cpp it bundles, on the CPU), evaluates
every row of REFERENCE.json's `input_ids` with all logits kept (logits_all=True), and
writes OUT.json in `graft model parity`'s reference layout: the same input_ids, llama.cpp's
logits [batch][seq][vocab] and its mean next-token loss. `graft model parity MERGED_DIR
OUT.json` then compares graft's own logits of the merged model with llama.cpp's. Prints
one JSON line with the GGUF's metadata that llama.cpp read and max |logit|, from which the
bench script turns parity's relative error into an absolute one.
"""

import json
import sys

import numpy as np
from llama_cpp import Llama


def main():
    reference_path, out_path, model_path = sys.argv[1:4]
    with open(reference_path) as f:
        ids = json.load(f)["input_ids"]
    seq = len(ids[0])
    llm = Llama(model_path=model_path, logits_all=True, n_ctx=max(64, seq), n_batch=max(64, seq),
                n_threads=2, verbose=False, seed=0)
    logits = []
    for row in ids:
        llm.reset()
        llm.eval(row)
        logits.append(np.array(llm.scores[: len(row)], dtype=np.float64))
    logits = np.stack(logits)
    # Mean cross-entropy of each next token, as graft's causal_lm_loss takes it.
    shifted = logits[:, :-1, :]
    targets = np.array(ids)[:, 1:]
    top = shifted.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
    loss = float((log_z - picked).mean())
    with open(out_path, "w") as f:
        json.dump({"input_ids": ids, "logits": logits.tolist(), "loss": loss}, f)
    meta = llm.metadata
    print(json.dumps({
        "architecture": meta.get("general.architecture"),
        "file_type": meta.get("general.file_type"),
        "has_chat_template": "tokenizer.chat_template" in meta,
        "max_abs_logit": float(np.abs(logits).max()),
        "loss": loss,
    }))


if __name__ == "__main__":
    main()
