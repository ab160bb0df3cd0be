"""Stage 2, the float model: build it, check the targets on it, train it (or load a checkpoint).

A float checkpoint (``float.pt``) is the same dict whichever command wrote it:
model, model_kwargs, data, state_dict, test_accuracy.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .. import distributed
from ..budget import budget_bits
from ..methods.base import preflight
from ..models import create_model
from ..runfiles import load_checkpoint
from ..space import PrepareConfig, prepare_
from ..train import TrainConfig, evaluate, fit
from .config import Settings
from .data import Data

__all__ = ["FloatModel", "resolve_device", "new_model", "check_targets", "fit_float_", "load_float_state",
           "held_out_unseen", "float_checkpoint", "trained_float_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class FloatModel:
    """The float stage's outcome: weights, test accuracy, training history and training time (s)."""

    state: dict[str, torch.Tensor]
    test_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is checked.

    Raises:
        ValueError: an unknown or unavailable device.
    """
    mps = getattr(torch.backends, "mps", None)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (mps and mps.is_available()):
        raise ValueError(f"device {name!r} asked for but MPS is not available here; use --device cpu or auto")
    return dev


def new_model(name: str, data: Data, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A fresh model ``name`` that fits ``data`` (holding ``state`` when given), on the data's device.

    Under several GPU ranks its BatchNorm layers average over the global batch (SyncBatchNorm).

    Raises:
        ValueError: an unknown model name.
    """
    model = _sync_batchnorm(create_model(name, **data.model_kwargs), data.device)
    if state is not None:
        model.load_state_dict(state)
    return model.to(data.device)


def check_targets(model: nn.Module, prep: PrepareConfig, targets: Iterable[str],
                  methods: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> list[int]:
    """The budget of every target, on a throwaway prepared copy of ``model`` (nothing trains); with
    ``methods`` ((method name, its options) pairs) each method's own pre-flight check at every budget too
    (:func:`mixbits.methods.base.preflight`).

    Raises:
        ValueError: an unknown pin pattern, an unreachable target, or a method's refusal.
    """
    probe = prepare_(copy.deepcopy(model), prep)
    budgets = [budget_bits(t, probe.cost) for t in targets]
    for name, options in methods:
        for budget in budgets:
            preflight(name, probe, budget, options)
    return budgets


def fit_float_(model: nn.Module, settings: Settings, loader: Iterable, test_loader: Iterable, *,
               device: torch.device, progress: bool = False, resume: Mapping[str, Any] | None = None,
               on_checkpoint: Callable[[dict], None] | None = None) -> FloatModel:
    """Train ``model`` in place with the float recipe (or load ``settings.checkpoint``), then evaluate it.

    ``loader`` is the training split without its held-out part (the pipeline's ``weights`` loader), so
    the held-out losses that rank allocations are measured on images the float model never saw. A
    loaded checkpoint that does not record having left out this run's held-out part
    (:func:`held_out_unseen`) gets a warning saying so.

    ``resume`` and ``on_checkpoint`` continue an interrupted training exactly (see :func:`mixbits.fit`).

    Raises:
        FileNotFoundError, ValueError: a missing checkpoint, or one that does not fit the model.
    """
    t0 = time.time()
    history: list[dict] = []
    if settings.checkpoint:
        record = load_float_state(model, settings.checkpoint)
        log.info("loaded float checkpoint %s", settings.checkpoint)
        if not held_out_unseen(record, settings):
            log.warning("the float checkpoint %s does not record leaving out the held-out part of the training "
                        "split (held_out_fraction %g%s) that ranks allocations: if it was trained on those images, "
                        "the held-out losses reward keeping what it memorised rather than what generalises. "
                        "`mixbits train` leaves that part out (its checkpoints record it)", settings.checkpoint,
                        settings.held_out_fraction,
                        "" if settings.train_subset is None else f" of a {settings.train_subset}-image subset")
    else:
        history = fit(model, loader, TrainConfig(epochs=settings.float_epochs, lr=settings.float_lr, warmup_epochs=1),
                      device=device, progress=progress, desc="float", resume=resume, on_checkpoint=on_checkpoint)
    seconds = time.time() - t0
    accuracy = evaluate(model, test_loader, device=device)
    log.info("float test accuracy %.4f", accuracy)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return FloatModel(state, accuracy, history, seconds)


def load_float_state(model: nn.Module, path: str | Path) -> dict:
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


def held_out_unseen(record: Mapping[str, Any], settings: Settings) -> bool:
    """Whether a float checkpoint's record says it was trained without the held-out part that ``settings``
    scores allocations on: the same ``held_out_fraction`` of the same ``train_subset`` (the split is fixed
    by both), on the same data set."""
    return (record.get("held_out_fraction") == settings.held_out_fraction
            and record.get("train_subset") == settings.train_subset and record.get("data") == settings.data)


def float_checkpoint(model_name: str, data_name: str, data: Data, state: Mapping[str, torch.Tensor],
                     test_accuracy: float, **extra: Any) -> dict[str, Any]:
    """The ``float.pt`` dict every command writes (``extra`` keys added)."""
    return {"model": model_name, "model_kwargs": data.model_kwargs, "data": data_name, **extra,
            "state_dict": dict(state), "test_accuracy": test_accuracy}


def trained_float_checkpoint(settings: Settings, data: Data, state: Mapping[str, torch.Tensor],
                             test_accuracy: float) -> dict[str, Any]:
    """The ``float.pt`` of a float model :func:`fit_float_` trained under ``settings``: it records the held-out
    part it left out, as :func:`held_out_unseen` reads it."""
    return float_checkpoint(settings.model, settings.data, data, state, test_accuracy,
                            held_out_fraction=settings.held_out_fraction, train_subset=settings.train_subset)


def _sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    if not distributed.is_distributed():
        return model
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if has_bn:
        log.warning("BatchNorm statistics are per rank on %s (SyncBatchNorm needs GPUs): the result differs "
                    "slightly from a one-process run with the same global batch", device.type)
    return model
