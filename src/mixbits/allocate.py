"""The product's default path in Python: bits for every layer of a prepared model under a target.

``allocate(model, space, train, held_out, target="24x")`` runs a registered allocation
method (the default unless ``method=`` names another, see :mod:`mixbits.methods`) and
returns its :class:`~mixbits.methods.Allocation`: the bits, derived with the exact
budget solver, never over the budget. The command line's ``mixbits search`` runs the same
methods through the pipeline (:mod:`mixbits.pipeline`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .bitspace import BitSpace
from .budget import budget_bits
from .methods import DEFAULT_METHOD, DEFAULT_POST_TRAINING_METHOD, METHODS, Allocation, AllocationContext

__all__ = ["allocate", "DEFAULT_METHOD", "DEFAULT_POST_TRAINING_METHOD"]


def allocate(model: nn.Module, space: BitSpace, train: Iterable, held_out: Iterable, *, target: str,
             method: str | None = None, post_training: bool = False, seed: int = 0, epochs: int = 10,
             options: Mapping[str, Any] | None = None, teacher: nn.Module | None = None,
             device: str | torch.device = "cpu", progress: bool = False) -> Allocation:
    """Choose the bits of every prepared weight under ``target`` with the method ``method``.

    Args:
        model: the model prepared by :func:`mixbits.prepare_`, holding its float weights.
        space: the BitSpace ``prepare_`` returned.
        train: batches (x, y) that train weights (and re-estimate statistics): never the test split.
        held_out: batches that choose the bits (Hessian traces, the search's logits, held-out losses): never the
            test split. Methods that compare assignments by held-out loss read the first ``images`` examples as
            it yields them, once per scorer: give one without random augmentation (mixbits'
            :class:`~mixbits.data.TensorLoader` gives a fixed, unaugmented sample whatever its settings).
        target: the size target, e.g. ``"24x"``, ``"300KB"``, ``"1.5bits"``.
        method: a registered method (:data:`mixbits.methods.METHODS`); None: ``DEFAULT_METHOD`` (the bits
            will be fine-tuned), or ``DEFAULT_POST_TRAINING_METHOD`` with ``post_training``.
        post_training: the weights must not change (no fine-tuning follows): methods that learn do so on
            the frozen float weights.
        seed: seeds torch (the method's probes, sampling and shuffling), so a call is repeatable.
        epochs: epochs for methods that train (``search``); methods that do not ignore it.
        options: the method's own options (e.g. ``{"batches": 8}`` for ``hessian``).
        teacher: the float model, for methods that distill (``search``).
        device: where the model and batches live.
        progress: show progress bars.

    Returns:
        the Allocation: ``bits`` {layer name: bits, a tuple per structure for layers with structures},
        ``info`` and ``history`` for reports, ``weight_epochs`` the weight training the method did
        (``search`` trains the model's weights in place; the others leave them untouched).

    Raises:
        ValueError: an unknown method (the message lists the known ones), or a target this model
            cannot reach (the message gives the reachable range), before any work.
        RuntimeError: the method returned bits over the budget.
    """
    if method is None:
        method = DEFAULT_POST_TRAINING_METHOD if post_training else DEFAULT_METHOD
    METHODS.get(method)  # an unknown name fails here with the known names
    budget = budget_bits(target, space.cost)  # an unreachable target fails here with the reachable range
    torch.manual_seed(seed)
    loaders = {"full": train, "weights": train, "held_out": held_out}
    ctx = AllocationContext(model=model, space=space, loaders=loaders, budget_bits=budget, target=target,
                            epochs=int(epochs), seed=seed, device=torch.device(device), teacher=teacher,
                            progress=progress, options=dict(options or {}), post_training=post_training)
    result = METHODS.get(method)(ctx)
    result.bits = space.cost.normalize(result.bits)
    size = space.cost.quantized_bits(result.bits)
    if size > budget:
        raise RuntimeError(f"method {method!r} returned {size} bits, over the budget of {budget} bits")
    return result
