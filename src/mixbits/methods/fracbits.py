"""``fracbits``: a real bitwidth position per layer, interpolating only its two nearest candidates
(FracBits-style, Yang & Jin 2021), learned by gradient on the frozen float weights; the learned
positions handed to the exact knapsack as scores (LIMPQ-style, Tang et al. 2022).

- Each layer has a position r_l in [0, K-1] over its sorted candidates. Its forward weight is
  ``(1 - f) Q_lo(W) + f Q_hi(W)`` with lo = floor(r), hi = lo + 1, f = r - lo
  (:meth:`mixbits.mixture.Decision.interpolated_weight`): two quantized weights per layer, each
  computed once and cached (the weights never change), so a forward costs one weight combination
  per layer and the loss gradient to r_l is ``<dL/dW, Q_hi - Q_lo>``.
- The size is interpolated the same way, ``size_l(r) = (1 - f) c_lo + f c_hi``. After every
  optimizer step the positions are projected onto the budget (:func:`project_positions`): the
  Euclidean projection onto ``sum_l size_l(r_l) <= budget``, i.e. ``r_l = argmin (r - u_l)^2 / 2 +
  mu size_l(r) / budget`` with the one multiplier mu >= 0 found by bisection, so the interpolated
  size meets the budget at every step (mu is the Lagrange multiplier of the size).
- Start: ``init="uniform"`` (default) at the one common position whose interpolated size is the
  budget; ``"hessian"`` at the index of the Hessian allocation's bits. Adam (lr 0.05) on the positions.
- Derivation (LIMPQ-style): the learned positions become per-candidate scores ``-|r_l - k|`` and the
  exact knapsack (:func:`mixbits.derive.solve_budget`) picks the assignment nearest them within
  the budget, at the start and at ``checkpoints`` points of the run. These derivations, and the
  Hessian allocation (with ``hessian_candidate``, or the Hessian start), are the candidates; with
  ``select`` the one with the lowest held-out loss
  (:class:`~mixbits.methods.scoring.HeldOutScorer`) is returned, else the last derivation.

Measured (``benchmarks/results/allocation_quality.md``, post-training, LeNet-5/mnist5k and the digits
CNN, 8x/16x/24x/28x x 3 seeds, the exhaustive optimum by held-out loss as reference): the default
(rows ``fracbits``) was within 0.1 points of the optimum's mean test accuracy in all 8 (model,
target) cells, as ``evolution`` (LeNet-5 28x: 90.2%, against ``hessian`` 82.4% and ``hardsearch``
87.4%; LeNet-5 16x: 95.6% against 95.7%), in 6-9 s. Without the Hessian candidate (rows
``fracbits_nohessian``) LeNet-5 was the same but the digits CNN lost 0.5 points on average (28x:
97.5% against 98.3%); from the Hessian start (``fracbits_hessian``) LeNet-5 at 28x mostly stayed
at the Hessian allocation (82.6%); without the held-out selection (``fracbits_noselect``) LeNet-5 at
28x fell to 82.0%. After one epoch of fine-tuning (``ft1``) every variant's mean gap to the
optimum's fine-tuned accuracy lay between -0.4 and +0.5 points per cell. At 1.2 average bits it
missed the optimum on LeNet-5 (92.7% against 94.9%), at 1.5 bits on the digits CNN (98.9% against
99.4%). On ResNet-20/CIFAR-10 post-training (3 seeds, 1,000 scoring images) it averaged 73.1% at
24x against ``evolution``'s 72.4% and 67.1% at 28x against 68.0%: not the default.

Measured and removed (``benchmarks/results/allocation_quality.md``, post-training, 4 targets x 3
seeds, LeNet-5/mnist5k and the digits CNN, all without the Hessian candidate): plain SGD on the
positions (lr 1.0; rows ``fracbits_sgd``) matched Adam on LeNet-5 at 28x but ended at a higher
held-out loss at 8x, 16x and 24x (0.0071/0.0812/0.2255 against 0.0039/0.0638/0.1952) and lost 0.5
points on the digits CNN at 24x (97.8% against 98.3%); weighting the distance by each layer's mean
loss slope ``|dL/dr_l|`` (rows ``fracbits_slope``) chose the same bits as the plain distance in 23
of 24 (target, seed) cells.

Options: ``steps`` (default 200), ``lr`` (Adam, default 0.05), ``init`` (``"uniform"`` or
``"hessian"``), ``hessian_candidate`` (default True), ``batch`` (images per step, default 128),
``images`` (the most training images read, default 2048; bounded by the run's calibration),
``checkpoints`` (default 4), ``select`` (default True).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..derive import solve_budget
from .base import Allocation, AllocationContext, method_options, register_method, require_layer_granularity
from .hessian import hessian_units
from .scoring import HeldOutScorer, gather_images, select_candidate

__all__ = ["fracbits", "interpolated_sizes", "project_positions", "uniform_position", "distance_scores"]

_DEFAULTS = {"steps": 200, "lr": 0.05, "init": "uniform", "hessian_candidate": True, "batch": 128, "images": 2048,
             "checkpoints": 4, "select": True}


def interpolated_sizes(r: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each layer's size at its real position, linear between its two nearest candidates.

    Args:
        r: positions (L,) in [0, K-1].
        sizes: (L, K) sizes of every candidate (any unit), ascending along K; a layer with fewer
            candidates repeats its last size.

    Returns:
        (L,) interpolated sizes.
    """
    k = sizes.shape[1]
    lo = np.minimum(np.floor(r).astype(np.int64), k - 2)
    f = r - lo
    rows = np.arange(len(r))
    return (1.0 - f) * sizes[rows, lo] + f * sizes[rows, lo + 1]


