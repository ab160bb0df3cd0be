"""The differentiable bitwidth search under a hard size target.

Each step is ONE forward/backward: either a weight step on a training batch
(SGD on the float weights, through the mixed weights) or a logit step on a
held-out batch (Adam on the logits, task loss); the two kinds interleave so both
splits are consumed once per epoch (first-order bilevel, as in DARTS).

The budget is a constraint, not a penalty to tune: the probabilities are
``softmax((a - lam * cost) / T)`` where the Lagrange multiplier ``lam`` is solved
after every logit step (:meth:`BitSpace.project_`) so that the expected size
equals the budget exactly. The logits thus learn only what the task prefers; the
price ``lam`` turns that into an allocation that spends the whole budget. The
softmax temperature anneals geometrically so the choice sharpens. At the end the
budget solver derives the discrete bits that best follow the logits.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .budget import budget_bits, parse_target
from .derive import InfeasibleError, solve_budget
from .cost import Bits
from .bitspace import BitSpace
from .sensitivity import sensitivity
from . import distributed
from .progress import StageProgress
from .train import (NonFiniteLossError, autocast, channels_last_, check_teacher, correct_count, cosine_lr, distill_loss, global_mean,
                    load_loader_state, loader_state, rng_state, set_rng_state, sgd, to_device_batch)

__all__ = ["SearchConfig", "SearchResult", "search", "derive_bits", "init_logits_from_hessian_"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Settings of the search.

    Attributes:
        target: size target, e.g. ``"24x"``, ``"300KB"``, ``"1.5bits"`` (see :mod:`mixbits.budget`).
        epochs: search epochs (each consumes the weight split and the held-out split once).
        warmup_epochs: epochs of weight-only steps on the mixed model before the logits learn.
        weight_lr: peak SGD learning rate of the weights (cosine decay).
        weight_decay: SGD weight decay of the weights.
        logit_lr: Adam learning rate of the logits.
        train_weights: train the weights during the search (on the weight split, through the
            mixed weights). False: only the logits learn, on the float weights; the search then
            spends no weight epochs, and the fine-tuning at the derived bits gets them all.
        train_logits: let the logits learn. False: they stay at their start (the Hessian start,
            or zero) while the temperature anneals and the price follows the budget as usual; a
            control that measures what the search's weight training alone brings.
        fill: spend the budget the derivation leaves unused on upgrades (no layer gets fewer
            bits than the search's choice); the upgrades are reported (``SearchResult.fill_upgrades``).
        logit_ratio: logit steps per weight step in the epochs where the logits learn; the
            held-out split is cycled as often as that takes. Logit steps change no weight, so
            this costs time, never weight training.
        temperature_start, temperature_end: softmax temperature at the start and end.
        gumbel: add Gumbel noise to the logits during search.
        distill_weight: weight of the KL term to the float teacher in weight steps (needs a teacher).
        amp: on CUDA, bf16 autocast and channels-last memory (no effect on other devices).
        init: where the logits start: ``"hessian"`` (``-init_scale * omega / max(omega)``, with
            omega the HAWQ-style sensitivity, Hessian trace times quantization error, estimated on
            a few held-out batches: the search refines a second-order allocation) or
            ``"uniform"`` (all zero).
        init_scale: the spread of the Hessian start, in logits.
    """

    target: str = "24x"
    epochs: int = 10
    warmup_epochs: int = 1
    weight_lr: float = 0.02
    weight_decay: float = 5e-4
    logit_lr: float = 0.05
    logit_ratio: float = 1.0
    train_weights: bool = True
    train_logits: bool = True
    fill: bool = True
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    gumbel: bool = False
    distill_weight: float = 0.0
    amp: bool = True
    init: str = "hessian"
    init_scale: float = 3.0

    def __post_init__(self) -> None:
        parse_target(self.target)
        if self.init not in ("hessian", "uniform"):
            raise ValueError(f"unknown init {self.init!r}; known: hessian, uniform")
        if self.epochs < 1:
            raise ValueError(f"search epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} with {self.epochs} epochs")
        if not (self.temperature_start > 0 and self.temperature_end > 0):
            raise ValueError("temperatures must be positive")
        if not self.logit_ratio > 0:
            raise ValueError(f"logit_ratio must be positive, got {self.logit_ratio}")
        for name in ("weight_lr", "logit_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class SearchResult:
    """Outcome of :func:`search`.

    Attributes:
        bits: derived assignment {layer name: bits (a tuple, one per structure, for a layer with
            structures)}, within the budget.
        budget_bits: the budget on the quantized weights, bits.
        multiplier: final Lagrange multiplier.
        history: per-epoch records (losses, expected size, multiplier, temperature, probabilities).
        start_bits: the bits derived from the logits as they started (before any logit step).
        fill_upgrades: {layer: [the search's bits, the bits after the budget fill]} for every
            layer that the fill upgraded (see :func:`derive_bits`).
        movement: how far the search moved from its start: ``changed_layers`` (layers whose
            derived bits differ from ``start_bits``), ``changed_fraction``, and
            ``mean_tv``/``max_tv``, the total-variation distance between each unit's start and
            final preference distributions (0: unchanged, 1: disjoint), ``units`` and ``solve_seconds``
            (the exact derivation and the budget fill); with structures also
            ``changed_structures`` of ``structures`` and ``changed_structure_fraction``.
    """

    bits: dict[str, Bits]
    budget_bits: int
    multiplier: float
    history: list[dict] = field(default_factory=list)
    start_bits: dict[str, Bits] = field(default_factory=dict)
    movement: dict[str, Any] = field(default_factory=dict)
    fill_upgrades: dict[str, list[Bits]] = field(default_factory=dict)


def derive_bits(space: BitSpace, budget: int, *, fill: bool = True, min_use: float = 0.95) -> dict[str, int]:
    """The discrete assignment the search prefers, with exact size <= ``budget``.

    The assignment that maximises the summed log-probabilities with a size between
    ``min_use * budget`` and ``budget`` (without the lower bound where no assignment
    reaches it: the layers' sizes can be coarse). With ``fill``, the budget this
    leaves unused is then spent on upgrades only (no layer gets fewer bits): the
    most of the budget that upgrades can use, ties broken by the search's
    preference. The user asked for a size; an unused budget is accuracy given away.
    """
    prefs = space.preferences()  # per unit: a layer, or a structure of a layer with structures
    costs = space.cost.cost_table()
    try:
        units = solve_budget(prefs, costs, budget, floor=math.ceil(min_use * budget))
    except InfeasibleError:
        log.info("no assignment uses %.0f%% of the budget; deriving without the lower bound", 100 * min_use)
        units = solve_budget(prefs, costs, budget)
    bits = space.cost.to_layers(units)
    return fill_budget(space, budget, bits) if fill else bits


def fill_budget(space: BitSpace, budget: int, bits: Mapping[str, Bits]) -> dict[str, Bits]:
    """Spend the budget ``bits`` leaves unused on upgrades only (no layer or structure gets fewer bits).

    The most of the budget that upgrades can use, ties broken by the search's preference.
    """
    prefs = space.preferences()
    costs = space.cost.cost_table()
    start = space.cost.to_units(bits)
    up_costs = {n: {b: c for b, c in costs[n].items() if b >= start[n]} for n in costs}
    up_scores = {n: {b: c / budget + 1e-4 * prefs[n][b] for b, c in up_costs[n].items()} for n in costs}
    return space.cost.to_layers(solve_budget(up_scores, up_costs, budget))


def init_logits_from_hessian_(model: nn.Module, space: BitSpace, loader: Iterable, scale: float = 10.0, *,
                              loss_fn: Callable | None = None) -> dict:
    """Set every free layer's logits to ``-scale * omega / max(omega)`` (HAWQ-style sensitivity).

    The softmax with the budget price then starts at the Lagrangian relaxation of the Hessian
    allocation. Returns the Hessian traces per layer.
    """
    omega, traces = sensitivity(model, space, loader, loss_fn=loss_fn)  # per unit
    top = max((v for per in omega.values() for v in per.values()), default=0.0) or 1.0
    with torch.no_grad():
        for layer, d in space.items():
            rows = [[-scale * omega[u][b] / top for b in layer.candidates] for u in layer.unit_names]
            d.logits.copy_(torch.tensor(rows).reshape(d.logits.shape))
    return traces


def _temperature(config: SearchConfig, progress: float) -> float:
    t0, t1 = config.temperature_start, config.temperature_end
    return t0 * (t1 / t0) ** min(1.0, max(0.0, progress))


def search(model: nn.Module, space: BitSpace, train_loader: Iterable, held_out_loader: Iterable,
           config: SearchConfig, *, device: str | torch.device = "cpu", teacher: nn.Module | None = None,
           on_epoch: Callable[[int, dict], None] | None = None, progress: bool = False,
           resume: Mapping[str, Any] | None = None, on_checkpoint: Callable[[dict], None] | None = None,
           loss_fn: Callable | None = None) -> SearchResult:
    """Search the bitwidths of a prepared model under ``config.target``.

    Under torch.distributed every rank must get the same loaders (same seeds): each
    rank computes on its slice of every batch, the gradients of the weights and of
    the logits are averaged, and the logits are broadcast from rank 0 after every
    logit step, so the multiplier, the temperature and the bits agree on all ranks.

    Args:
        model: the model, prepared with :func:`mixbits.prepare_`, starting from float weights.
        space: its BitSpace.
        train_loader: batches that train the weights.
        held_out_loader: batches that train the logits (disjoint from the training batches).
        config: search settings.
        device: where model, space and batches live.
        teacher: float model for distillation in weight steps (``config.distill_weight > 0``).
        on_epoch: called after each epoch with (epoch, record).
        progress: show a progress bar.
        resume: a state from ``on_checkpoint``: the search continues after its epoch and
            ends with the same bits as the uninterrupted search.
        on_checkpoint: called at the end of every epoch with the full search state (model,
            logits and prices, both optimizers, multiplier, temperature, loader and RNG
            states, history). Its tensors are the live ones: save or copy them before returning.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean-reduced scalar, the task loss of both steps and
            of the Hessian start; default cross-entropy on integer class labels.

    Returns:
        the derived bits and the search history.

    Raises:
        ValueError: an unreachable target (before any training).
        NonFiniteLossError: NaN/inf loss; model and logits restored to the start of that epoch.
    """
    budget = budget_bits(config.target, space.cost)
    check_teacher(config.distill_weight, teacher)
    run = _setup(model, space, train_loader, held_out_loader, config, torch.device(device), teacher, budget, resume,
                 loss_fn)
    bar = StageProgress("search", config.epochs, run.n_tr + run.n_logit, enabled=progress and distributed.is_main(),
                        first_epoch=run.first_epoch)
    for epoch in range(run.first_epoch, config.epochs):
        record = _epoch(run, epoch, train_loader, held_out_loader, bar)
        run.history.append(record)
        log.info("search epoch %d/%d loss %.4f expected %.2fx (target budget %d bits) lam %.4f T %.4f",
                 epoch + 1, config.epochs, record["loss"], record["expected_weight_compression"], budget, run.lam,
                 record["temperature"])
        if on_checkpoint is not None:
            on_checkpoint(_checkpoint_state(run, epoch, train_loader, held_out_loader))
        if on_epoch is not None:
            on_epoch(epoch, record)
    return _finish(run)


@dataclass
class _Run:
    """The state of one search: model and logits, their optimizers, counters and history."""

    model: nn.Module
    space: BitSpace
    config: SearchConfig
    device: torch.device
    teacher: nn.Module | None
    budget: int
    weights: list[torch.Tensor]
    logits: list[torch.Tensor]
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    n_tr: int  # weight batches per epoch
    n_ho: int  # held-out batches per epoch
    n_logit: int  # logit steps per epoch once the logits learn
    start: dict
    first_epoch: int = 0
    w_step: int = 0
    lam: float = 0.0
    history: list[dict] = field(default_factory=list)
    loss_fn: Callable = F.cross_entropy


def _setup(model: nn.Module, space: BitSpace, train_loader: Iterable, held_out_loader: Iterable,
           config: SearchConfig, device: torch.device, teacher: nn.Module | None, budget: int,
           resume: Mapping[str, Any] | None, loss_fn: Callable | None = None) -> _Run:
    """Optimizers, the logits' start (Hessian or zero) or the resumed state, the first price."""
    model.to(device)
    space.to(device)
    channels_last_(model, device, config.amp)
    space.unfix_()
    space.set_gumbel_(config.gumbel)
    weights = [p for p in model.parameters() if p.requires_grad]
    logits = list(space.parameters())
    w_opt = sgd(weights, lr=config.weight_lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    a_opt = torch.optim.Adam(logits, lr=config.logit_lr, betas=(0.5, 0.999))
    n_tr, n_ho = len(train_loader), len(held_out_loader)  # type: ignore[arg-type]
    if n_tr == 0 or n_ho == 0:
        raise ValueError("search needs non-empty training and held-out data")
    space.set_temperature_(config.temperature_start)
    run = _Run(model, space, config, device, teacher, budget, weights, logits, w_opt, a_opt, n_tr, n_ho,
               max(1, round(n_tr * config.logit_ratio)), start={}, loss_fn=loss_fn or F.cross_entropy)
    if resume is not None:
        run.first_epoch, run.w_step, run.history = _restore(resume, run, train_loader, held_out_loader)
        run.start = resume["start"]
    else:
        if config.init == "hessian":
            init_logits_from_hessian_(model, space, held_out_loader, config.init_scale, loss_fn=loss_fn)
        distributed.broadcast_(list(model.state_dict().values()) + list(space.state_dict().values()))
        run.start = {"bits": derive_bits(space, budget), "probs": _preference_probs(space)}
    run.lam = space.project_(budget)
    if teacher is not None:
        teacher.eval()
    return run


def _epoch(run: _Run, epoch: int, train_loader: Iterable, held_out_loader: Iterable, bar: StageProgress) -> dict:
    """One epoch of interleaved weight and logit steps; its record."""
    config, space = run.config, run.space
    good = (copy.deepcopy(run.model.state_dict()), copy.deepcopy(space.state_dict()), run.lam)
    _reset_quantizer_caches(space)
    run.model.train()
    space.train()
    tr_it, ho_it = iter(train_loader), iter(held_out_loader)
    done_tr = done_ho = 0
    sums = {"loss": 0.0, "held_loss": 0.0, "correct": 0, "seen": 0}
    n_arch = run.n_logit if epoch >= config.warmup_epochs else 0
    w_steps = run.n_tr if config.train_weights else 0
    steps = w_steps + n_arch
    trace: list[dict] = []
    trace_every = max(1, n_arch // _TRACE_PER_EPOCH)
    full_bits = space.cost.float_quantized_bits()
    bar.start_epoch(epoch, steps)
    for _ in range(steps):
        if done_ho < n_arch and (done_tr >= w_steps or done_ho * run.n_tr <= done_tr * n_arch):
            batch = next(ho_it, None)
            if batch is None:  # the held-out split is cycled when the logits take more steps than it has
                ho_it = iter(held_out_loader)
                batch = next(ho_it)
            progress = (epoch - config.warmup_epochs + done_ho / n_arch) / (config.epochs - config.warmup_epochs)
            sums["held_loss"] += _logit_step(run, batch, _temperature(config, progress), good, epoch)
            done_ho += 1
            if done_ho % trace_every == 0 or done_ho == n_arch:
                trace.append({"epoch": round(epoch + done_ho / n_arch, 4), "probs": _mixing_probs(space)})
        else:
            loss, correct, seen = _weight_step(run, next(tr_it), good, epoch)
            done_tr += 1
            sums["loss"] += loss
            sums["correct"] += correct
            sums["seen"] += seen
        bar.step(lambda: _bar_numbers(space, sums, done_tr, run.lam, full_bits))
    bar.end_epoch()
    sums["correct"], sums["seen"] = distributed.all_reduce_sum([sums["correct"], sums["seen"]], run.device)
    distributed.broadcast_(run.model.buffers())  # BatchNorm statistics as rank 0 saw them, on every rank
    return _epoch_record(run, epoch, sums, done_tr, done_ho, trace)


def _device_batch(run: _Run, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(inputs, labels, loss scale): on the device, this rank's slice of the batch."""
    x, y = to_device_batch(*batch, run.device, run.config.amp)
    return distributed.shard_batch(x, y)


def _logit_step(run: _Run, batch: tuple[torch.Tensor, torch.Tensor], temperature: float, good: tuple, epoch: int) -> float:
    """One Adam step of the logits on a held-out batch (task loss), the price re-solved around it; the loss."""
    space, config = run.space, run.config
    x, y, scale = _device_batch(run, batch)
    space.set_temperature_(temperature)
    run.lam = space.project_(run.budget)
    with autocast(run.device, config.amp):
        task = run.loss_fn(run.model(x), y)
    task_value = global_mean(task, scale, run.device)
    _check_finite(task_value, run.model, space, good, epoch, "held-out")
    run.a_opt.zero_grad(set_to_none=True)
    run.w_opt.zero_grad(set_to_none=True)
    (task * scale).backward()
    distributed.average_gradients_(run.logits)
    if config.train_logits:
        run.a_opt.step()
    distributed.broadcast_(run.logits)  # identical logits on every rank, whatever the reduction order of the backend
    run.lam = space.project_(run.budget)
    return task_value


def _weight_step(run: _Run, batch: tuple[torch.Tensor, torch.Tensor], good: tuple, epoch: int) -> tuple[float, int, int]:
    """One SGD step of the weights through the mixed weights (distilled when asked); (loss, correct, seen)."""
    config = run.config
    x, y, scale = _device_batch(run, batch)
    lr = cosine_lr(run.w_step, config.epochs * run.n_tr, 0, config.weight_lr)
    for g in run.w_opt.param_groups:
        g["lr"] = lr
    with autocast(run.device, config.amp):
        out = run.model(x)
        loss = run.loss_fn(out, y)
        if config.distill_weight > 0:
            with torch.no_grad():
                t_out = run.teacher(x)  # type: ignore[misc]
            loss = (1 - config.distill_weight) * loss + config.distill_weight * distill_loss(out, t_out, 4.0)
    loss_value = global_mean(loss, scale, run.device)
    _check_finite(loss_value, run.model, run.space, good, epoch, "training")
    run.w_opt.zero_grad(set_to_none=True)
    run.a_opt.zero_grad(set_to_none=True)
    (loss * scale).backward()
    distributed.average_gradients_(run.weights)
    run.w_opt.step()
    run.w_step += 1
    return (loss_value, *correct_count(out, y))


def _epoch_record(run: _Run, epoch: int, sums: dict, done_tr: int, done_ho: int, trace: list[dict]) -> dict:
    """What the history keeps of an epoch: losses, expected size, price, temperature, probabilities."""
    space = run.space
    full_bits = space.cost.float_quantized_bits()
    with torch.no_grad():
        exp_bits = float(space.expected_quantized_bits())
    return {
        "epoch": epoch + 1,
        "loss": sums["loss"] / max(done_tr, 1),
        "train_accuracy": sums["correct"] / sums["seen"] if sums["seen"] else None,  # None: no class labels
        "held_out_loss": sums["held_loss"] / done_ho if done_ho else None,
        "expected_quantized_bits": exp_bits,
        "expected_weight_compression": full_bits / exp_bits,
        "budget_bits": run.budget,
        "multiplier": run.lam,
        "temperature": space.decision_list[0].temperature,
        "argmax_bits": space.argmax_bits(),
        "probs": {n: [round(float(v), 5) for v in _layer_mean(torch.softmax(d.logits.detach(), -1))] for n, d in
                  zip(space.names, space.decision_list)},
        "mixing_probs": _mixing_probs(space),
        "trace": trace,
    }


def _checkpoint_state(run: _Run, epoch: int, train_loader: Iterable, held_out_loader: Iterable) -> dict:
    """The full state after ``epoch`` (live tensors), for ``on_checkpoint``."""
    space = run.space
    return {"kind": "search", "epoch": epoch + 1, "w_step": run.w_step, "steps": [run.n_tr, run.n_ho],
            "budget_bits": run.budget, "multiplier": run.lam, "temperature": space.decision_list[0].temperature,
            "model": run.model.state_dict(), "space": space.state_dict(),
            "w_opt": run.w_opt.state_dict(), "a_opt": run.a_opt.state_dict(),
            "loaders": {"train": loader_state(train_loader), "held_out": loader_state(held_out_loader)},
            "rng": rng_state(run.device), "history": list(run.history), "start": run.start}


def _finish(run: _Run) -> SearchResult:
    """The derived bits (budget fill reported), the history and how far the search moved."""
    space = run.space
    space.set_gumbel_(False)
    t0 = time.perf_counter()
    chosen = derive_bits(space, run.budget, fill=False)
    bits = fill_budget(space, run.budget, chosen) if run.config.fill else chosen
    solve_seconds = time.perf_counter() - t0
    upgrades = {n: [chosen[n], bits[n]] for n in bits if bits[n] != chosen[n]}
    if upgrades:
        log.info("budget fill: %s", ", ".join(f"{n} {_short_bits(a)} -> {_short_bits(b)} bits"
                                              for n, (a, b) in upgrades.items()))
    return SearchResult(bits=bits, budget_bits=run.budget, multiplier=run.lam, history=run.history,
                        start_bits=space.cost.normalize(run.start["bits"]),
                        movement={**_movement(space, run.start, bits), "units": space.cost.num_units,
                                  "solve_seconds": solve_seconds}, fill_upgrades=upgrades)


def _short_bits(b: Bits) -> str:
    if isinstance(b, int):
        return str(b)
    return f"[{len(b)} structures, mean {sum(b) / len(b):.2f}]"


def _layer_mean(p: torch.Tensor) -> torch.Tensor:
    """A layer's probabilities (K,), averaged over its structures when it has some ((G, K) -> (K,))."""
    return p if p.dim() == 1 else p.mean(dim=0)


def _preference_probs(space: BitSpace) -> dict[str, list[float]]:
    """{unit: softmax of its logits at temperature 1}, the distribution the derivation follows."""
    out = {}
    for layer, d in space.items():
        rows = torch.softmax(d.logits.detach().double(), -1).reshape(layer.num_groups, -1).tolist()
        out.update(zip(layer.unit_names, rows))
    return out


def _movement(space: BitSpace, start: Mapping[str, Any], bits: Mapping[str, Bits]) -> dict[str, Any]:
    """How far the search moved from its start (see :class:`SearchResult`)."""
    end = _preference_probs(space)
    tv = {n: 0.5 * sum(abs(a - b) for a, b in zip(start["probs"][n], end[n])) for n in end}
    free_layers = [layer for layer in space.layers if not layer.pinned]
    free = [u for layer in free_layers for u in layer.unit_names]
    end_units, start_units = space.cost.to_units(bits), space.cost.to_units(start["bits"])
    changed = sorted(layer.name for layer in free_layers
                     if any(end_units[u] != start_units[u] for u in layer.unit_names))
    out = {"changed_layers": changed, "changed_fraction": len(changed) / max(len(free_layers), 1),
           "mean_tv": sum(tv[n] for n in free) / max(len(free), 1), "max_tv": max((tv[n] for n in free), default=0.0)}
    if any(layer.grouped for layer in free_layers):
        moved = [u for u in free if end_units[u] != start_units[u]]
        out.update({"changed_structures": len(moved), "structures": len(free),
                    "changed_structure_fraction": len(moved) / max(len(free), 1)})
    return out


# Snapshots of the mixing probabilities recorded per search epoch, for the report's plots.
_TRACE_PER_EPOCH = 8


def _mixing_probs(space: BitSpace) -> dict[str, list[float]]:
    """{layer: the probabilities the layer computes with now (prices and temperature applied)}."""
    with torch.no_grad():
        return {n: [round(float(v), 5) for v in _layer_mean(p)] for n, p in space.probs().items()}


def _bar_numbers(space: BitSpace, sums: dict, done_tr: int, lam: float, full_bits: int) -> dict[str, str]:
    with torch.no_grad():
        exp = float(space.expected_quantized_bits())
    return {"loss": f"{sums['loss'] / done_tr:.3f}" if done_tr else "-",  # "-" until a weight step has run
            "acc": f"{100 * sums['correct'] / sums['seen']:.1f}%" if sums["seen"] else "-",
            "size": f"{full_bits / exp:.1f}x", "lam": f"{lam:.3g}",
            "T": f"{space.decision_list[0].temperature:.3f}"}


def _reset_quantizer_caches(space: BitSpace) -> None:
    # Decisions may cache quantizer parameters between forwards; starting every epoch
    # from an empty cache makes a resumed search compute exactly what an uninterrupted one does.
    for d in space.decision_list:
        d.reset_cache_()


def _restore(state: Mapping[str, Any], run: _Run, train_loader: Iterable,
             held_out_loader: Iterable) -> tuple[int, int, list[dict]]:
    config, steps = run.config, (run.n_tr, run.n_ho)
    if state.get("kind") != "search":
        raise ValueError(f"the resume state is not a search state (kind {state.get('kind')!r})")
    if (int(state["budget_bits"]) != run.budget or tuple(state["steps"]) != steps or state["epoch"] > config.epochs):
        raise ValueError(f"the resume state (budget {state['budget_bits']} bits, epoch {state['epoch']}, steps "
                         f"{tuple(state['steps'])}) does not match this search (budget {run.budget} bits, "
                         f"{config.epochs} epochs, steps {steps})")
    run.model.load_state_dict(state["model"])
    run.space.load_state_dict(state["space"])
    run.space.set_temperature_(float(state["temperature"]))
    run.w_opt.load_state_dict(state["w_opt"])
    run.a_opt.load_state_dict(state["a_opt"])
    load_loader_state(train_loader, state["loaders"]["train"])
    load_loader_state(held_out_loader, state["loaders"]["held_out"])
    set_rng_state(state["rng"])
    log.info("search: resumed after epoch %d", state["epoch"])
    return int(state["epoch"]), int(state["w_step"]), list(state["history"])


def _check_finite(value: float, model: nn.Module, space: BitSpace, good: tuple, epoch: int, split: str) -> None:
    if math.isfinite(value):
        return
    model.load_state_dict(good[0])
    space.load_state_dict(good[1])
    raise NonFiniteLossError(
        f"search: the {split} loss became {value} in epoch {epoch + 1}; weights and logits were restored "
        f"to the start of that epoch. Lower weight_lr/logit_lr or check the data for NaN/inf.")
