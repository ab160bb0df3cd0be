"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed).

Each function takes the plain data of a run folder (``report.json``,
``search.json`` history, ``history.json``, sweep rows) and returns one PNG.
Bitwidths keep one colour in every figure.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

__all__ = ["bits_png", "structures_png", "probs_png", "progress_png", "pareto_png", "probability_series",
           "METHOD_COLORS", "method_color"]

_BIT_COLORS = {1: "#d62728", 2: "#ff7f0e", 3: "#bcbd22", 4: "#2ca02c", 5: "#17becf", 6: "#1f77b4", 7: "#9467bd",
               8: "#8c564b", 16: "#7f7f7f", 32: "#1b1b1b"}
# One colour per method in every figure (the report's Pareto plot and the sweep's pareto.png).
METHOD_COLORS = {"search": "tab:red", "hessian": "tab:purple", "random": "tab:orange", "uniform": "tab:blue",
                 "diffq": "tab:green", "mct": "tab:brown"}
_OTHER_COLORS = ("tab:cyan", "tab:olive", "tab:pink", "tab:gray")


def method_color(method: str, others: Sequence[str] = ()) -> str:
    """The colour of a method (``"uniform:4"`` is ``uniform``); an unknown one takes the next spare colour.

    Args:
        method: a method name or spec.
        others: every unknown method of the figure, in a fixed order, so each keeps its own colour.
    """
    base = str(method).split(":")[0]
    if base in METHOD_COLORS:
        return METHOD_COLORS[base]
    spare = sorted({str(o).split(":")[0] for o in others} - set(METHOD_COLORS))
    return _OTHER_COLORS[spare.index(base) % len(_OTHER_COLORS)] if base in spare else _OTHER_COLORS[0]


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("report plots need matplotlib: pip install 'mixbits[plot]'") from exc
    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def bits_png(layers: Sequence[Mapping[str, Any]]) -> bytes:
    """Bits per layer (log scale) above each layer's share of the quantized size.

    Args:
        layers: ``report.json`` rows: name, bits, share_of_quantized, pinned.
    """
    plt = _plt()
    n = len(layers)
    fig, (ax_b, ax_s) = plt.subplots(2, 1, figsize=(max(11.0, 0.32 * n + 2.0), 5.2), sharex=True,
                                     gridspec_kw={"height_ratios": [1.2, 1]})
    xs = list(range(n))
    # A layer with bits per structure is drawn at its mean code bits, hatched, in the colour of its commonest bits.
    heights = [float(r.get("mean_bits", r["bits"])) if "structures" in r else r["bits"] for r in layers]
    colors = [_BIT_COLORS.get(_commonest(r), "#444444") for r in layers]
    width = min(0.8, 0.08 * max(n, 4))  # a handful of layers: narrow bars, not page-wide slabs
    bars = ax_b.bar(xs, heights, width=width, color=colors,
                    edgecolor=["black" if r["pinned"] else "none" for r in layers])
    for bar, r in zip(bars, layers):
        if "structures" in r:
            bar.set_hatch("//")
    ax_b.set_yscale("log", base=2)
    ticks = sorted({_commonest(r) for r in layers} | {1, 8, 32})
    ax_b.set_yticks(ticks, [str(t) for t in ticks])
    ax_b.minorticks_off()
    ax_b.set_ylabel("bits")
    ax_b.set_title("bits per layer (outlined: pinned; hatched: bits per structure, at their mean)")
    ax_s.bar(xs, [100 * r["share_of_quantized"] for r in layers], width=width, color=colors)
    ax_s.set_xlim(-0.6, n - 0.4)
    ax_s.set_ylabel("share of size (%)")
    ax_s.set_xticks(xs, [_short(r["name"]) for r in layers], rotation=60, ha="right", fontsize=8)
    for ax in (ax_b, ax_s):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _commonest(row: Mapping[str, Any]) -> int:
    """A report row's bits, or for bits per structure the bitwidth most structures have."""
    if "structures" not in row:
        return int(row["bits"])
    hist = row.get("bits_histogram") or {}
    return int(max(hist, key=lambda b: hist[b])) if hist else int(max(row["bits"]))


