"""``uniform``: every quantized layer at the same k bits (pinned layers keep their pins).

k is ``options["bits"]`` when given, else the largest candidate that every free
layer shares and whose exact size fits the budget. The budget rule is the same
as for every method: the assignment never exceeds ``ctx.budget_bits``.
"""

from __future__ import annotations


from ..space import BitSpace
from .base import Allocation, AllocationContext, method_options, register_method

__all__ = ["uniform_bits", "uniform_allocation"]


def uniform_bits(space: BitSpace, k: int) -> dict[str, int]:
    """{layer: k} for the free layers, the pinned bits for pinned ones.

    Raises:
        ValueError: k is not a candidate of some free layer.
    """
    out = {}
    for layer in space.layers:
        if layer.pinned:
            out[layer.name] = layer.candidates[0]
        elif k not in layer.candidates:
            raise ValueError(f"uniform: {k} bits is not a candidate of layer {layer.name!r} "
                             f"(candidates {list(layer.candidates)}); choose bits among them")
        else:
            out[layer.name] = int(k)
    return out


def _shared_candidates(space: BitSpace) -> list[int]:
    free = [set(layer.candidates) for layer in space.layers if not layer.pinned]
    return sorted(set.intersection(*free)) if free else []


@register_method("uniform")
def uniform_allocation(ctx: AllocationContext) -> Allocation:
    """Every free layer at k bits: ``options["bits"]``, or the largest k that fits the budget.

    Raises:
        ValueError: the given k does not fit the budget, or no shared candidate does.
    """
    options = method_options(ctx, "uniform", {"bits"})
    cost = ctx.space.cost
    if options.get("bits") is not None:
        k = int(options["bits"])
        bits = uniform_bits(ctx.space, k)
        size = cost.quantized_bits(bits)
        if size > ctx.budget_bits:
            raise ValueError(f"uniform: every layer at {k} bits takes {size} bits, over the budget of "
                             f"{ctx.budget_bits} bits ({ctx.target}); choose fewer bits or a looser target")
        return Allocation(bits=bits, info={"bits": k})
    shared = _shared_candidates(ctx.space)
    fitting = [k for k in shared if cost.quantized_bits(uniform_bits(ctx.space, k)) <= ctx.budget_bits]
    if not fitting:
        raise ValueError(f"uniform: no bitwidth shared by all layers ({shared}) fits the budget of "
                         f"{ctx.budget_bits} bits ({ctx.target}); use a looser target or another method")
    k = max(fitting)
    return Allocation(bits=uniform_bits(ctx.space, k), info={"bits": k})
