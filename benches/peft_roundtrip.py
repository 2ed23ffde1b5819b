"""transformers + PEFT load what `graft export` writes: the PEFT folder of a run that also
trained base tensors (embeddings, head: PEFT's modules_to_save), and the merged folder.

    python3 benches/peft_roundtrip.py FIXTURE_DIR PEFT_DIR MERGED_DIR OUT_DIR

Computes, on the fixture's reference token ids, the logits and loss of: the base model,
the base with graft's PEFT export applied by PEFT, and graft's merged export, all with
transformers in f32. Writes OUT_DIR as a `graft model parity` folder (the base's files,
graft's PEFT export as lora-adapter/, reference.json with the base and PEFT logits) and
OUT_DIR/merged_reference.json (transformers' logits of the merged export), so that
`graft model parity` compares graft's own logits with transformers' on both. Prints one
JSON line: how far PEFT-on-base and the merged export are apart inside transformers.
"""

import json
import os
import shutil
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def run(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    return out.logits.float(), float(out.loss)


def main():
    fixture, peft_dir, merged_dir, out_dir = sys.argv[1:5]
    with open(os.path.join(fixture, "reference.json")) as f:
        ids = torch.tensor(json.load(f)["input_ids"])
    base = AutoModelForCausalLM.from_pretrained(fixture, torch_dtype=torch.float32).eval()
    base_logits, base_loss = run(base, ids)
    adapted = PeftModel.from_pretrained(base, peft_dir).eval()
    peft_logits, peft_loss = run(adapted, ids)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, torch_dtype=torch.float32).eval()
    merged_logits, merged_loss = run(merged, ids)
    changed = float((peft_logits - base_logits).abs().max() / base_logits.abs().max())
    apart = float((peft_logits - merged_logits).abs().max() / merged_logits.abs().max())

    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(fixture):
        path = os.path.join(fixture, name)
        if os.path.isfile(path) and name != "reference.json":
            shutil.copy(path, out_dir)
    shutil.rmtree(os.path.join(out_dir, "lora-adapter"), ignore_errors=True)
    shutil.copytree(peft_dir, os.path.join(out_dir, "lora-adapter"))
    reference = {
        "input_ids": ids.tolist(),
        "logits": base_logits.tolist(),
        "loss": base_loss,
        "with_lora": {"logits": peft_logits.tolist(), "loss": peft_loss},
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f)
    with open(os.path.join(out_dir, "merged_reference.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "logits": merged_logits.tolist(),
                   "loss": merged_loss}, f)
    with open(os.path.join(peft_dir, "adapter_config.json")) as f:
        saved = json.load(f).get("modules_to_save")
    print(json.dumps({"fixture": os.path.basename(fixture.rstrip("/")),
                      "modules_to_save": saved,
                      "peft_vs_base_rel": changed,
                      "peft_vs_merged_rel": apart,
                      "loss_base": base_loss, "loss_peft": peft_loss,
                      "loss_merged": merged_loss}))


if __name__ == "__main__":
    main()
