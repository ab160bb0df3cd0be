"""The method registry and the data passed to and from a method."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..registry import Registry
from ..space import BitSpace

__all__ = ["AllocationContext", "Allocation", "METHODS", "DEFAULT_METHOD", "DEFAULT_POST_TRAINING_METHOD",
           "require_layer_granularity",
           "register_method", "allocate", "method_options", "check_options", "preflight", "run_isolated"]

# What `mixbits search`, `mixbits.allocate` and RunConfig use unless told otherwise when fine-tuning
# follows: the winner of the one-epoch fine-tuning regime of benchmarks/results/allocation_quality.md
# (`hessian` before; the compute-matched comparison, benchmarks/results/compare_fair.md, ran with it).
DEFAULT_METHOD = "probe"
# Without fine-tuning (post-training): the winner of the post-training regime of
# benchmarks/results/allocation_quality.md (`probe` ranks its candidates on the float weights there;
# `evolution` before).
DEFAULT_POST_TRAINING_METHOD = "probe"


@dataclass
class AllocationContext:
    """Everything a method may use.

    Attributes:
        model: the prepared model, holding the float weights.
        space: its BitSpace.
        loaders: {"full", "weights", "held_out", "test"}; methods must not use "test".
        budget_bits: the budget on the quantized weights, bits.
        target: the target as the user wrote it.
        epochs: the search epochs the run asked for.
        seed: the run's seed.
        device: where model and batches live.
        teacher: the float model (for distillation), or None.
        progress: show progress bars.
        options: method-specific settings {name: value}.
        resume: a state the method gave ``on_checkpoint`` in an interrupted run, to continue from
            (methods that do not checkpoint ignore it and start over).
        on_checkpoint: called by methods that checkpoint with their full state at the end of every epoch.
        loss_fn: the task loss ``loss_fn(outputs, targets)`` -> mean-reduced scalar; None: cross-entropy
            on integer class labels.
        post_training: no weight may change (the weights stay the float ones; methods that learn
            logits learn them on the frozen weights).
        calibration: the most training images a method may read (None: no bound).
    """

    model: nn.Module
    space: BitSpace
    loaders: Mapping[str, Any]
    budget_bits: int
    target: str
    epochs: int
    seed: int
    device: torch.device
    teacher: nn.Module | None = None
    progress: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    resume: Mapping[str, Any] | None = None
    on_checkpoint: Callable[[dict], None] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    post_training: bool = False
    calibration: int | None = None


@dataclass
class Allocation:
    """What a method returns: the bits, and a history for reports (may be empty).

    ``weight_epochs`` counts the epochs of weight updates the method itself made (the
    search trains the weights while it learns the bits; the others train none). Runs
    give every method the same total: the fine-tuning makes up the difference.
    """

    bits: dict[str, Any]  # {layer: int, or a tuple of one int per structure}
    history: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    weight_epochs: float = 0.0


METHODS: Registry[Callable[[AllocationContext], Allocation]] = Registry("method")
register_method = METHODS.register


def require_layer_granularity(ctx: AllocationContext, method: str) -> None:
    """Fail before any work when the space has bits per structure, which ``method`` does not search.

    Raises:
        ValueError: a layer with structures; the message says to use granularity 'layer'.
    """
    if any(layer.grouped for layer in ctx.space.layers):
        raise ValueError(f"{method}: bits per structure are not supported; use granularity 'layer'")


def method_options(ctx: AllocationContext, method: str, known: set[str]) -> dict[str, Any]:
    """``ctx.options`` as a dict, checked: an option the method does not know fails with the known ones."""
    return check_options(ctx.options, method, known)


def check_options(options: Mapping[str, Any] | None, method: str, known: set[str]) -> dict[str, Any]:
    """``options`` as a dict, checked: an option the method does not know fails with the known ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{method}: unknown options {unknown}; known: {', '.join(sorted(known))}")
    return options


def preflight(name: str, space: BitSpace, budget_bits: int, options: Mapping[str, Any] | None) -> None:
    """A method's own check of a run's budget and options, before any training: a method whose registered
    function has a ``preflight(space, budget_bits, options)`` attribute (e.g. ``exhaustive``, which counts its
    assignments) fails here, not after the float training. Methods without one pass.

    Raises:
        ValueError: whatever the method's check refuses.
    """
    check = getattr(METHODS.get(name), "preflight", None)
    if check is not None:
        check(space, budget_bits, dict(options or {}))


def allocate(name: str, ctx: AllocationContext) -> Allocation:
    """Run the method ``name`` (an unknown name lists the known ones)."""
    return METHODS.get(name)(ctx)


def run_isolated(ctx: AllocationContext, name: str, options: Mapping[str, Any],
                 float_state: Mapping[str, Any]) -> Allocation:
    """Method ``name`` run with ``options`` on ``ctx`` (no resume, no checkpoints), then the space unfixed and the
    model put back to ``float_state``, so a method that trained weights or re-estimated BatchNorm leaves no
    trace; its bits normalised. For methods that run other methods (``probe``, ``refine``)."""
    sub = replace(ctx, options=dict(options), resume=None, on_checkpoint=None)
    result = METHODS.get(name)(sub)
    ctx.space.unfix_()
    ctx.model.load_state_dict(float_state)
    result.bits = ctx.space.cost.normalize(result.bits)
    return result
