"""``mixbits inspect``: per-layer bits, sizes and totals of a ``.mbits`` file, without building the model.

Names, kinds and the recipe come from the file: they are printed through :func:`mixbits.safetext.printable`
(control characters, bidi overrides and lone surrogates escaped), and ``--json`` escapes all non-ASCII.
A bad file is one line of the library's error (exit status 2, no traceback).

A layer with bits per structure shows a summary of its structures' bits, its group size and its
number of structures; ``--json`` prints :func:`mixbits.export.describe`'s dict (every structure's bits).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

from ..safetext import printable

NAME = "inspect"
HELP = "show the per-layer bits, sizes and totals of a .mbits file (checks it, builds no model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a .mbits file written by mixbits export")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def bits_text(row: dict) -> str:
    """The bits column of one layer: its bits, or for a layer with bits per structure a summary such as
    ``mixed 1-8 (mean 2.41) 1:40 2:12 8:2`` (range, weight-weighted mean, structures per bitwidth)."""
    bits = row["bits"]
    if not isinstance(bits, list):
        return str(bits)
    counts = " ".join(f"{b}:{n}" for b, n in sorted(Counter(int(b) for b in bits).items()))
    lo, hi = min(bits), max(bits)
    summary = str(lo) if lo == hi else f"mixed {lo}-{hi} (mean {row['average_bits']:.2f})"
    return f"{summary} {counts}"


def format_summary(info: dict) -> str:
    """The table ``mixbits inspect`` prints (with group size and structure columns when a layer has structures)."""
    grouped = any(isinstance(r["bits"], list) for r in info["layers"])
    rows = [("layer", "kind", "shape", "bits") + (("group_size", "structures") if grouped else ()) + ("bytes",)]
    for r in info["layers"]:
        name = printable(r["name"]) + (f" (= {', '.join(printable(a) for a in r['aliases'])})" if r["aliases"] else "")
        shape = "x".join(str(s) for s in r["shape"]) + (f" (scales along dim {r['channel_dim']})"
                                                         if r.get("channel_dim") else "")
        structure = ((str(r["group_size"]) if r.get("group_size") else "-", str(r.get("structures", 1)))
                     if grouped else ())
        rows.append((name, printable(r["kind"]), shape, bits_text(r)) + structure + (f"{r['stored_bytes']:,}",))
    left = 4 if grouped else 3  # columns written left-aligned; numbers are right-aligned
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    t = info["totals"]
    model = info["model"] or {}
    recipe = (f"zoo {printable(model['zoo'])}" if "zoo" in model else f"import {printable(model['import'])}"
              if "import" in model else "none (load with model=...)")
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
