"""Reports of a bit assignment: per-layer rows and totals, as a dict, a table and Markdown.

The printed table, the JSON report and the Markdown report are made from the
same dict, so they never disagree.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .budget import parse_target
from .space import BitSpace

__all__ = ["build_report", "format_table", "to_markdown", "bits_label"]


def bits_label(bits: Any, channels: Sequence[int] | None = None) -> str:
    """A layer's bits for a table: ``4``, or for bits per structure ``1-8 ~2.41`` (range, then the mean
    code bits per weight, structures weighted by their ``channels``); ``1`` when every structure has 1 bit."""
    if isinstance(bits, int):
        return str(bits)
    bits = [int(b) for b in bits]
    weights = list(channels) if channels is not None else [1] * len(bits)
    mean = sum(b * c for b, c in zip(bits, weights)) / max(sum(weights), 1)
    lo, hi = min(bits), max(bits)
    return str(lo) if lo == hi else f"{lo}-{hi} ~{mean:.2f}"


def build_report(space: BitSpace, bits: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Per-layer rows and totals of ``bits`` on ``space``; ``extra`` keys are added at the top level.

    A layer with structures has ``bits`` as a list (one per structure), ``structures``,
    ``group_size``, ``bits_histogram`` ({bits: structures}) and ``mean_bits`` (code bits per weight).

    Returns:
        {"layers": [...], "float_layers": [...], "totals": {...}, **extra}.
    """
    cost = space.cost
    bits = cost.normalize(bits)
    q_total = cost.quantized_bits(bits)
    rows = []
    for layer in space.layers:
        b = bits[layer.name]
        size = layer.size_bits(b)
        grouped = {}
        if layer.grouped:
            per = layer.expand(b)
            grouped = {"structures": layer.num_groups, "group_size": layer.group_size,
                       "bits_histogram": {str(k): per.count(k) for k in sorted(set(per))},
                       "mean_bits": sum(x * c for x, c in zip(per, layer.group_channels)) / layer.num_channels}
            b = list(per)
        rows.append({
            "name": layer.name,
            "aliases": list(layer.aliases),
            "kind": layer.kind,
            "shape": list(layer.shape),
            "channel_dim": layer.channel_dim,
            "weights": layer.num_weights,
            "bits": b,
            "pinned": layer.pinned,
            "size_bits": size,
            "share_of_quantized": size / q_total,
            "bits_label": bits_label(b, layer.group_channels if layer.grouped else None),
            **grouped,
        })
    float_layers = [{"name": n, "kind": k, "params": p, "reason": r} for n, k, p, r in space.float_layers]
    return {"layers": rows, "float_layers": float_layers, "totals": cost.summary(bits), **extra}


def _label(row: Mapping[str, Any]) -> str:
    """A row's bits as a table shows them (rows of older reports have no ``bits_label``)."""
    if "structures" in row:
        return f"{row['bits_label']} ({row['structures']} x {row['group_size']}ch)"
    return str(row.get("bits_label", row["bits"]))


def _kib(bits: float) -> str:
    return f"{bits / 8192:.2f} KiB"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _total_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    t = report["totals"]
    target_bytes = _target_bytes(report)
    f = report.get("packed_file")
    lines = [("float model size", _kib(t["float_model_bits"]))]
    if f is not None:  # the headline is the file on disk; the cost model's parts follow
        fits = "" if target_bytes is None else (
            f", within the target's {target_bytes:,.0f} B" if f["file_bytes"] <= target_bytes
            else f", OVER the target's {target_bytes:,.0f} B")
        lines += [("model file on disk (.mbits)", f"{f['file_bytes']:,} B = {f['file_bytes'] / 1024:.2f} KiB" + fits),
                  ("  of which quantized weights", _kib(t["quantized_bits"])),
                  ("  of which kept in float", _kib(t["float_rest_bits"])),
                  ("  of which header and padding", f"{(f['file_bytes'] * 8 - t['model_bits']) / 8192:.2f} KiB")]
    else:
        lines += [("quantized model size (no file yet)", _kib(t["model_bits"])),
                  ("  of which quantized weights", _kib(t["quantized_bits"])),
                  ("  of which kept in float", _kib(t["float_rest_bits"]))]
    lines += [
        ("weight compression", f"{t['weight_compression']:.2f}x"),
        ("whole-model compression", f"{t['model_compression']:.2f}x" + (
            "" if f is None else f" ({t['float_model_bits'] / (8 * f['file_bytes']):.2f}x counting the whole file)")),
        ("average weight bits", f"{t['average_bits']:.3f}"),
    ]
    if "quantized_param_share" in t:
        share = t["quantized_param_share"]
        lines.append(("parameters quantized", f"{100 * share:.1f}%" + (
            " (warning: more than a quarter of the parameters stay float)" if share < 0.75 else "")))
    if "target" in report:
        whole = ("the whole .mbits file, header included; " if target_bytes is not None
                 else "the whole model, float tensors included; " if _scope(report) == "model" else "")
        lines.append(("target", f"{report['target']} ({whole}budget {_kib(report['budget_bits'])} for quantized "
                                f"weights, {100 * t['quantized_bits'] / report['budget_bits']:.1f}% used)"))
    for key, label in (("float_test_accuracy", "float test accuracy"),
                       ("derived_test_accuracy", "test accuracy at derived bits, before fine-tuning"),
                       ("final_test_accuracy", "final test accuracy")):
        if key in report:
            lines.append((label, _pct(report[key])))
    return lines


