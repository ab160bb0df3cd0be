"""``mixbits report``: a run folder as Markdown (with PNG files) and as one self-contained HTML page.

The page carries its plots as base64 PNGs and its style inline, so it can be
mailed or archived alone. Both documents are made from the run folder's plain
files: ``report.json`` (required), ``search.json``, ``history.json`` and
``settings.json`` (each optional), and optionally a sweep's rows for the Pareto plot.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import plots
from .report import _fill_note, _total_lines, to_markdown
from .runfiles import write_text

__all__ = ["load_run", "load_sweep", "build_plots", "render_html", "render_markdown", "write_run_report"]

_SWEEP_KEYS = ("method", "weight_compression", "test_accuracy")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON: {exc}") from None


def load_run(folder: str | Path) -> dict[str, Any]:
    """The plain data of a run folder: {"report", "search", "history", "settings", "folder"}.

    Raises:
        FileNotFoundError: no folder, or no ``report.json`` in it (the run has not finished).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {str(folder)!r} does not exist")
    if not (folder / "report.json").is_file():
        hint = " (it has a checkpoint: finish it with mixbits search --resume)" if (folder / "resume.pt").is_file() else ""
        raise FileNotFoundError(f"{str(folder)!r} has no report.json: not a finished mixbits run{hint}")
    data: dict[str, Any] = {"folder": folder, "report": _read_json(folder / "report.json")}
    for key in ("search", "history", "settings"):
        path = folder / f"{key}.json"
        data[key] = _read_json(path) if path.is_file() else {}
    return data


