"""Several targets and methods in one run, from one float checkpoint: a table and a Pareto plot.

:func:`sweep` trains the float model once (or loads ``checkpoint``), then for
every method, target and seed: a fresh copy of the float weights, the method's
allocation under the exact budget, fine-tuning for the same epochs, test
accuracy. Every row is sized by the one cost model. It writes, in ``out``:

- ``sweep.csv`` / ``sweep.json``  one row per (method, target, seed);
- ``pareto.png``                  test accuracy against weight compression (needs matplotlib);
- ``float.pt``                    the float checkpoint, when trained here.

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
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .budget import budget_bits, parse_target
from .data import TensorDataset, TensorLoader, load_dataset, split_held_out, take_train_subset
from .finetune import finetune_
from .methods import METHODS, Allocation, AllocationContext, allocate
from .models import create_model
from .plots import method_color
from .run import load_float_state, resolve_device
from .runfiles import claim_run_dir, save_checkpoint, write_json
from .space import DEFAULT_CANDIDATES, PrepareConfig, prepare_
from .train import TrainConfig, evaluate, fit, recalibrate_bn_

__all__ = ["SweepConfig", "SweepSetup", "sweep", "prepare_sweep", "run_row", "write_table", "plot_pareto",
           "parse_method", "ROW_FIELDS"]

log = logging.getLogger(__name__)

ROW_FIELDS = ("model", "method", "target", "seed", "size_bits", "quantized_bits", "budget_bits", "weight_compression",
              "model_compression", "average_bits", "derived_accuracy", "test_accuracy", "float_accuracy",
              "weight_epochs", "finetune_epochs", "distill", "search_seconds", "finetune_seconds")

Allocator = Callable[[AllocationContext], Allocation]


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Settings of ``mixbits sweep`` (the run settings of ``mixbits search``, with lists).

    Attributes:
        methods: method names, or ``uniform:K`` for every layer at K bits.
        targets: size targets, e.g. ("8x", "16x", "24x", "28x").
        seeds: seeds; every (method, target) runs once per seed.
        method_options: {method name: {option: value}}.
        train_subset, test_subset: use only this many (seeded, random) samples, for quick runs.
        finetune_from: ``"method"``: fine-tune the weights the method hands over (the search's
            trained weights, as ``mixbits search`` does); ``"float"``: every row starts fine-tuning
            from the same float weights, so rows differ only by their bits.
        compute_matched: every row gets the same number of weight-update epochs after the float
            checkpoint, ``search_epochs + finetune_epochs``: a method that trains no weights while it
            allocates (all but ``search``) is fine-tuned that much longer.
        binary_point: also fine-tune the all-binary model (``uniform:1``), marked on the plot.
        plot: write ``pareto.png`` (needs matplotlib: ``pip install mixbits[plot]``).
    """

    data: str = "digits"
    data_root: str | None = None
    model: str = "digits_cnn"
    methods: tuple[str, ...] = ("search", "hessian", "random", "uniform")
    targets: tuple[str, ...] = ("8x", "16x", "24x", "28x")
    seeds: tuple[int, ...] = (0,)
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    float_epochs: int = 30
    search_epochs: int = 10
    finetune_epochs: int = 10
    batch_size: int = 64
    float_lr: float = 0.05
    finetune_lr: float = 0.01
    held_out_fraction: float = 0.2
    distill: bool = True
    train_subset: int | None = None
    test_subset: int | None = None
    finetune_from: str = "method"
    compute_matched: bool = True
    binary_point: bool = True
    plot: bool = True
    device: str = "auto"
    out: str | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        for name in ("methods", "targets", "seeds", "candidates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"sweep: {name} is empty; give at least one")
        for t in self.targets:
            parse_target(t)
        for m in self.methods:
            parse_method(m)
        if self.search_epochs < 2:
            raise ValueError(f"search_epochs must be >= 2, got {self.search_epochs}")
        for name in ("float_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.finetune_from not in ("method", "float"):
            raise ValueError(f"finetune_from must be 'method' or 'float', got {self.finetune_from!r}")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ValueError(f"{name} must be >= 2 samples, got {v}")


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"uniform:4"`` -> ("uniform", {"bits": 4}); ``"hessian"`` -> ("hessian", {}).

    Raises:
        ValueError: an unknown method or a malformed ``uniform:K``.
    """
    name, sep, arg = str(spec).partition(":")
    METHODS.get(name)
    if not sep:
        return name, {}
    if name != "uniform":
        raise ValueError(f"method {spec!r}: only uniform takes an argument (uniform:K, K bits)")
    try:
        return name, {"bits": int(arg)}
    except ValueError:
        raise ValueError(f"method {spec!r}: write uniform:K with K an integer number of bits") from None


@dataclass
class SweepSetup:
    """What every row shares: the data, the float weights and the settings."""

    config: SweepConfig
    data: TensorDataset
    device: torch.device
    model_kwargs: dict[str, int]
    float_state: dict[str, torch.Tensor]
    float_accuracy: float
    float_epoch_seconds: float
    float_steps_per_epoch: int
    float_train_seconds: float | None

    def new_model(self) -> nn.Module:
        """A fresh model holding the float weights, on the device."""
        model = create_model(self.config.model, **self.model_kwargs)
        model.load_state_dict(self.float_state)
        return model.to(self.device)

    def loaders(self, seed: int) -> dict[str, TensorLoader]:
        """{"full", "weights", "held_out", "test"}; the held-out split is fixed, the shuffling follows ``seed``."""
        ds, c = self.data, self.config
        w_idx, h_idx = split_held_out(len(ds.train_y), c.held_out_fraction, 0)
        common = dict(batch_size=c.batch_size, mean=ds.mean, std=ds.std, device=self.device)
        aug = ds.augment
        return {
            "full": TensorLoader(ds.train_x, ds.train_y, shuffle=True, augment=aug, seed=seed, drop_last=True, **common),
            "weights": TensorLoader(ds.train_x[w_idx], ds.train_y[w_idx], shuffle=True, augment=aug, seed=seed + 1,
                                    drop_last=True, **common),
            "held_out": TensorLoader(ds.train_x[h_idx], ds.train_y[h_idx], shuffle=True, augment=aug, seed=seed + 2,
                                     drop_last=True, **common),
            "test": TensorLoader(ds.test_x, ds.test_y, shuffle=False, **{**common, "batch_size": 512}),
        }


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def prepare_sweep(config: SweepConfig, *, progress: bool = False) -> SweepSetup:
    """Load the data, then train the float model once (or load ``config.checkpoint``) and time a float epoch."""
    device = resolve_device(config.device)
    ds = load_dataset(config.data, root=config.data_root)
    if config.train_subset is not None:  # the same seeded subset as `mixbits search --train-subset`
        ds = take_train_subset(ds, min(config.train_subset, len(ds.train_y)))
    vx, vy = _subset(ds.test_x, ds.test_y, config.test_subset, 4321)
    ds = replace(ds, test_x=vx, test_y=vy)
    model_kwargs = {"in_channels": ds.input_shape[0], "num_classes": ds.num_classes, "input_size": ds.input_shape[1]}
    torch.manual_seed(config.seeds[0])
    model = create_model(config.model, **model_kwargs).to(device)
    probe = prepare_(copy.deepcopy(model), PrepareConfig(candidates=config.candidates))
    for target in config.targets:  # an unreachable target fails here, before the float training
        budget_bits(target, probe.cost)
    setup = SweepSetup(config, ds, device, model_kwargs, {}, 0.0, 0.0, 0, None)
    loaders = setup.loaders(config.seeds[0])
    steps = len(loaders["full"])
    recipe = TrainConfig(epochs=config.float_epochs, lr=config.float_lr, warmup_epochs=1)
    if config.checkpoint:
        load_float_state(model, config.checkpoint)
        # Time one float epoch on a copy, for the search-cost ratios.
        probe = copy.deepcopy(model)
        t0 = time.time()
        fit(probe, loaders["full"], TrainConfig(epochs=1, lr=config.float_lr), device=device)
        setup.float_epoch_seconds = time.time() - t0
    else:
        t0 = time.time()
        fit(model, loaders["full"], recipe, device=device, progress=progress, desc="float")
        setup.float_train_seconds = time.time() - t0
        setup.float_epoch_seconds = setup.float_train_seconds / max(config.float_epochs, 1)
    setup.float_steps_per_epoch = steps
    setup.float_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    setup.float_accuracy = evaluate(model, loaders["test"], device=device)
    log.info("float test accuracy %.4f", setup.float_accuracy)
    return setup


def run_row(setup: SweepSetup, method: str, target: str | None, seed: int, *, allocator: Allocator | None = None,
            options: Mapping[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """One row: allocate from the float weights, fine-tune, evaluate on the test split.

    Args:
        setup: from :func:`prepare_sweep`.
        method: a method spec (``"search"``, ``"uniform:4"``), or any label when ``allocator`` is given.
        target: the size target; None for ``uniform:K`` (the budget is then that assignment's size).
        seed: seeds the allocation, the shuffling and the fine-tuning.
        allocator: a function of the AllocationContext used instead of a registered method.
        options: method options (override ``config.method_options[name]``).

    Returns:
        a row with the keys of :data:`ROW_FIELDS` and ``bits``.
    """
    c = setup.config
    torch.manual_seed(seed)
    model = setup.new_model()
    teacher = copy.deepcopy(model).eval() if c.distill else None
    space = prepare_(model, PrepareConfig(candidates=c.candidates))
    if allocator is None:
        name, spec_opts = parse_method(method)
        opts = {**dict(c.method_options.get(name, {})), **spec_opts, **dict(options or {})}
    else:
        name, opts = method, dict(options or {})
    if target is None:
        if name != "uniform" or "bits" not in opts:
            raise ValueError(f"method {method!r} needs a target")
        from .methods.uniform import uniform_bits

        budget = space.cost.quantized_bits(uniform_bits(space, int(opts["bits"])))
        target_label = f"{int(opts['bits'])}bit"
    else:
        budget = budget_bits(target, space.cost)
        target_label = str(target)
    loaders = setup.loaders(seed)
    ctx = AllocationContext(model=model, space=space, loaders=loaders, budget_bits=budget,
                            target=target if target is not None else f"{budget}b", epochs=c.search_epochs, seed=seed,
                            device=setup.device, teacher=teacher, progress=progress, options=opts)
    t0 = time.time()
    result = allocator(ctx) if allocator is not None else allocate(name, ctx)
    search_seconds = time.time() - t0
    bits = {k: int(v) for k, v in result.bits.items()}
    size = space.cost.quantized_bits(bits)
    if size > budget:
        raise RuntimeError(f"{method} returned {size} bits, over the budget of {budget} bits")
    if c.finetune_from == "float":
        model.load_state_dict(setup.float_state)
    method_epochs = float(result.weight_epochs) if c.finetune_from == "method" else 0.0
    ft_epochs = c.finetune_epochs
    if c.compute_matched:
        ft_epochs = max(0, round(c.search_epochs + c.finetune_epochs - method_epochs))
    space.fix_(bits)
    recalibrate_bn_(model, loaders["full"], device=setup.device)
    derived = evaluate(model, loaders["test"], device=setup.device)
    t0 = time.time()
    finetune_(model, space, bits, loaders["full"],
              TrainConfig(epochs=ft_epochs, lr=c.finetune_lr, distill_weight=0.5 if c.distill else 0.0),
              device=setup.device, teacher=teacher, progress=progress)
    recalibrate_bn_(model, loaders["full"], device=setup.device)
    finetune_seconds = time.time() - t0
    s = space.cost.summary(bits)
    row = {"model": c.model, "method": method, "target": target_label, "seed": seed, "size_bits": s["model_bits"],
           "quantized_bits": s["quantized_bits"], "budget_bits": budget,
           "weight_compression": s["weight_compression"], "model_compression": s["model_compression"],
           "average_bits": s["average_bits"], "derived_accuracy": derived,
           "test_accuracy": evaluate(model, loaders["test"], device=setup.device),
           "float_accuracy": setup.float_accuracy, "weight_epochs": method_epochs + ft_epochs,
           "finetune_epochs": ft_epochs, "distill": bool(c.distill), "search_seconds": search_seconds, "finetune_seconds": finetune_seconds, "bits": bits,
           "info": _jsonable(result.info)}
    log.info("%s %s seed %d: %.2fx, test accuracy %.4f", method, target_label, seed, row["weight_compression"],
             row["test_accuracy"])
    return row


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return {}


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
        save_checkpoint(out / "float.pt", {"model": config.model, "model_kwargs": setup.model_kwargs,
                                           "data": config.data, "state_dict": setup.float_state,
                                           "test_accuracy": setup.float_accuracy})
    jobs: list[tuple[str, str | None]] = []
    for m in config.methods:
        if ":" in m:
            jobs.append((m, None))
        else:
            jobs.extend((m, t) for t in config.targets)
    if config.binary_point and 1 in config.candidates and "uniform:1" not in config.methods:
        jobs.append(("uniform:1", None))
    rows = []
    for method, target in jobs:
        for seed in config.seeds:
            row = run_row(setup, method, target, seed, progress=progress)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    result = summary(setup, rows)
    result["settings"] = {**asdict(config), "method_options": {k: dict(v) for k, v in config.method_options.items()}}
    result["files"] = write_table(result, out)
    if config.plot:
        plot_pareto(rows, out / "pareto.png", float_accuracy=setup.float_accuracy,
                    title=f"{config.model} on {config.data}")
        result["files"]["png"] = str(out / "pareto.png")
    return result


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
