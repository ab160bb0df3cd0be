"""Allocation methods: how a run chooses the bits under the budget.

A method is a function registered by name in :data:`METHODS`::

    @register_method("name")
    def allocate(ctx: AllocationContext) -> Allocation: ...

It receives the prepared model (float weights), its BitSpace, the loaders, the
budget and the run's settings, and returns the bits (always derived with the
exact budget solver of :mod:`mixbits.derive`, so every method meets the same
budget under the same cost model). ``mixbits search --method NAME`` picks one.

Registered: ``probe`` (the answers of ``hessian``, ``evolution`` and ``pairwise``, each fine-tuned
briefly, the best by held-out loss; post-training ranked on the float weights and refined as ``refine``
does: the default in both regimes), ``hessian`` (HAWQ-style sensitivity), ``evolution``
(EvoPress-style search over assignments scored by held-out loss),
``hardsearch`` (the relaxation learned on frozen weights with a hard forward), ``fracbits`` (a real
bit position per layer interpolating its two nearest candidates, learned on frozen weights, handed to
the exact knapsack), ``pairwise`` (measured single-layer and pairwise loss terms, the quadratic
assignment solved exactly), ``exhaustive`` (every maximal
assignment under the budget scored by held-out loss, where there are few enough), ``refine`` (every
maximal assignment within a few layers of a start raced by held-out loss, moving while it improves), ``search`` (the
differentiable search of :mod:`mixbits.search`), ``random`` and ``uniform``.
"""

from .base import DEFAULT_METHOD, DEFAULT_POST_TRAINING_METHOD, METHODS, Allocation, AllocationContext, allocate, register_method
from . import differentiable  # noqa: F401  (registers "search")
from . import hessian, random, uniform  # noqa: F401  (register "hessian", "random", "uniform")
from . import evolution, hard_search  # noqa: F401  (register "evolution", "hardsearch")
from . import fracbits, pairwise  # noqa: F401  (register "fracbits", "pairwise")
from . import probe  # noqa: F401  (registers "probe")
from . import exhaustive  # noqa: F401  (registers "exhaustive")
from . import refine  # noqa: F401  (registers "refine")

__all__ = ["DEFAULT_METHOD", "DEFAULT_POST_TRAINING_METHOD", "METHODS", "Allocation", "AllocationContext", "allocate", "register_method"]