def load_sweep(path: str | Path) -> list[dict[str, Any]]:
    """Sweep rows from ``sweep.json`` (a list of rows, or {"rows": [...]}) or ``sweep.csv``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: rows without method, weight_compression and test_accuracy.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows: Any = list(csv.DictReader(f))
    else:
        rows = _read_json(path)
        if isinstance(rows, dict):
            rows = rows.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"sweep file {str(path)!r} holds no rows (expected a JSON list of rows, "
                         f"{{\"rows\": [...]}} or a CSV)")
    out = []
    for i, r in enumerate(rows):
        missing = [k for k in _SWEEP_KEYS if not isinstance(r, dict) or r.get(k) in (None, "")]
        if missing:
            raise ValueError(f"sweep file {str(path)!r}, row {i}: missing {', '.join(missing)}")
        try:
            out.append({**r, "weight_compression": float(r["weight_compression"]),
                        "test_accuracy": float(r["test_accuracy"])})
        except ValueError:
            raise ValueError(f"sweep file {str(path)!r}, row {i}: weight_compression and test_accuracy must be "
                             f"numbers") from None
    return out


def build_plots(run: Mapping[str, Any], sweep: Sequence[Mapping[str, Any]] | None = None) -> dict[str, bytes]:
    """{figure name: PNG}: "bits", "probabilities" (search runs), "progress", "pareto" (with a sweep)."""
    report = run["report"]
    history = (run.get("search") or {}).get("history") or []
    candidates = (run.get("settings") or {}).get("candidates") or sorted(
        {int(x) for h in history[:1] for b in (h.get("argmax_bits") or {}).values()
         for x in (b if isinstance(b, list) else [b])})
    figures = {"bits": plots.bits_png(report["layers"])}
    start = ((run.get("search") or {}).get("info") or {}).get("start_bits")
    structures = plots.structures_png(report["layers"], start)
    if structures is not None:
        figures["structures"] = structures
    probs = plots.probs_png(history, candidates, report.get("fill_upgrades"),
                            {r["name"]: r["bits"] for r in report["layers"]}) if candidates else None
    if probs is not None:
        figures["probabilities"] = probs
    figures["progress"] = plots.progress_png(history, run.get("history") or {}, report)
    if sweep:
        totals = report["totals"]
        figures["pareto"] = plots.pareto_png(
            sweep, run_point=(totals["weight_compression"], report["final_test_accuracy"])
            if "final_test_accuracy" in report else None, float_accuracy=report.get("float_test_accuracy"))
    return figures


_CAPTIONS = {
    "bits": "Bits per layer, and each layer's share of the quantized weights' size.",
    "structures": "Bits of every structure (a run of output channels with its own bitwidth), one strip per layer "
                  "with bits per structure, channels in order. With --method search, a dot marks every structure "
                  "whose final bits differ from the bits derived at the search's start.",
    "probabilities": "How each layer's choice evolved: the probability of every candidate bitwidth during the "
                     "search (with the budget's prices and the temperature; it sharpens as the temperature falls). "
                     "Each panel names the layer's final bits, in red where they differ from where the plotted "
                     "probabilities settle: the final bits are the exact solve of the budget over the search's "
                     "preferences (the logits without prices), and a budget fill may then raise a layer.",
    "progress": "Accuracy: training accuracy of every stage on its shaded band, stars of the same colour at the "
                "test accuracy after each stage (a float checkpoint's at epoch 0; the allocation's after the bits "
                "are fixed and the BatchNorm statistics re-estimated). With --method search, also the expected "
                "weight compression (held at the target by the multiplier), the multiplier and the temperature "
                "per search epoch, each on its own axis.",
    "pareto": "Test accuracy against weight compression for every row of the sweep; the line joins the points "
              "nothing beats on both axes; the star is this run.",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:left}td.n,th.n{text-align:right}
.share{display:inline-block;height:.7rem;background:#4c78a8;vertical-align:middle;margin-right:.3rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.85rem}
code{background:#f5f5f5;padding:0 .2rem}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:10rem}
.card b{display:block;font-size:1.4rem}
"""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def render_html(run: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """One self-contained HTML page (inline CSS, base64 PNG plots)."""
    report = run["report"]
    e = html.escape
    t = report["totals"]
    title = f"mixbits report: {report.get('model', 'model')} on {report.get('data', 'data')}, target {report.get('target', '-')}"
    cards = [("weight compression", f"{t['weight_compression']:.2f}x"),
             ("model size", f"{t['model_bits'] / 8192:.2f} KiB"),
             ("average weight bits", f"{t['average_bits']:.3f}"),
             ("float test accuracy", _pct(report.get("float_test_accuracy"))),
             ("final test accuracy", _pct(report.get("final_test_accuracy")))]
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f"<p class=\"sub\">method <code>{e(str(report.get('method', '-')))}</code>, run folder "
           f"<code>{e(str(report.get('run_folder', run.get('folder', ''))))}</code>"
           + (f", device {e(str(report['device']))}" if "device" in report else "") + "</p>"]
    if "command" in report:
        out.append(f"<p class=\"sub\">command: <code>{e(report['command'])}</code></p>")
    out.append("<div class=\"cards\">" + "".join(f"<div class=\"card\">{e(k)}<b>{e(v)}</b></div>" for k, v in cards)
               + "</div>")
    out += ["<h2>Bits per layer</h2>", "<table><tr><th>layer</th><th>kind</th><th class=\"n\">weights</th>"
            "<th class=\"n\">bits</th><th class=\"n\">size</th><th>share of size</th></tr>"]
    for r in report["layers"]:
        share = 100 * r["share_of_quantized"]
        name = e(r["name"]) + (" (pinned)" if r["pinned"] else "")
        up = (report.get("fill_upgrades") or {}).get(r["name"])
        label = (f"{r['bits_label']} <span class=\"sub\">({r['structures']} structures of {r['group_size']} "
                 f"channels)</span>") if "structures" in r else f"{r['bits']}"
        fill = (f"search {up[0]}, budget fill" if isinstance(up[0], int) else
                f"{sum(a != b for a, b in zip(*up))} structures raised by the budget fill") if up else ""
        bits = label + (f" <span class=\"sub\">({fill})</span>" if up else "")
        out.append(f"<tr><td><code>{name}</code></td><td>{e(r['kind'])}</td><td class=\"n\">{r['weights']}</td>"
                   f"<td class=\"n\">{bits}</td><td class=\"n\">{r['size_bits'] / 8192:.2f} KiB</td>"
                   f"<td><span class=\"share\" style=\"width:{share * 2:.1f}px\"></span>{share:.1f}%</td></tr>")
    out.append("</table>")
    if report.get("float_layers"):
        out.append("<p class=\"sub\">kept in float: " + ", ".join(
            f"<code>{e(f['name'])}</code> ({e(f['kind'])}, {e(f['reason'])})" for f in report["float_layers"]) + "</p>")
    note = _fill_note(report)
    if note:
        out.append(f"<p class=\"sub\">{e(note)}</p>")
    out += ["<h2>Totals</h2>", "<table>"]
    out += [f"<tr><td>{e(k.strip())}</td><td class=\"n\">{e(v)}</td></tr>" for k, v in _total_lines(report)]
    out.append("</table>")
    for name, heading in (("bits", "Bits and size share"), ("structures", "Bits per structure"),
                          ("probabilities", "Bit probabilities during the search"),
                          ("progress", "Size and accuracy over epochs"), ("pareto", "Pareto plot of the sweep")):
        if name == "probabilities" and name not in figures:
            out += [f"<h2>{heading}</h2>", f"<p class=\"sub\">None: the method <code>"
                    f"{e(str(report.get('method', '-')))}</code> chooses the bits in one step, without a search "
                    f"history of probabilities (<code>--method search</code> records one).</p>"]
        if name in figures:
            b64 = base64.b64encode(figures[name]).decode("ascii")
            out += [f"<h2>{heading}</h2>", f"<figure><img alt=\"{e(heading)}\" src=\"data:image/png;base64,{b64}\">",
                    f"<figcaption>{e(_CAPTIONS[name])}</figcaption></figure>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(run: Mapping[str, Any], images: Mapping[str, str]) -> str:
    """The run's Markdown report followed by its plots, linked as files (``images``: name -> relative path)."""
    text = to_markdown(run["report"])
    for name, path in images.items():
        text += f"\n## {name.capitalize()}\n\n![{name}]({path})\n\n{_CAPTIONS[name]}\n"
    return text


def write_run_report(folder: str | Path, *, sweep: str | Path | None = None, out: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.md`` (plots in ``plots/``) and ``report.html`` for the run in ``folder``.

    Args:
        folder: a finished run folder.
        sweep: a sweep's ``sweep.json``/``sweep.csv`` for the Pareto plot.
        out: where to write (default: the run folder).

    Returns:
        {"markdown", "html", "plots"} paths.
    """
    run = load_run(folder)
    rows = load_sweep(sweep) if sweep is not None else None
    out = Path(out) if out is not None else Path(folder)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    figures = build_plots(run, rows)
    images = {}
    for name, png in figures.items():
        path = out / "plots" / f"{name}.png"
        path.write_bytes(png)
        images[name] = f"plots/{name}.png"
    md = write_text(out / "report.md", render_markdown(run, images))
    page = write_text(out / "report.html", render_html(run, figures))
    return {"markdown": md, "html": page, "plots": out / "plots"}
