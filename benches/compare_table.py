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
        side = "ref" if line.get("impl") == "hf-peft" else "graft"
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
    # The threads column only for a thread sweep.
    sweep = any(key[3] is not None for key in order)
    print("| preset | seq x batch |" + (" threads |" if sweep else "") + " graft tokens/s | HF+PEFT tokens/s | graft/HF | "
          "graft peak GiB | HF peak GiB | graft ms/step | HF ms/step |")
    print("| --- | --- |" + (" ---: |" if sweep else "") + " ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in order:
        graft, ref = rows[key].get("graft"), rows[key].get("ref")
        preset, seq, batch, threads, ckpt = key
        note = ""
        for side, line in (("graft", graft), ("HF", ref)):
            if line and line.get("error"):
                note += f" ({side} failed: {line['error'][:120]})"
        column = f" {threads or 'all'} |" if sweep else ""
        shape = f"{seq} x {batch}" + (", checkpointing" if ckpt else "")
        print(f"| {preset} | {shape} |{column} {fig(graft, 'tokens_per_s')} | "
              f"{fig(ref, 'tokens_per_s')} | {ratio(graft, ref, 'tokens_per_s')} | "
              f"{fig(graft, 'peak_gib', 2)} | {fig(ref, 'peak_gib', 2)} | "
              f"{fig(graft, 'ms_per_step', 1)} | {fig(ref, 'ms_per_step', 1)} |{note}")


if __name__ == "__main__":
    main(sys.argv[1])
