"""The whole job behind ``mixbits search``: data -> float model -> search -> fine-tune -> report.

:func:`run_search` validates everything (data set, model, pins, target) before
any training, then runs the stages through the same public functions a Python
user calls, and writes the run folder:

- ``settings.json``  the resolved settings;
- ``float.pt``       the float checkpoint (when trained here);
- ``bits.json``      {layer name: bits};
- ``search.json``    the method's per-epoch history (expected size, multiplier, probabilities);
- ``report.json`` / ``report.md``  per-layer table, totals, accuracies;
- ``finetuned.pt``   the fine-tuned weights with their bits.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .budget import budget_bits, parse_target
from .data import TensorLoader, load_dataset, split_held_out
from .finetune import finetune_
from .models import create_model
from .report import build_report, format_table, to_markdown
from .runfiles import load_checkpoint, prepare_run_dir, save_checkpoint, write_json, write_text
from .methods import METHODS, AllocationContext, allocate
from .space import DEFAULT_CANDIDATES, PrepareConfig, prepare_
from .train import TrainConfig, evaluate, fit

__all__ = ["RunConfig", "run_search", "resolve_device", "load_float_state"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every setting of a ``mixbits search`` run (the CLI options)."""

    data: str = "digits"
    data_root: str | None = None
    model: str = "digits_cnn"
    method: str = "search"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    target: str = "24x"
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    pins: Mapping[str, int] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    float_epochs: int = 30
    search_epochs: int = 10
    finetune_epochs: int = 10
    batch_size: int = 64
    float_lr: float = 0.05
    finetune_lr: float = 0.01
    held_out_fraction: float = 0.2
    distill: bool = True
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        parse_target(self.target)
        for name in ("float_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.search_epochs < 2:
            raise ValueError(f"search_epochs must be >= 2 (one warm-up epoch, then the search), got {self.search_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is checked.

    Raises:
        ValueError: an unknown or unavailable device.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} asked for but MPS is not available here; use --device cpu or auto")
    return dev


def load_float_state(model: torch.nn.Module, path: str | Path) -> dict:
    """Load a float checkpoint (``float.pt`` of a run, or a plain state_dict) into ``model``.

    Raises:
        FileNotFoundError, ValueError: missing file, or weights that do not fit the model.
    """
    obj = load_checkpoint(path)
    state = obj.get("state_dict", obj)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ValueError(f"checkpoint {str(path)!r} does not fit the model: {' '.join(first)}") from None
    return obj


def _loaders(ds, config: RunConfig, device: torch.device) -> dict[str, TensorLoader]:
    w_idx, h_idx = split_held_out(len(ds.train_y), config.held_out_fraction, config.seed)
    common = dict(batch_size=config.batch_size, mean=ds.mean, std=ds.std, device=device)
    aug = ds.augment
    return {
        "full": TensorLoader(ds.train_x, ds.train_y, shuffle=True, augment=aug, seed=config.seed, drop_last=True, **common),
        "weights": TensorLoader(ds.train_x[w_idx], ds.train_y[w_idx], shuffle=True, augment=aug, seed=config.seed + 1,
                                drop_last=True, **common),
        "held_out": TensorLoader(ds.train_x[h_idx], ds.train_y[h_idx], shuffle=True, augment=aug, seed=config.seed + 2,
                                 drop_last=True, **common),
        "test": TensorLoader(ds.test_x, ds.test_y, shuffle=False, **{**common, "batch_size": 512}),
    }


def run_search(config: RunConfig, *, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Run the whole job and write the run folder; returns the report dict.

    Raises:
        ValueError: bad settings (unknown data set/model, unreachable target, unknown
            pin pattern, unwritable folder), raised before any training.
        NonFiniteLossError: training diverged (the last good state is kept).
    """
    t_start = time.time()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    ds = load_dataset(config.data, root=config.data_root)
    model_kwargs = {"in_channels": ds.input_shape[0], "num_classes": ds.num_classes, "input_size": ds.input_shape[1]}
    model = create_model(config.model, **model_kwargs)
    METHODS.get(config.method)  # an unknown method fails here, before any training
    prep = PrepareConfig(candidates=config.candidates, pins=config.pins, exclude=config.exclude)
    # Validate pins, excludes and the target on a throwaway copy before any training.
    probe_space = prepare_(copy.deepcopy(model), prep)
    budget = budget_bits(config.target, probe_space.cost)
    out = prepare_run_dir(config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{config.target}")
    settings = {**asdict(config), "candidates": list(config.candidates), "pins": dict(config.pins),
                "method_options": dict(config.method_options),
                "exclude": list(config.exclude), "out": str(out), "device_resolved": str(device)}
    write_json(out / "settings.json", settings)
    loaders = _loaders(ds, config, device)
    model.to(device)

    # 1. float model
    t0 = time.time()
    if config.checkpoint:
        load_float_state(model, config.checkpoint)
        log.info("loaded float checkpoint %s", config.checkpoint)
    else:
        fit(model, loaders["full"], TrainConfig(epochs=config.float_epochs, lr=config.float_lr, warmup_epochs=1),
            device=device, progress=progress, desc="float")
    float_time = time.time() - t0
    float_acc = evaluate(model, loaders["test"], device=device)
    if not config.checkpoint:
        save_checkpoint(out / "float.pt", {"model": config.model, "model_kwargs": model_kwargs, "data": config.data,
                                           "state_dict": model.state_dict(), "test_accuracy": float_acc})
    log.info("float test accuracy %.4f", float_acc)
    teacher = copy.deepcopy(model).eval() if config.distill else None

    # 2. allocate the bits (the differentiable search by default)
    t0 = time.time()
    space = prepare_(model, prep)
    result = allocate(config.method, AllocationContext(
        model=model, space=space, loaders=loaders, budget_bits=budget, target=config.target,
        epochs=config.search_epochs, seed=config.seed, device=device, teacher=teacher, progress=progress,
        options=config.method_options))
    search_time = time.time() - t0
    write_json(out / "bits.json", result.bits)
    write_json(out / "search.json", {"method": config.method, "budget_bits": budget, "info": result.info,
                                     "history": result.history})
    space.fix_(result.bits)
    derived_acc = evaluate(model, loaders["test"], device=device)

    # 3. fine-tune at the derived bits
    t0 = time.time()
    finetune_(model, space, result.bits, loaders["full"],
              TrainConfig(epochs=config.finetune_epochs, lr=config.finetune_lr,
                          distill_weight=0.5 if config.distill else 0.0),
              device=device, teacher=teacher, progress=progress)
    finetune_time = time.time() - t0
    final_acc = evaluate(model, loaders["test"], device=device)
    save_checkpoint(out / "finetuned.pt", {"model": config.model, "model_kwargs": model_kwargs, "data": config.data,
                                           "data_root": config.data_root, "bits": result.bits,
                                           "candidates": list(config.candidates), "state_dict": model.state_dict(),
                                           "test_accuracy": final_acc})

    report = build_report(
        space, result.bits, method=config.method, target=config.target, budget_bits=budget,
        float_test_accuracy=float_acc,
        derived_test_accuracy=derived_acc, final_test_accuracy=final_acc, model=config.model, data=config.data,
        seconds={"float": round(float_time, 2), "search": round(search_time, 2), "finetune": round(finetune_time, 2),
                 "total": round(time.time() - t_start, 2)},
        device=str(device), run_folder=str(out), **({"command": command} if command else {}))
    write_json(out / "report.json", report)
    write_text(out / "report.md", to_markdown(report))
    return report