def _prox(u: np.ndarray, sizes: np.ndarray, top: np.ndarray, mu: float) -> np.ndarray:
    """argmin over r in [0, top_l] of (r - u)^2 / 2 + mu * size(r), per layer, size piecewise linear.

    On each segment [k, k+1] the objective is a convex quadratic: its minimiser is u - mu * slope_k
    clipped to the segment; the best segment wins (exact for any, also non-convex, size curve).
    """
    k = sizes.shape[1]
    seg = np.arange(k - 1, dtype=np.float64)  # (K-1,)
    slope = np.diff(sizes, axis=1)  # (L, K-1)
    cand = np.clip(u[:, None] - mu * slope, seg[None], seg[None] + 1.0)  # (L, K-1)
    size_at = sizes[:, :-1] + (cand - seg[None]) * slope
    obj = 0.5 * (cand - u[:, None]) ** 2 + mu * size_at
    obj[seg[None] >= top[:, None]] = np.inf  # segments past a layer's last candidate
    return cand[np.arange(len(u)), obj.argmin(axis=1)]


def project_positions(u: np.ndarray, sizes: np.ndarray, budget: float, top: np.ndarray | None = None
                      ) -> tuple[np.ndarray, float]:
    """The Euclidean projection of positions onto ``sum_l size_l(r_l) <= budget`` and its multiplier.

    Args:
        u: (L,) positions (any reals).
        sizes: (L, K) sizes of every candidate, ascending along K (K >= 2).
        budget: the largest total interpolated size (same unit as ``sizes``).
        top: (L,) each layer's last position (its number of candidates - 1); default K-1.

    Returns:
        (r (L,) in [0, top_l] with total interpolated size <= budget, mu >= 0). The total size of the
        prox is non-increasing in mu, so bisection finds the smallest mu that fits, to 1e-12 relative.

    Raises:
        ValueError: the budget is below the size of every layer at its smallest candidate.
    """
    top = np.full(len(u), sizes.shape[1] - 1.0) if top is None else np.asarray(top, dtype=np.float64)
    scaled = sizes / budget  # budget units: mu is O(1)
    if scaled[:, 0].sum() > 1.0 + 1e-12:
        raise ValueError(f"budget of {budget} is below the smallest reachable size of {sizes[:, 0].sum()}")
    r = np.clip(u, 0.0, top)
    if interpolated_sizes(r, scaled).sum() <= 1.0:
        return r, 0.0
    lo, hi = 0.0, 1.0
    while interpolated_sizes(_prox(u, scaled, top, hi), scaled).sum() > 1.0 and hi < 1e18:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        if hi - lo <= 1e-12 * hi:
            break
        mid = 0.5 * (lo + hi)
        if interpolated_sizes(_prox(u, scaled, top, mid), scaled).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    return _prox(u, scaled, top, hi), hi


def uniform_position(sizes: np.ndarray, budget: float, top: np.ndarray | None = None) -> np.ndarray:
    """(L,) the one position r (capped at each layer's last) whose total interpolated size is the budget."""
    top = np.full(len(sizes), sizes.shape[1] - 1.0) if top is None else np.asarray(top, dtype=np.float64)
    lo, hi = 0.0, float(top.max())
    if interpolated_sizes(top, sizes).sum() <= budget:
        return top.copy()
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if interpolated_sizes(np.minimum(mid, top), sizes).sum() > budget:
            hi = mid
        else:
            lo = mid
    return np.minimum(lo, top)


def distance_scores(r: float, count: int) -> list[float]:
    """Knapsack scores ``-|r - k|`` of a layer's ``count`` candidates: the nearer a candidate lies to the
    learned position, the better."""
    return [-abs(r - k) for k in range(count)]


def _options(ctx: AllocationContext) -> dict:
    out = {**_DEFAULTS, **method_options(ctx, "fracbits", set(_DEFAULTS))}
    if out["init"] not in ("hessian", "uniform"):
        raise ValueError(f"fracbits: init must be 'hessian' or 'uniform', got {out['init']!r}")
    if int(out["steps"]) < 1 or int(out["batch"]) < 1 or int(out["images"]) < 1 or int(out["checkpoints"]) < 1:
        raise ValueError("fracbits: steps, batch, images and checkpoints must be >= 1")
    if float(out["lr"]) <= 0:
        raise ValueError(f"fracbits: lr must be > 0, got {out['lr']}")
    if ctx.calibration is not None:
        out["images"] = min(int(out["images"]), int(ctx.calibration))
    return out