def structures_png(layers: Sequence[Mapping[str, Any]], start_bits: Mapping[str, Any] | None = None) -> bytes | None:
    """Heat map of the bits of every structure, one strip per layer with bits per structure.

    Args:
        layers: ``report.json`` rows; those with ``structures`` are drawn.
        start_bits: {layer: bits per structure} where the search started; structures whose final
            bits differ are marked with a dot.

    Returns:
        the PNG, or None when no layer has bits per structure.
    """
    rows = [r for r in layers if "structures" in r]
    if not rows:
        return None
    plt = _plt()
    from matplotlib.colors import BoundaryNorm, ListedColormap

    levels = sorted(_BIT_COLORS)
    cmap = ListedColormap([_BIT_COLORS[b] for b in levels])
    norm = BoundaryNorm([-0.5 + i for i in range(len(levels) + 1)], len(levels))
    fig, ax = plt.subplots(figsize=(11.0, 0.28 * len(rows) + 1.6), layout="constrained")
    moved_total = 0
    for y, r in enumerate(rows):
        bits = [int(b) for b in r["bits"]]
        g = len(bits)
        edges = [i / g for i in range(g + 1)]
        ax.pcolormesh(edges, [y - 0.4, y + 0.4], [[levels.index(b) for b in bits]], cmap=cmap, norm=norm)
        start = (start_bits or {}).get(r["name"])
        if isinstance(start, (list, tuple)) and len(start) == g:
            moved = [i for i in range(g) if int(start[i]) != bits[i]]
            moved_total += len(moved)
            if moved:
                ax.scatter([(i + 0.5) / g for i in moved], [y] * len(moved), s=6, color="white",
                           edgecolors="black", linewidths=0.4, zorder=3)
    ax.set_yticks(range(len(rows)), [f"{_short(r['name'], 28)} ({r['structures']})" for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("structure (output channels in order, each layer's strip spans its channels)")
    used = sorted({int(b) for r in rows for b in r["bits"]})
    handles = [plt.Rectangle((0, 0), 1, 1, color=_BIT_COLORS[b]) for b in used]
    labels = [f"{b} bit" for b in used]
    if start_bits:
        handles.append(plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black"))
        labels.append(f"moved during the search ({moved_total})")
    fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return _png(fig)


def probability_series(history: Sequence[Mapping[str, Any]]) -> tuple[list[float], dict[str, list[list[float]]]]:
    """(x in epochs, {layer: [probabilities at each x]}) from a search history.

    Uses the within-epoch ``trace`` and the end-of-epoch ``mixing_probs`` when the
    search recorded them, else the end-of-epoch ``probs``.
    """
    xs: list[float] = []
    series: dict[str, list[list[float]]] = {}

    def add(x: float, probs: Mapping[str, Sequence[float]]) -> None:
        if xs and x <= xs[-1]:
            return
        xs.append(x)
        for name, p in probs.items():
            series.setdefault(name, []).append(list(p))

    for rec in history:
        for point in rec.get("trace") or []:
            add(float(point["epoch"]), point["probs"])
        probs = rec.get("mixing_probs") or rec.get("probs")
        if probs:
            add(float(rec["epoch"]), probs)
    return xs, series


def probs_png(history: Sequence[Mapping[str, Any]], candidates: Sequence[int],
              fill_upgrades: Mapping[str, Sequence[int]] | None = None,
              final_bits: Mapping[str, int] | None = None) -> bytes | None:
    """Stacked probabilities of each candidate bitwidth over the search, one small panel per layer.

    Args:
        history: the search's per-epoch records.
        candidates: the candidate bitwidths, in the order of the probabilities.
        fill_upgrades: {layer: (searched bits, final bits)} that the budget fill raised after the
            search; their panels say so, since the final bits are not the probabilities' winner.
        final_bits: {layer: bits} of the run; each panel names them, in colour where they are not
            where the plotted probabilities settle (the exact budget solve over the search's
            preferences, or the budget fill, chose otherwise).

    Returns:
        the PNG, or None when the history holds no probabilities (a method other than the search).
    """
    xs, series = probability_series(history)
    cands = sorted(int(b) for b in candidates)
    layers = {n: s for n, s in series.items() if s and len(s[0]) == len(cands) > 1}
    if not xs or not layers:
        return None
    plt = _plt()
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 1.9 * rows + 0.9), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    colors = [_BIT_COLORS.get(b, "#444444") for b in cands]
    for ax, (name, s) in zip(axes.flat, layers.items()):
        per_bit = list(zip(*s))  # (K, T)
        ax.stackplot(xs, per_bit, colors=colors, linewidth=0)
        up = (fill_upgrades or {}).get(name)
        final = (final_bits or {}).get(name)
        settled = cands[max(range(len(cands)), key=lambda k: s[-1][k])]
        if isinstance(final, (list, tuple)):  # bits per structure: the panel shows their mean probabilities
            final = None if not final else round(sum(final) / len(final), 2)
            up = None
        note = "" if final is None else f"\nfinal {final} bits" + (f" (budget fill from {up[0]})" if up else "")
        ax.set_title(_short(name, 30) + note, fontsize=8,
                     color="#b03000" if final is not None and final != settled else "black")
        ax.set_ylim(0, 1)
        ax.set_xlim(xs[0], xs[-1])
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("search epoch", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, [f"{b} bit" for b in cands], loc="outside upper center", ncol=len(cands), fontsize=8,
               frameon=False, title="probability of each bitwidth during the search "
                                    "(budget prices and temperature applied)", title_fontsize=9)
    return _png(fig)


def progress_png(search_history: Sequence[Mapping[str, Any]], fit_history: Mapping[str, Sequence[Mapping[str, Any]]],
                 report: Mapping[str, Any]) -> bytes:
    """Expected size against the target, multiplier and temperature during the search, and accuracy over all stages."""
    plt = _plt()
    searched = bool(search_history) and "expected_weight_compression" in search_history[0]
    # without a search history (a one-step method) the accuracy plot takes the whole width
    fig, axes = plt.subplots(1, 2 if searched else 1, figsize=(11, 4.6), layout="constrained", squeeze=False)
    ax_size, ax_acc = axes[0][0], axes[0][-1]
    if searched:
        ep = [h["epoch"] for h in search_history]
        comp = [h["expected_weight_compression"] for h in search_history]
        ax_size.plot(ep, comp, "o-", label="expected compression")
        h0 = search_history[0]
        target = h0["expected_weight_compression"] * h0["expected_quantized_bits"] / h0["budget_bits"]
        ax_size.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.1f}x")
        lo, hi = min(comp + [target]), max(comp + [target])
        ax_size.set_ylim(lo - 0.15 * max(hi - lo, 0.1 * target), hi + 0.15 * max(hi - lo, 0.1 * target))
        ax_size.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax_size.set_xlabel("search epoch")
        ax_size.set_xticks(ep)
        ax_size.set_ylabel("weight compression (x)")
        # multiplier and temperature differ by orders of magnitude: one right axis each
        twin = ax_size.twinx()
        twin.plot(ep, [h["multiplier"] for h in search_history], "s:", color="tab:purple", ms=3, label="multiplier")
        twin.set_ylabel("multiplier", color="tab:purple")
        twin.tick_params(axis="y", colors="tab:purple")
        twin_t = ax_size.twinx()
        twin_t.spines["right"].set_position(("axes", 1.16))
        twin_t.plot(ep, [h["temperature"] for h in search_history], "^:", color="tab:orange", ms=3,
                    label="temperature")
        twin_t.set_ylabel("temperature", color="tab:orange")
        twin_t.tick_params(axis="y", colors="tab:orange")
        lines = (ax_size.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
                 + twin_t.get_legend_handles_labels()[0])
        ax_size.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="best")
        ax_size.set_title("expected size during the search")
    stages = [("float", fit_history.get("float") or []), ("allocation", search_history or []),
              ("fine-tune", fit_history.get("finetune") or [])]
    start = 0
    tests = {"float": report.get("float_test_accuracy"), "allocation": report.get("derived_test_accuracy"),
             "fine-tune": report.get("final_test_accuracy")}
    for i, (name, hist) in enumerate(stages):
        accs = [h["train_accuracy"] for h in hist if h.get("train_accuracy") is not None]
        xs = list(range(start + 1, start + len(accs) + 1))
        if accs:
            ax_acc.plot(xs, [100 * a for a in accs], "o-", ms=3, color=f"C{i}", label=f"{name} train")
            ax_acc.axvspan(start + 0.5, start + len(accs) + 0.5, color=f"C{i}", alpha=0.06)
        if tests[name] is not None:
            # after the stage's last epoch; a stage without epochs (a float checkpoint, the Hessian
            # allocation) sits on the boundary before the next stage's band
            x = start + len(accs) if accs else start + (0.0 if i == 0 else 0.5)
            label = f"{name} test {100 * tests[name]:.2f}%" + (" (checkpoint)" if i == 0 and not accs else "")
            ax_acc.plot([x], [100 * tests[name]], "*", ms=12, color=f"C{i}", markeredgecolor="black", label=label,
                        zorder=4)
        start += len(accs)
    from matplotlib.ticker import MaxNLocator

    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_xlabel("epoch (float, allocation, fine-tune)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy over the run")
    ax_acc.set_xlim(left=-0.5)
    ax_acc.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    for ax in {ax_size, ax_acc}:
        ax.grid(True, alpha=0.3)
    return _png(fig)


