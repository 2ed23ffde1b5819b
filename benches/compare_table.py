#!/usr/bin/env python3
"""Markdown table of graft against the HF + PEFT reference from the JSON lines that
gpu_vs_reference.sh and cpu_vs_reference.sh collect (one graft line, then one
reference line, per preset)."""
import json
import sys


def main(path):
    rows = {}
    order = []
    device = None
    for text in open(path):
        text = text.strip()
        if not text.startswith("{"):
            continue
        line = json.loads(text)
        key = (line.get("preset"), line.get("seq"), line.get("batch"), line.get("threads"),
               bool(line.get("grad_ckpt")))
        if key not in rows:
            rows[key] = {}
            order.append(key)
        if line.get("impl") != "hf-peft":
            side = "graft"
        else:
            side = "compile" if line.get("compile") else "ref"
        rows[key][side] = line
        if side == "ref" and line.get("device"):
            device = line["device"]

    def fig(line, key, digits=0):
        if not line or line.get(key) is None:
            return "-"
        value = line[key]
        return f"{value:,.{digits}f}"

    def ratio(a, b, key):
        try:
            return f"{a[key] / b[key]:.2f}x"
        except (TypeError, KeyError, ZeroDivisionError):
            return "-"

    print(f"device: {device or 'unknown'}")
    print()
    # The threads column only for a thread sweep; the compile columns only where the
    # reference also ran under torch.compile.
    sweep = any(key[3] is not None for key in order)
    compiled = any("compile" in rows[key] for key in order)
    eager_name = "HF eager" if compiled else "HF+PEFT"
    header = ["preset", "seq x batch"] + (["threads"] if sweep else []) + [
        "graft tokens/s", f"{eager_name} tokens/s", f"graft/{'eager' if compiled else 'HF'}"]
    if compiled:
        header += ["HF compile tokens/s", "graft/compile"]
    header += ["graft peak GiB", f"{eager_name} peak GiB"] + (["HF compile peak GiB"] if compiled else [])
    header += ["graft ms/step", f"{eager_name} ms/step"] + (["HF compile ms/step"] if compiled else [])
    print("| " + " | ".join(header) + " |")
    print("| --- | --- |" + " ---: |" * (len(header) - 2))
    for key in order:
        graft, ref, comp = (rows[key].get(side) for side in ("graft", "ref", "compile"))
        preset, seq, batch, threads, ckpt = key
        note = ""
        for side, line in (("graft", graft), ("HF", ref), ("HF compile", comp)):
            if line and line.get("error"):
                note += f" ({side} failed: {line['error'][:120]})"
        cells = [preset, f"{seq} x {batch}" + (", checkpointing" if ckpt else "")]
        cells += [f"{threads or 'all'}"] if sweep else []
        cells += [fig(graft, "tokens_per_s"), fig(ref, "tokens_per_s"), ratio(graft, ref, "tokens_per_s")]
        if compiled:
            cells += [fig(comp, "tokens_per_s"), ratio(graft, comp, "tokens_per_s")]
        cells += [fig(graft, "peak_gib", 2), fig(ref, "peak_gib", 2)]
        cells += [fig(comp, "peak_gib", 2)] if compiled else []
        cells += [fig(graft, "ms_per_step", 1), fig(ref, "ms_per_step", 1)]
        cells += [fig(comp, "ms_per_step", 1)] if compiled else []
        print("| " + " | ".join(cells) + " |" + note)

if __name__ == "__main__":
    main(sys.argv[1])