def _hessian_bits(ctx: AllocationContext) -> dict[str, int]:
    """The ``hessian`` method's allocation (units -> bits): a start and a selection candidate."""
    return hessian_units(ctx)[0]


def _derive(names: list[str], positions: list[torch.Tensor], costs: dict, budget: int) -> dict[str, int]:
    """The exact knapsack on the learned positions' distance scores (units -> bits)."""
    scores = {n: {b: 0.0 for b in c} for n, c in costs.items()}  # pinned units: one candidate
    for n, p in zip(names, positions):
        cands = sorted(costs[n])
        scores[n] = dict(zip(cands, distance_scores(float(p.detach()), len(cands))))
    return solve_budget(scores, costs, budget)


@register_method("fracbits")
def fracbits(ctx: AllocationContext) -> Allocation:
    """Learn a real bit position per layer on the frozen float weights; derive exactly (module docstring)."""
    opts = _options(ctx)
    space, model, device = ctx.space, ctx.model, ctx.device
    require_layer_granularity(ctx, "fracbits")
    t0 = time.perf_counter()
    model.to(device)
    space.to(device)
    costs = space.cost.cost_table()
    space.unfix_()
    free = [(layer, d) for layer, d in space.items() if d.fixed_bits is None]
    names = [layer.name for layer, _ in free]
    fixed_size = sum(layer.size_bits(d.fixed_bits) for layer, d in space.items() if d.fixed_bits is not None)
    free_budget = float(ctx.budget_bits - fixed_size)
    k_max = max((len(layer.candidates) for layer, _ in free), default=2)
    sizes = np.array([[costs[n][layer.candidates[min(k, len(layer.candidates) - 1)]] for k in range(k_max)]
                      for n, (layer, _) in zip(names, free)], dtype=np.float64).reshape(len(free), k_max)  # (L, K)
    top = np.array([len(layer.candidates) - 1.0 for layer, _ in free])
    with_hessian = opts["init"] == "hessian" or (opts["hessian_candidate"] and opts["select"])
    hessian_bits = _hessian_bits(ctx) if with_hessian else None
    if opts["init"] == "hessian":
        r0 = np.array([float(layer.candidates.index(hessian_bits[layer.name])) for layer, _ in free])
    else:
        r0 = uniform_position(sizes, free_budget, top)
    positions = [torch.tensor(float(v), dtype=torch.float32, device=device, requires_grad=True) for v in r0]
    x, y = gather_images(ctx.loaders["held_out"], int(opts["images"]), device)
    scorer = HeldOutScorer(model, space, [(x, y)], images=len(y), bn_images=min(512, len(y)), device=device,
                           loss_fn=ctx.loss_fn)
    loss_fn = ctx.loss_fn or F.cross_entropy
    steps, batch = int(opts["steps"]), int(opts["batch"])
    opt = torch.optim.Adam(positions, lr=float(opts["lr"]))
    marks = {max(1, round(steps * (i + 1) / int(opts["checkpoints"]))) for i in range(int(opts["checkpoints"]))}
    start_bits = space.cost.to_layers(_derive(names, positions, costs, ctx.budget_bits))
    candidates = ([space.cost.to_layers(hessian_bits)] if hessian_bits is not None else []) + [start_bits]
    gen = torch.Generator().manual_seed(ctx.seed)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    history, mu = [], 0.0
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for (_, d), p in zip(free, positions):
            d.position = p
        model.train()  # BatchNorm normalises with each batch's statistics: those of the interpolated weights
        for step in range(steps):
            idx = torch.randint(len(y), (min(batch, len(y)),), generator=gen).to(device)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # back onto the budget: the interpolated size meets it at every step
                r, mu = project_positions(np.array([float(p.detach()) for p in positions]), sizes, free_budget, top)
                for p, v in zip(positions, r):
                    p.fill_(float(v))
            if (step + 1) % max(1, steps // 20) == 0:
                history.append({"step": step + 1, "loss": float(loss.detach()), "price": mu})
            if step + 1 in marks:
                candidates.append(space.cost.to_layers(_derive(names, positions, costs, ctx.budget_bits)))
    finally:
        for _, d in free:
            d.position = None
        for p, was in frozen:
            p.requires_grad_(was)
    losses, pick = select_candidate(scorer, candidates, bool(opts["select"]))
    space.unfix_()
    return Allocation(bits=candidates[pick], history=history,
                      info={"picked": pick, "candidate_losses": losses, "start_bits": start_bits,
                            "hessian_bits": space.cost.to_layers(hessian_bits) if hessian_bits else None,
                            "positions": {n: float(p.detach()) for n, p in zip(names, positions)}, "price": mu,
                            "seconds": time.perf_counter() - t0, **scorer.info()})