def _scope(report: Mapping[str, Any]) -> str | None:
    """What the report's target binds: ``"weights"`` or ``"model"`` (None without a readable target)."""
    try:
        return parse_target(report["target"]).scope
    except (KeyError, ValueError):
        return None


def _target_bytes(report: Mapping[str, Any]) -> float | None:
    """The bytes a size target ("12KB") allows the whole file; None for other targets."""
    try:
        t = parse_target(report["target"])
    except (KeyError, ValueError):
        return None
    return t.value if t.kind == "size_bytes" else None


def _fill_note(report: Mapping[str, Any]) -> str | None:
    """Why a layer's bits differ from the search's choice, when the budget fill upgraded it."""
    ups = report.get("fill_upgrades") or {}
    if not ups:
        return None
    moves = ", ".join(f"{n} {a} -> {b}" if isinstance(a, int) else
                      f"{n} ({sum(x != y for x, y in zip(a, b))} of {len(a)} structures upgraded)"
                      for n, (a, b) in ups.items())
    return (f"budget fill: {moves} bits. The search chose the smaller bits; the budget that choice left unused "
            f"was spent on upgrades (no layer gets fewer bits); fill = false under [method_options] keeps "
            f"the search's choice.")


def _movement_note(report: Mapping[str, Any]) -> str | None:
    """What the learned search changed from its start (its derivation before any logit step)."""
    m = report.get("search_movement")
    if not m:
        return None
    start = f"its {m['init']} start" if m.get("init") else "its start"
    if not m["changed_layers"]:
        return (f"the search moved no layer from {start}: these are the start's bits. More search epochs or a "
                f"larger logit_lr under [method_options] let the logits move further.")
    names = ", ".join(m["changed_layers"][:8]) + (" ..." if len(m["changed_layers"]) > 8 else "")
    return f"the search changed {len(m['changed_layers'])} of {m['searchable_layers']} layers from {start}: {names}"


def format_table(report: Mapping[str, Any]) -> str:
    """Plain-text per-layer table and totals, for a terminal."""
    rows = report["layers"]
    w = max([len("layer")] + [len(r["name"]) + (2 if r["pinned"] else 0) for r in rows])
    bw = max([4] + [len(_label(r)) for r in rows])
    out = [f"{'layer':<{w}}  {'kind':<8} {'weights':>9} {'bits':>{bw}} {'size':>12} {'share':>6}"]
    for r in rows:
        name = r["name"] + (" *" if r["pinned"] else "")
        out.append(f"{name:<{w}}  {r['kind']:<8} {r['weights']:>9} {_label(r):>{bw}} {_kib(r['size_bits']):>12} "
                   f"{100 * r['share_of_quantized']:>5.1f}%")
    if any("structures" in r for r in rows):
        out.append("a-b ~m: bits per structure from a to b, m code bits per weight on average")
    if any(r["pinned"] for r in rows):
        out.append("* pinned")
    if report["float_layers"]:
        out.append("kept in float: " + ", ".join(f"{f['name']} ({f['kind']}, {f['reason']})" for f in report["float_layers"][:12])
                   + (" ..." if len(report["float_layers"]) > 12 else ""))
    for note in (_movement_note(report), _fill_note(report)):
        if note:
            out.append(note)
    out.append("")
    lw = max(len(k) for k, _ in _total_lines(report))
    out.extend(f"{k:<{lw}}  {v}" for k, v in _total_lines(report))
    return "\n".join(out)


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown document."""
    out = ["# mixbits report", ""]
    if "command" in report:
        out += [f"Command: `{report['command']}`", ""]
    out += ["| layer | kind | weights | bits | size | share |", "|---|---|---:|---:|---:|---:|"]
    for r in report["layers"]:
        pin = " (pinned)" if r["pinned"] else ""
        alias = f" = {', '.join(r['aliases'])}" if r["aliases"] else ""
        out.append(f"| `{r['name']}`{alias}{pin} | {r['kind']} | {r['weights']} | {_label(r)} | {_kib(r['size_bits'])} | "
                   f"{100 * r['share_of_quantized']:.1f}% |")
    if report["float_layers"]:
        out += ["", "Kept in float:", ""]
        out += [f"- `{f['name']}` ({f['kind']}, {f['params']} parameters): {f['reason']}" for f in report["float_layers"]]
    for note in (_movement_note(report), _fill_note(report)):
        if note:
            out += ["", note]
    out += ["", "| total | value |", "|---|---|"]
    out += [f"| {k.strip()} | {v} |" for k, v in _total_lines(report)]
    return "\n".join(out) + "\n"