def pareto_png(rows: Sequence[Mapping[str, Any]], *, run_point: tuple[float, float] | None = None,
               float_accuracy: float | None = None) -> bytes:
    """Test accuracy against weight compression for every sweep row, the Pareto front, and this run.

    Args:
        rows: dicts with method, weight_compression, test_accuracy (a fraction).
        run_point: (weight compression, test accuracy) of the reported run, starred.
        float_accuracy: the float model's test accuracy, a dashed line.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.5))
    methods: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        methods.setdefault(str(r["method"]).split(":")[0], []).append(
            (float(r["weight_compression"]), 100 * float(r["test_accuracy"])))
    for m, pts in sorted(methods.items()):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, color=method_color(m, list(methods)), label=m,
                   zorder=3)
    front = _pareto_front([p for pts in methods.values() for p in pts])
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="black", lw=1, alpha=0.6,
                label="Pareto front", zorder=2)
    if run_point is not None:
        ax.plot([run_point[0]], [100 * run_point[1]], "*", ms=16, color="gold", markeredgecolor="black",
                label="this run", zorder=4)
    if float_accuracy is not None:
        ax.axhline(100 * float_accuracy, color="grey", ls="--", lw=1, label=f"float {100 * float_accuracy:.2f}%")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (1, 2, 4, 8, 16, 24, 32) if lo <= t <= hi]
    ax.set_xticks(ticks, [f"{t}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weight compression (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats in both compression and accuracy, by increasing compression."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)
