"""``mixbits inspect``: per-layer bits, sizes and totals of a ``.mbits`` file, without building the model."""

from __future__ import annotations

import argparse
import json
import os
import sys

NAME = "inspect"
HELP = "show the per-layer bits, sizes and totals of a .mbits file (checks it, builds no model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a .mbits file written by mixbits export")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def format_summary(info: dict) -> str:
    """The table ``mixbits inspect`` prints."""
    rows = [("layer", "kind", "shape", "bits", "bytes")]
    for r in info["layers"]:
        name = r["name"] + (f" (= {', '.join(r['aliases'])})" if r["aliases"] else "")
        shape = "x".join(str(s) for s in r["shape"]) + (f" (scales along dim {r['channel_dim']})"
                                                         if r.get("channel_dim") else "")
        rows.append((name, r["kind"], shape, str(r["bits"]), f"{r['stored_bytes']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    t = info["totals"]
    model = info["model"] or {}
    recipe = (f"zoo {model['zoo']}" if "zoo" in model else f"import {model['import']}" if "import" in model
              else "none (load with model=...)")
    totals = [
        ("format version", str(info["format_version"])),
        ("model", f"{recipe} {json.dumps(model.get('kwargs', {}))}" if model else recipe),
        ("quantized weights", f"{t['quantized_weight_bytes']:,} B for {t['num_quantized_weights']:,} weights "
                              f"({t['average_bits']:.3f} bits each, scales included)"),
        ("weight compression", f"{t['weight_compression']:.2f}x"),
        ("kept in float32", f"{t['float_rest_bytes']:,} B in {info['float_tensors']} tensors"),
        ("header", f"{t['header_bytes']:,} B"),
        ("file size", f"{t['file_bytes']:,} B ({t['file_bytes'] / 1024:.2f} KiB)"),
    ]
    if t.get("promised_bytes") is not None:
        totals.append(("promised size", f"{t['promised_bytes']:,.0f} B; difference {t['difference_bytes']:+,.0f} B "
                                        f"({'within' if t['within_bound'] else 'OUTSIDE'} 2% + 4 KiB)"))
    if "file_compression" in t:
        totals.append(("whole-file compression", f"{t['file_compression']:.2f}x"))
    width = max(len(k) for k, _ in totals)
    return "\n".join(lines + [""] + [f"{k:<{width}}  {v}" for k, v in totals])


def run(args: argparse.Namespace) -> int:
    from ..export import describe

    info = describe(args.file)
    text = json.dumps(info, indent=2) if args.json else format_summary(info)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `mixbits inspect FILE | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
    return 0
