"""How far the reference implementation itself drifts from its f32 output in bf16.

Loads each shared fixture in bf16 with transformers, applies its PEFT adapter, and
prints the measures `graft model parity` prints, against the same f32 reference:
max |a - b| / max |ref| of the logits (base and adapted) and of the worst LoRA
gradient. graft's bf16 tolerance is set from these figures, so that it asks of graft
what the reference can itself meet.

Two adapter settings: PEFT's default (the adapter upcast to f32, its branch computed
in f32 and added to the bf16 base output in f32), and the adapter in bf16 (the whole
branch in bf16, as autocast would run an f32 adapter).

    python benches/hf_bf16_deviation.py ../shared/fixtures [--device cuda]
"""

import argparse
import json

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def rel(actual, reference):
    actual, reference = actual.float().cpu(), reference.float().cpu()
    return ((actual - reference).abs().max() / reference.abs().max()).item()


def deviation(folder, device, adapter_f32):
    ref = json.load(open(f"{folder}/reference.json"))
    ids = torch.tensor(ref["input_ids"], device=device)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation="eager"
    ).to(device)
    with torch.no_grad():
        base = rel(model(input_ids=ids).logits, torch.tensor(ref["logits"]))
    adapted = PeftModel.from_pretrained(
        model, f"{folder}/lora-adapter", is_trainable=True, autocast_adapter_dtype=adapter_f32
    )
    adapted.eval()
    with torch.no_grad():
        lora = rel(adapted(input_ids=ids).logits, torch.tensor(ref["with_lora"]["logits"]))
    adapted.train()
    adapted(input_ids=ids, labels=ids).loss.backward()
    expected = load_file(f"{folder}/lora-adapter/reference_grads.safetensors")
    key = lambda n: n.replace("base_model.model.", "").replace(".default", "")
    worst = max(
        (rel(p.grad, expected[key(n)]), key(n))
        for n, p in adapted.named_parameters()
        if p.requires_grad
    )
    return base, lora, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixtures")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    print(f"# torch {torch.__version__}, device {a.device}")
    print("| fixture | adapter | base logits | with LoRA | LoRA grads (worst tensor) |")
    print("| --- | --- | ---: | ---: | --- |")
    for name in ["llama-tiny", "qwen2-tiny"]:
        for adapter_f32, label in [(True, "f32 (PEFT default)"), (False, "bf16")]:
            base, lora, (grad, tensor) = deviation(f"{a.fixtures}/{name}", a.device, adapter_f32)
            print(f"| {name} | {label} | {base:.1e} | {lora:.1e} | {grad:.1e} ({tensor}) |")


if __name__ == "__main__":
    main()
