"""``probe``: the allocations of several methods, each fine-tuned briefly, the best by held-out loss.

What an allocation is worth after fine-tuning is not what it is worth before: the weights adapt,
and after one epoch the layers that hurt most on the float weights are not always the ones that
hurt most once trained (on the character-level LM at 28x the post-training optimum ends at test
perplexity 15.2 after an epoch of fine-tuning, the Hessian allocation at 12.8). ``probe`` asks the
question directly, as successive-halving and racing methods do for hyperparameters:

1. every method of ``methods`` (default ``hessian``, ``evolution``, ``pairwise``) allocates on
   the float weights; identical answers are probed once;
2. each distinct allocation is fine-tuned for ``steps`` batches of the training split from the
   float weights (the same batches in the same order for every candidate, SGD with the
   pipeline's fine-tuning learning rate and cosine decay, distilled from the teacher when there
   is one), the BatchNorm statistics re-estimated on those batches;
3. its held-out loss is measured on ``images`` fixed held-out images (never the test split), and
   the float weights are restored. The lowest held-out loss wins.

The probe's weights are thrown away: the run's fine-tuning starts from the float weights at the
chosen bits, so ``weight_epochs`` is 0 and the comparison with other methods stays compute-matched
in the weights the model ends with; the probes cost ``len(distinct) * steps`` training steps of
allocation time, reported in ``info``. Post-training (no weight may change) the probe is skipped:
the candidates are ranked by their held-out loss on the float weights, BatchNorm re-estimated, and
the best is refined (:mod:`mixbits.methods.refine`): every maximal assignment within four layers of
it raced by held-out loss, moving while that finds a lower one (on ResNet-20 at 28x, 3 seeds: 68.5%,
the same bits in every seed, against ``hessian``'s 68.0%; ``benchmarks/results/allocation_quality.md``).

With bits per structure the default candidates are ``hessian``'s alone (``evolution`` and ``pairwise``
choose per layer), and a single distinct candidate is returned without a probe.

Options: ``methods`` (list of registered names, default ``["hessian", "evolution", "pairwise"]``),
``method_options`` ({method: its options}), ``steps`` (probe steps per candidate; default a quarter
of the training loader's batches, between 8 and 64, or 32 when the loader has no length), ``lr``
(default 0.01, the pipeline's fine-tuning rate), ``images`` (held-out images, default 1024,
bounded by the run's calibration), ``refine`` (post-training: ``true`` (default), ``false``, or a dict of
``refine``'s ``radius``, ``limit``, ``rounds``, ``screen``, ``keep``).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F

from ..train import TrainConfig, evaluate_loss, fit, recalibrate_bn_
from .base import METHODS, Allocation, AllocationContext, check_options, method_options, register_method, run_isolated
from .refine import _settings as _refine_settings, refine_from
from .scoring import gather_images, has_batchnorm

__all__ = ["probe_allocation", "probe_steps"]

_OPTIONS = {"methods", "method_options", "steps", "lr", "images", "refine"}
_DEFAULT_METHODS = ("hessian", "evolution", "pairwise")
_CHUNK = 256


def probe_steps(loader: Iterable) -> int:
    """The default probe length: a quarter of an epoch of ``loader``, between 8 and 64 batches (32 without len)."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return 32
    return max(8, min(64, n // 4))


def _first_batches(loader: Iterable, steps: int) -> list:
    """The first ``steps`` batches of ``loader``, which is left as it was found: a loader that keeps its
    shuffling state (``state_dict``/``load_state_dict``) gets it back, so the run's fine-tuning sees the
    order it would have seen without the probe."""
    state = loader.state_dict() if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict") else None
    batches = list(itertools.islice(iter(loader), steps))
    if state is not None:
        loader.load_state_dict(state)
    return batches


def _check_methods(methods: Any) -> list[str]:
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
        raise ValueError(f"probe: methods must be a non-empty list of method names, got {methods!r}")
    for name in methods:
        if name == "probe":
            raise ValueError("probe: 'probe' cannot be one of its own candidates")
        METHODS.get(name)  # an unknown name fails here with the known ones
    return list(methods)


_REFINE_OPTIONS = {"radius", "limit", "rounds", "screen", "keep"}


def _check_refine(value: Any) -> dict | None:
    """``refine`` checked: True -> {} (its defaults), a dict of some of ``radius``, ``limit``, ``rounds``,
    ``screen``, ``keep`` -> itself, False -> None (off)."""
    if isinstance(value, bool):
        return {} if value else None
    if not isinstance(value, dict) or set(value) - _REFINE_OPTIONS:
        raise ValueError(f"probe: refine must be true, false or a dict of some of {sorted(_REFINE_OPTIONS)}, "
                         f"got {value!r}")
    _refine_settings(value)  # the values checked, before any work
    return dict(value)


def _refine_options(value: Any, ctx: AllocationContext) -> dict | None:
    """The options of the post-training refinement, or None where there is none (it runs only post-training
    and with bits per layer)."""
    value = _check_refine(value)
    if value is None or not ctx.post_training or any(layer.grouped for layer in ctx.space.layers):
        return None
    return value


def _preflight(space, budget_bits: int, options: Mapping[str, Any]) -> None:
    """Before any training: the option names, the candidate methods and the refinement's options."""
    options = check_options(options, "probe", _OPTIONS)
    if "methods" in options:
        _check_methods(options["methods"])
    _check_refine(options.get("refine", True))


@register_method("probe")
def probe_allocation(ctx: AllocationContext) -> Allocation:
    """The candidate allocation with the lowest held-out loss after a short fine-tune (module docstring)."""
    options = method_options(ctx, "probe", _OPTIONS)
    if "methods" in options:
        methods = _check_methods(options["methods"])
    elif any(layer.grouped for layer in ctx.space.layers):
        methods = ["hessian"]  # bits per structure: the one default candidate that allocates them
    else:
        methods = list(_DEFAULT_METHODS)
    sub_options = options.get("method_options", {})
    if not isinstance(sub_options, dict) or not all(isinstance(v, dict) for v in sub_options.values()):
        raise ValueError(f"probe: method_options must map a method name to its options, e.g. "
                         f"{{'evolution': {{'evaluations': 60}}}}; got {sub_options!r}")
    unknown = sorted(set(sub_options) - set(methods))
    if unknown:
        raise ValueError(f"probe: method_options for {unknown}, which are not among methods {methods}")
    steps = int(options.get("steps", probe_steps(ctx.loaders["weights"])))
    if steps < 0:
        raise ValueError(f"probe: steps must be >= 0, got {steps}")
    lr = float(options.get("lr", 0.01))
    if not lr > 0:
        raise ValueError(f"probe: lr must be positive, got {lr}")
    images = int(options.get("images", 1024))
    if images < 1:
        raise ValueError(f"probe: images must be >= 1, got {images}")
    if ctx.calibration is not None:
        images = min(images, ctx.calibration)
    if ctx.post_training:
        steps = 0
    refine_options = _refine_options(options.get("refine", True), ctx)
    t0 = time.perf_counter()
    rng = torch.get_rng_state()
    float_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}

    candidates: list[tuple[dict, list[str], dict]] = []  # (bits, methods that gave them, their info)
    for name in methods:
        t = time.perf_counter()
        bits = run_isolated(ctx, name, sub_options.get(name, {}), float_state).bits
        if ctx.space.cost.quantized_bits(bits) > ctx.budget_bits:
            raise RuntimeError(f"probe: candidate {name!r} returned bits over the budget")
        for known in candidates:
            if known[0] == bits:
                known[1].append(name)
                break
        else:
            candidates.append((bits, [name], {"seconds": time.perf_counter() - t}))

    if len(candidates) == 1:  # nothing to choose between: no probe
        bits, names, info = candidates[0]
        scored = [{"methods": names, "bits": bits, "held_out_loss": None, "allocation_seconds": info["seconds"],
                   "probe_seconds": 0.0}]
        best, steps, n_images = 0, 0, 0
    else:
        scored, n_images = _probe(ctx, candidates, steps, lr, images, float_state)
        best = min(range(len(scored)), key=lambda i: scored[i]["held_out_loss"])
    torch.set_rng_state(rng)  # the probes' seeding leaves the caller's random stream as it was
    bits, refined = scored[best]["bits"], None
    if refine_options is not None:
        bits, refined = _refine(ctx, bits, refine_options, images, float_state)
    return Allocation(bits=bits,
                      info={"chosen": scored[best]["methods"], "candidates": scored, "steps": steps,
                            "held_out_images": n_images, "refined": refined, "seconds": time.perf_counter() - t0})


def _probe(ctx: AllocationContext, candidates: list, steps: int, lr: float, images: int,
           float_state: dict) -> tuple[list[dict], int]:
    """(one record per candidate with its held-out loss after ``steps`` probe steps, the held-out images used)."""
    x, y = gather_images(ctx.loaders["held_out"], images, ctx.device)
    batches = _first_batches(ctx.loaders["weights"], steps) if steps else []
    if steps and not batches:
        raise ValueError("probe: the training loader is empty")
    held_out = [(x[i:i + _CHUNK], y[i:i + _CHUNK]) for i in range(0, len(y), _CHUNK)]
    bn = has_batchnorm(ctx.model)
    bn_batches = batches or [(x[i:i + _CHUNK], None) for i in range(0, min(512, len(y)), _CHUNK)]
    teacher = ctx.teacher
    config = TrainConfig(epochs=1, lr=lr, distill_weight=0.5 if teacher is not None else 0.0)
    scored = []
    for bits, names, info in candidates:
        t = time.perf_counter()
        ctx.space.fix_(bits)
        if batches:
            torch.manual_seed(ctx.seed)
            fit(ctx.model, batches, config, device=ctx.device, teacher=teacher, desc="probe", loss_fn=ctx.loss_fn)
        if bn:
            recalibrate_bn_(ctx.model, bn_batches, device=ctx.device, batches=len(bn_batches))
        with torch.no_grad():
            loss = evaluate_loss(ctx.model, held_out, ctx.loss_fn or F.cross_entropy, device=ctx.device)
        ctx.model.load_state_dict(float_state)
        ctx.space.unfix_()
        scored.append({"methods": names, "bits": bits, "held_out_loss": loss,
                       "allocation_seconds": info["seconds"], "probe_seconds": time.perf_counter() - t})
    return scored, len(y)


def _refine(ctx: AllocationContext, bits: dict, options: dict, images: int,
            float_state: dict) -> tuple[dict, dict]:
    """``bits`` moved by :func:`mixbits.methods.refine.refine` (post-training), and what it did; the model's
    state (BatchNorm statistics re-estimated by the scoring) restored."""
    t = time.perf_counter()
    cost = ctx.space.cost
    units, balls, scored = refine_from(ctx, cost.to_units(bits), images, **options)
    ctx.model.load_state_dict(float_state)
    return cost.normalize(cost.to_layers(units)), {"balls": balls, "seconds": time.perf_counter() - t, **scored}


probe_allocation.preflight = _preflight  # type: ignore[attr-defined]
