"""``hessian``: HAWQ-style allocation from curvature-trace sensitivity (Dong et al., HAWQ-V2/V3).

For each layer l and candidate b the expected loss increase of quantizing W_l
to b bits is estimated to second order as

    omega_lb = (tr(H_l) / n_l) * ||Q_b(W_l) - W_l||^2,

where H_l is the curvature of the training loss with respect to W_l (n_l
elements). By default its trace is the empirical Fisher's, the mean over examples
of the squared per-example gradient (as FIT, Zandonati et al. 2023): exact for
the examples taken, with no random probes. ``estimator="hutchinson"`` takes
HAWQ's estimate of the Hessian's own trace, ``E_v[v^T H v]`` over Rademacher
vectors v (each ``H v`` one double backward), whose probe noise decided
allocations on ResNet-20 (see :func:`mixbits.sensitivity.sensitivity`). The trace
is taken at the float weights, on a few batches of the held-out split (never the
test split). The bits then minimise ``sum_l omega_lb`` under the budget with the
same exact solver and cost model as every method.

With bits per structure, omega is per structure: its layer's mean trace
(``structure_traces="layer"``, the default) or the structure's own trace (``"structure"``,
the per-channel diagonal blocks summed over its channels), times the structure's own
quantization error. The layer's trace is the default because a structure's own estimate
sums far fewer probe products and is noisy: on ResNet-20 / CIFAR-10 it cost 4 to 6 points of
accuracy before fine-tuning at 16x..28x against the layer's trace
(``benchmarks/results/structure_traces.json``).

Options (``ctx.options``): ``estimator`` (``"fisher"``, the default, or ``"hutchinson"``),
``batches`` (default 4), ``samples`` Hutchinson vectors per batch (default 8; Hutchinson
only), ``split`` (``"held_out"`` or ``"weights"``), ``structure_traces`` (``"layer"`` or
``"structure"``, default ``"layer"``).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch

from ..derive import solve_budget
from ..sensitivity import fisher_traces, hessian_sensitivity, hutchinson_traces, sensitivity
from .base import Allocation, AllocationContext, method_options, register_method

__all__ = ["hutchinson_traces", "fisher_traces", "hessian_sensitivity", "hessian_allocation", "sensitivity",
           "layer_sensitivity", "solve_sensitivity", "hessian_units"]

_OPTIONS = {"batches", "samples", "split", "structure_traces", "estimator"}
# the allowed values of the options that name a choice (also checked before any work by the settings check)
CHOICES = {"estimator": ("fisher", "hutchinson"), "split": ("held_out", "weights"),
           "structure_traces": ("structure", "layer")}


def layer_sensitivity(ctx: AllocationContext, options: Mapping[str, Any]
                      ) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """(omega {layer: {bits: sensitivity}}, traces {layer: Hessian trace}) at the float weights.

    Options: ``split`` ("held_out" or "weights", never the test split), ``batches``, ``samples``,
    ``structure_traces``, ``estimator``.
    """
    split = options.get("split", "held_out")
    if split not in CHOICES["split"]:
        raise ValueError(f"hessian: split must be 'held_out' or 'weights' (never the test split), got {split!r}")
    per = options.get("structure_traces", "layer")
    if per not in CHOICES["structure_traces"]:
        raise ValueError(f"hessian: structure_traces must be 'structure' or 'layer', got {per!r}")
    return sensitivity(ctx.model, ctx.space, ctx.loaders[split], seed=ctx.seed,
                       batches=int(options.get("batches", 4)), samples=int(options.get("samples", 8)),
                       structure_traces=per, loss_fn=ctx.loss_fn, estimator=options.get("estimator", "fisher"))


def solve_sensitivity(omega: Mapping[str, Mapping[int, float]], ctx: AllocationContext) -> dict[str, int]:
    """The assignment (units -> bits) minimising the summed sensitivity ``omega`` under the run's
    budget, with the exact solver; the scores are scaled to O(1) so the solver's tolerances and
    tie-break act on comparable numbers."""
    scale = max((v for per in omega.values() for v in per.values()), default=0.0) or 1.0
    scores = {n: {b: -v / scale for b, v in per.items()} for n, per in omega.items()}
    return solve_budget(scores, ctx.space.cost.cost_table(), ctx.budget_bits)


def hessian_units(ctx: AllocationContext) -> tuple[dict[str, int], dict[str, dict[int, float]]]:
    """(the ``hessian`` method's assignment with its default options, units -> bits; omega): the
    start or a candidate of the methods that search further (``evolution``, ``hardsearch``,
    ``fracbits``)."""
    omega, _ = layer_sensitivity(ctx, {})
    return solve_sensitivity(omega, ctx), omega


@register_method("hessian")
def hessian_allocation(ctx: AllocationContext) -> Allocation:
    """Minimise the summed Hessian-weighted quantization error under the budget."""
    options = method_options(ctx, "hessian", _OPTIONS)
    omega, traces = layer_sensitivity(ctx, options)
    t0 = time.perf_counter()
    units = solve_sensitivity(omega, ctx)
    solve_seconds = time.perf_counter() - t0
    traces = {n: (t.tolist() if isinstance(t, torch.Tensor) else t) for n, t in traces.items()}
    info = {"traces": traces, "sensitivity": {n: {str(b): v for b, v in per.items()} for n, per in omega.items()},
            "objective": sum(omega[n][b] for n, b in units.items()), "units": len(units),
            "solve_seconds": solve_seconds}
    return Allocation(bits=ctx.space.cost.to_layers(units), info=info)
