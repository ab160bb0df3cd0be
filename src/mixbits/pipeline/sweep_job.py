"""``mixbits sweep``: the pipeline's stages for several methods, targets and seeds from one float model.

:func:`sweep` trains the float model once (or loads ``checkpoint``), then runs
every (method, target, seed) as one row of the same stages ``mixbits search``
runs: a fresh copy of the float weights, the method's allocation under the
exact budget, fine-tuning under the compute-matched rule, test accuracy. Every
row is sized by the one cost model. It writes, in ``out``:

- ``sweep.csv`` / ``sweep.json``  one row per (method, target, seed);
- ``pareto.png``                  test accuracy against weight compression (needs matplotlib);
- ``float.pt``                    the float checkpoint, when trained here;
- ``rows/<method>-<target>-seed<seed>/``  each row's ``finetuned.pt`` and ``model.mbits``
                                  (``keep_models``); ``mixbits export`` takes such a folder.

Rows that fix the same bits from the float weights with the same seed (``uniform`` at 16x
and 24x, and the all-binary point, when every layer ends at 1 bit) are one model: it is
trained and listed once, with the other labels in its ``also`` field.

A method is a registered name (``search``, ``hessian``, ``random``, ``uniform``)
or ``uniform:K``: every layer at K bits, one point whatever the targets. Callers
with their own allocator (the benchmark's DiffQ and MCT baselines) use
:func:`prepare_sweep` and :func:`run_row` directly.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import re
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..budget import budget_bits
from ..data import TensorLoader
from ..methods import Allocation, AllocationContext
from ..runfiles import claim_run_dir, save_checkpoint, write_json
from ..plots import method_color
from ..train import TrainConfig, fit
from .allocation import allocate_bits, fix_bits_, prepare_config, start_row
from .config import SweepConfig, parse_method
from .data import Data, build_data
from .export import export_row
from .finetune import finetune_and_evaluate
from .float_model import check_targets, fit_float_, new_model, resolve_device, trained_float_checkpoint

__all__ = ["SweepConfig", "SweepSetup", "sweep", "prepare_sweep", "run_row", "write_table", "plot_pareto",
           "parse_method", "ROW_FIELDS"]

log = logging.getLogger(__name__)

ROW_FIELDS = ("model", "method", "target", "seed", "size_bits", "quantized_bits", "budget_bits", "weight_compression",
              "model_compression", "average_bits", "derived_accuracy", "test_accuracy", "float_accuracy",
              "weight_epochs", "finetune_epochs", "distill", "search_seconds", "finetune_seconds", "also",
              "model_file")

Allocator = Callable[[AllocationContext], Allocation]


@dataclass
class SweepSetup:
    """What every row shares: the settings, the data and the float weights."""

    config: SweepConfig
    data: Data
    float_state: dict[str, torch.Tensor]
    float_accuracy: float
    float_epoch_seconds: float
    float_steps_per_epoch: int
    float_train_seconds: float | None

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def model_kwargs(self) -> dict[str, int]:
        return self.data.model_kwargs

    def new_model(self) -> nn.Module:
        """A fresh model holding the float weights, on the device."""
        return new_model(self.config.model, self.data, self.float_state)

    def loaders(self, seed: int) -> dict[str, TensorLoader]:
        """{"full", "weights", "held_out", "test"} of a row seeded by ``seed`` (see :class:`mixbits.pipeline.Data`)."""
        c = self.config
        return self.data.loaders(batch_size=c.batch_size, held_out_fraction=c.held_out_fraction, seed=seed)


def prepare_sweep(config: SweepConfig, *, progress: bool = False) -> SweepSetup:
    """Load the data, check every target, then train the float model once (or load ``config.checkpoint``).

    The float training is seeded by the first seed. With a checkpoint, one float epoch is timed on a
    copy, for the search-cost ratios.

    Raises:
        ValueError: bad data set, model, pins or an unreachable target (before the float training).
    """
    data = build_data(config.data, root=config.data_root, train_subset=config.train_subset,
                      test_subset=config.test_subset, device=resolve_device(config.device))
    seed = config.seeds[0]
    torch.manual_seed(seed)
    model = new_model(config.model, data)
    methods = [(name, {**dict(config.method_options.get(name, {})), **spec_opts})
               for name, spec_opts in map(parse_method, config.methods)]
    check_targets(model, prepare_config(config), config.targets, methods)  # before the float training
    loaders = data.loaders(batch_size=config.batch_size, held_out_fraction=config.held_out_fraction, seed=seed)
    flt = fit_float_(model, config, loaders["weights"], loaders["test"], device=data.device, progress=progress)
    train_seconds: float | None = flt.seconds
    if config.checkpoint:
        train_seconds = None
        probe = copy.deepcopy(model)
        t0 = time.time()
        fit(probe, loaders["weights"], TrainConfig(epochs=1, lr=config.float_lr), device=data.device)
        epoch_seconds = time.time() - t0
    else:
        epoch_seconds = flt.seconds / max(config.float_epochs, 1)
    return SweepSetup(config, data, flt.state, flt.test_accuracy, epoch_seconds, len(loaders["weights"]), train_seconds)


def run_row(setup: SweepSetup, method: str, target: str | None, seed: int, *, allocator: Allocator | None = None,
            options: Mapping[str, Any] | None = None, progress: bool = False,
            seen: dict[tuple, dict[str, Any]] | None = None, keep_in: Path | None = None) -> dict[str, Any]:
    """One row: allocate from the float weights, fine-tune, evaluate on the test split.

    Args:
        setup: from :func:`prepare_sweep`.
        method: a method spec (``"search"``, ``"uniform:4"``), or any label when ``allocator`` is given.
        target: the size target; None for ``uniform:K`` (the budget is then that assignment's size).
        seed: seeds the model copy, the shuffling, the allocation and the fine-tuning.
        allocator: a function of the AllocationContext used instead of a registered method.
        options: method options (override ``config.method_options[name]``).
        seen: {(seed, bits): row} of the rows run so far; a row whose method trained no weights and fixed
            bits already seen with this seed is that model: the earlier row gets this label in ``also``,
            and a row with ``same_as`` (the earlier row's label) and nothing else is returned.
        keep_in: write the row's fine-tuned model (``finetuned.pt``, ``model.mbits``) in this folder.

    Returns:
        a row with the keys of :data:`ROW_FIELDS` and ``bits``.
    """
    c = setup.config
    row = start_row(c, setup.data, setup.float_state, seed)
    if allocator is None:
        name, spec_opts = parse_method(method)
        opts = {**dict(c.method_options.get(name, {})), **spec_opts, **dict(options or {})}
    else:
        name, opts = method, dict(options or {})
    budget, target_label = _budget(row.space, name, opts, target, method)
    t0 = time.time()
    result = allocate_bits(row, c, name, budget=budget, target=target if target is not None else f"{budget}b",
                           options=opts, allocator=allocator, progress=progress)
    search_seconds = time.time() - t0
    key = (seed, json.dumps(_jsonable(result.bits), sort_keys=True))
    if seen is not None and result.weight_epochs == 0 and key in seen:  # the same model as an earlier row
        first = seen[key]
        first["also"] = ";".join(filter(None, [first.get("also"), f"{method}@{target_label}"]))
        return {"method": method, "target": target_label, "seed": seed, "same_as": f"{first['method']}@{first['target']}"}
    derived = fix_bits_(row, c, result.bits)
    tuned = finetune_and_evaluate(row, c, result.bits, result.weight_epochs, progress=progress)
    s = row.space.cost.summary(result.bits)
    out = {"model": c.model, "method": method, "target": target_label, "seed": seed, "size_bits": s["model_bits"],
           "quantized_bits": s["quantized_bits"], "budget_bits": budget,
           "weight_compression": s["weight_compression"], "model_compression": s["model_compression"],
           "average_bits": s["average_bits"], "derived_accuracy": derived, "test_accuracy": tuned.test_accuracy,
           "float_accuracy": setup.float_accuracy, "weight_epochs": tuned.method_weight_epochs + tuned.epochs,
           "finetune_epochs": tuned.epochs, "distill": bool(c.distill), "search_seconds": search_seconds,
           "finetune_seconds": tuned.seconds, "bits": result.bits, "info": _jsonable(result.info), "also": "",
           "model_file": ""}
    if keep_in is not None:
        keep_in.mkdir(parents=True, exist_ok=True)
        out["model_file"] = export_row(keep_in, row, c, setup.data, result.bits, tuned.test_accuracy)["path"]
    if seen is not None and result.weight_epochs == 0:
        seen[key] = out
    log.info("%s %s seed %d: %.2fx, test accuracy %.4f", method, target_label, seed, out["weight_compression"],
             out["test_accuracy"])
    return out


def _budget(space, name: str, opts: Mapping[str, Any], target: str | None, method: str) -> tuple[int, str]:
    """(the budget in bits, the row's target label): the target's, or that of ``uniform:K``'s assignment."""
    if target is not None:
        return budget_bits(target, space.cost), str(target)
    if name != "uniform" or "bits" not in opts:
        raise ValueError(f"method {method!r} needs a target")
    from ..methods.uniform import uniform_bits

    k = int(opts["bits"])
    return space.cost.quantized_bits(uniform_bits(space, k)), f"{k}bit"


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: tensors and arrays become lists, numbers plain numbers, and anything
    else its ``repr`` (logged), so nothing a method reports is dropped silently."""

    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if hasattr(value, "tolist"):  # numpy arrays and scalars
            return value.tolist()
        if isinstance(value, (set, frozenset)):
            return sorted(value, key=repr)
        log.warning("a row's info holds a %s, written as its repr", type(value).__name__)
        return repr(value)

    return json.loads(json.dumps(obj, default=plain))


SWEEP_FILES = ("sweep.csv", "sweep.json", "pareto.png", "float.pt")


def sweep(config: SweepConfig, *, progress: bool = False, on_row: Callable[[dict[str, Any]], None] | None = None,
          force: bool = False) -> dict[str, Any]:
    """Run every (method, target, seed) from one float model; write the table and the plot.

    The output folder is locked while the sweep runs; one that already holds a sweep
    needs ``force`` (its files are removed first). A folder created here is removed
    again if the sweep fails before writing anything (an unreachable target...).

    Returns:
        {"float_accuracy", "float_epoch_seconds", ..., "rows": [...], "files": {...}}.

    Raises:
        RunFolderBusyError: another process writes the folder.
        ValueError: bad settings, an unreachable target (before the float training), a sweep already in the folder.
    """
    out = Path(config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-sweep-{config.model}")
    lock = claim_run_dir(out, markers=SWEEP_FILES, outputs=SWEEP_FILES, force=force)
    if force:
        shutil.rmtree(out / "rows", ignore_errors=True)  # the kept models of the sweep being replaced
    failed = True
    try:
        result = _sweep(config, out, progress=progress, on_row=on_row)
        failed = False
        return result
    finally:
        lock.release(remove_empty_folder=failed)


def _sweep(config: SweepConfig, out: Path, *, progress: bool,
           on_row: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    setup = prepare_sweep(config, progress=progress)
    if not config.checkpoint:
        save_checkpoint(out / "float.pt", trained_float_checkpoint(config, setup.data, setup.float_state,
                                                                   setup.float_accuracy))
    jobs: list[tuple[str, str | None]] = []
    for m in config.methods:
        if ":" in m:
            jobs.append((m, None))
        else:
            jobs.extend((m, t) for t in config.targets)
    if config.binary_point and 1 in config.candidates and "uniform:1" not in config.methods:
        jobs.append(("uniform:1", None))
    rows, seen = [], {}
    for method, target in jobs:
        for seed in config.seeds:
            keep = out / "rows" / _slug(f"{method}-{target or 'point'}-seed{seed}") if config.keep_models else None
            row = run_row(setup, method, target, seed, progress=progress, seen=seen, keep_in=keep)
            if "same_as" not in row:
                rows.append(row)
            if on_row is not None:
                on_row(row)
    result = summary(setup, rows)
    result["settings"] = {**asdict(config), "pins": dict(config.pins),
                          "method_options": {k: dict(v) for k, v in config.method_options.items()}}
    result["files"] = write_table(result, out)
    if config.plot:
        plot_pareto(rows, out / "pareto.png", float_accuracy=setup.float_accuracy,
                    title=f"{config.model} on {config.data}")
        result["files"]["png"] = str(out / "pareto.png")
    return result


def _slug(text: str) -> str:
    """A folder name for a row label (``uniform:2-point-seed0`` -> ``uniform_2-point-seed0``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def summary(setup: SweepSetup, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's shared figures and its rows, as a JSON-ready dict."""
    return {"model": setup.config.model, "data": setup.config.data, "float_accuracy": setup.float_accuracy,
            "float_epoch_seconds": setup.float_epoch_seconds, "float_steps_per_epoch": setup.float_steps_per_epoch,
            "float_train_seconds": setup.float_train_seconds, "device": str(setup.device), "rows": rows}


def write_table(result: Mapping[str, Any], out: str | Path, stem: str = "sweep") -> dict[str, str]:
    """Write ``<stem>.csv`` (the :data:`ROW_FIELDS` columns) and ``<stem>.json`` (everything)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / f"{stem}.csv", out / f"{stem}.json"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in result["rows"]:
            w.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in ROW_FIELDS})
    write_json(json_path, dict(result))
    return {"csv": str(csv_path), "json": str(json_path)}


# The same method keeps its colour across plots; other labels take matplotlib's cycle.

def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | Path, *, float_accuracy: float | None = None,
                title: str = "") -> Path:
    """Test accuracy against weight compression (log x), one line per method (mean and spread over seeds).

    Rows of ``uniform:K`` join the ``uniform`` line; the all-binary row (``uniform:1``) is marked.

    Raises:
        ImportError: matplotlib is missing (``pip install mixbits[plot]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the Pareto plot needs matplotlib: pip install 'mixbits[plot]'") from exc
    groups: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for r in rows:
        base = str(r["method"]).split(":")[0]
        key = str(r["method"]) + "@" + str(r["target"])
        k = (r.get("info") or {}).get("bits") if base == "uniform" else None
        if isinstance(k, int):  # "uniform" at a target and "uniform:K" are the same point
            key = f"uniform:{k}"
        groups.setdefault(base, {}).setdefault(key, []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    lines = []
    for base, points in groups.items():
        xs, ys, es = [], [], []
        for pts in points.values():
            xs.append(statistics.fmean(p["weight_compression"] for p in pts))
            m, s = _mean_std([100 * p["test_accuracy"] for p in pts])
            ys.append(m)
            es.append(s)
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        lines.append((base, [xs[i] for i in order], [ys[i] for i in order], [es[i] for i in order]))
    # A collapsed run (e.g. 10% on 10 classes) would flatten every other line: keep the y axis within
    # 25 points of the best accuracy and mark what falls below at the bottom edge.
    best = max([y for _, _, ys, _ in lines for y in ys] + ([100 * float_accuracy] if float_accuracy else []))
    shown = [y for _, _, ys, _ in lines for y in ys if y >= best - 25]
    floor = min(shown) - 1.0 if shown else best - 25
    for base, xs, ys, es in lines:
        line = ax.errorbar(xs, [max(y, floor) for y in ys], yerr=es, marker="o", ms=4, capsize=3, label=base,
                           color=method_color(base, list(groups)))
        for x, y in zip(xs, ys):
            if y < floor:
                ax.annotate(f"{base} {y:.1f}%", (x, floor), xytext=(0, 6), textcoords="offset points", fontsize=7,
                            ha="center", color=line[0].get_color())
    binary = [r for r in rows if r["method"] == "uniform:1"]
    if binary:
        x = statistics.fmean(r["weight_compression"] for r in binary)
        y = statistics.fmean(100 * r["test_accuracy"] for r in binary)
        ax.plot([x], [y], marker="*", ms=14, color="black", ls="none", label="all binary (1 bit)")
    if float_accuracy is not None:
        ax.axhline(100 * float_accuracy, color="grey", ls="--", lw=1, label=f"float ({100 * float_accuracy:.2f}%)")
    ax.set_ylim(bottom=floor - 0.5)
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (1, 2, 4, 8, 12, 16, 24, 32) if lo <= t <= hi]
    ax.set_xticks(ticks, [f"{t}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weight compression (x, log scale)")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
