"""Stage 3, the allocation: a fresh row from the float weights, a method's bits, the bits fixed.

A row is what one (method, target, seed) works on: a new model holding the float
weights, its BitSpace, the float teacher and fresh loaders seeded by the row's
seed. The method's bits are checked against the budget, then fixed; the
BatchNorm statistics are re-estimated for the fixed bits before the derived
model is evaluated. What follows the allocation (the BatchNorm re-estimation,
the fine-tuning) starts from the random streams the row started with
(:func:`rewind_streams_`), so equal bits and seed give an equal model whatever
the method read before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..data import TensorLoader
from ..methods import Allocation, AllocationContext, allocate
from ..space import BitSpace, PrepareConfig, prepare_
from ..train import BN_BATCHES, evaluate, load_loader_state, loader_state, recalibrate_bn_, rng_state, set_rng_state
from .config import Settings, loss_function
from .data import Data
from .float_model import new_model

__all__ = ["Row", "start_row", "rewind_streams_", "prepare_config", "allocate_bits", "fix_bits_"]

Allocator = Callable[[AllocationContext], Allocation]


@dataclass
class Row:
    """What one allocation and its fine-tuning work on."""

    model: nn.Module
    space: BitSpace
    teacher: nn.Module | None
    loaders: dict[str, TensorLoader]
    seed: int
    float_state: Mapping[str, torch.Tensor]
    device: torch.device
    streams: dict[str, Any] | None = None  # the loaders' and torch's RNG states when the row started


def prepare_config(settings: Settings) -> PrepareConfig:
    """The model surgery the settings ask for (candidates, pins, excluded layers, extra parameters)."""
    return PrepareConfig(candidates=settings.candidates, pins=settings.pins, exclude=settings.exclude,
                         params=settings.params, granularity=settings.granularity)


def start_row(settings: Settings, data: Data, float_state: Mapping[str, torch.Tensor], seed: int) -> Row:
    """A fresh model with the float weights, prepared, with its teacher and loaders seeded by ``seed``."""
    torch.manual_seed(seed)
    model = new_model(settings.model, data, float_state)
    teacher = copy.deepcopy(model).eval() if settings.distill else None
    space = prepare_(model, prepare_config(settings))
    loaders = data.loaders(batch_size=settings.batch_size, held_out_fraction=settings.held_out_fraction, seed=seed)
    if settings.calibration is not None:  # the allocation reads only the first N images of the held-out split
        _, held = data.held_out_split(settings.held_out_fraction)
        loaders["held_out"] = data.train_loader(settings.batch_size, seed + 2, held[:settings.calibration])
    streams = {"loaders": {name: loader_state(loader) for name, loader in loaders.items()},
               "rng": rng_state(data.device)}
    return Row(model, space, teacher, loaders, seed, float_state, data.device, streams)


def rewind_streams_(row: Row) -> None:
    """Put the row's loaders (order, augmentation) and torch's RNG back where :func:`start_row` left them.

    Called before what follows an allocation, so its BatchNorm batches and fine-tuning stream depend
    on the bits and the seed only, not on how many batches the method happened to read. A row built
    without recorded streams is left as it is.
    """
    if row.streams is None:
        return
    for name, loader in row.loaders.items():
        load_loader_state(loader, row.streams["loaders"].get(name))
    set_rng_state(row.streams["rng"])


def allocate_bits(row: Row, settings: Settings, method: str, *, budget: int, target: str,
                  options: Mapping[str, Any] | None = None, allocator: Allocator | None = None,
                  progress: bool = False, resume: Mapping[str, Any] | None = None,
                  on_checkpoint: Callable[[dict], None] | None = None) -> Allocation:
    """Run the method ``method`` (or ``allocator``) on the row; the bits it returns, in canonical form
    (ints, one tuple per layer with structures).

    Raises:
        RuntimeError: the method returned bits over the budget.
    """
    ctx = AllocationContext(model=row.model, space=row.space, loaders=row.loaders, budget_bits=budget, target=target,
                            epochs=settings.search_epochs, seed=row.seed, device=row.device,
                            teacher=row.teacher, progress=progress, options=dict(options or {}), resume=resume,
                            on_checkpoint=on_checkpoint, loss_fn=loss_function(settings),
                            post_training=settings.post_training, calibration=settings.calibration)
    result = allocator(ctx) if allocator is not None else allocate(method, ctx)
    result.bits = row.space.cost.normalize(result.bits)
    size = row.space.cost.quantized_bits(result.bits)
    if size > budget:
        raise RuntimeError(f"{method} returned {size} bits, over the budget of {budget} bits")
    return result


def fix_bits_(row: Row, settings: Settings, bits: Mapping[str, int]) -> float:
    """Fix the row's model at ``bits`` (from the float weights with ``finetune_from="float"``); its test accuracy.

    The BatchNorm statistics are re-estimated on training batches first (at most ``settings.calibration``
    images of them when that is set), from the row's starting streams (:func:`rewind_streams_`). With
    ``post_training`` the weights are always the float ones.
    """
    if settings.finetune_from == "float" or settings.post_training:
        row.model.load_state_dict(row.float_state)
    row.space.fix_(bits)
    rewind_streams_(row)
    batches = BN_BATCHES
    if settings.calibration is not None:
        batches = max(1, min(BN_BATCHES, settings.calibration // settings.batch_size))
    recalibrate_bn_(row.model, row.loaders["full"], device=row.device, batches=batches)
    with torch.no_grad():
        return evaluate(row.model, row.loaders["test"], device=row.device)
