"""DiffQ (Defossez, Adi & Synnaeve, 2021; PyPI ``diffq==0.2.4``) as a per-layer bitwidth allocator baseline.

DiffQ trains the weights with Gaussian noise whose scale follows a learnable number of bits per
parameter group, under ``loss = task + penalty * model_size``. With ``group_size=0`` there is one
group per weight tensor: one (continuous) bitwidth per layer. This script runs DiffQ from a float
checkpoint, chooses its weight learning rate on held-out data, bisects its penalty until the bits it
ends with, sized with mixbits' cost model, fit a mixbits budget, and hands back the per-layer bits
keyed like mixbits' layers, so that mixbits can fine-tune and evaluate the allocation like any other.

It runs in its own venv (``bash benchmarks/diffq_setup.sh`` makes ``/work/diffq-venv``): diffq 0.2.4
is an sdist with a Cython extension (bitpack), built there against CPU torch 2.13.0.

    /work/diffq-venv/bin/python benchmarks/diffq_baseline.py --model lenet5 --data mnist5k \\
        --checkpoint float.pt --target 16x --min-bits 1 --epochs 4 --seed 0 --out bits.json
    /work/diffq-venv/bin/python benchmarks/diffq_baseline.py --model digits_cnn --data digits \\
        --checkpoint float.pt --target 24x --min-bits 2 --out bits.json     # -> "unreachable"

What DiffQ is asked for (``DiffQuantizer`` at its defaults except where the allocation problem needs
otherwise):

- Defaults kept: ``min_bits=2`` (``--min-bits 1`` is the variant), ``max_bits=15``, ``init_bits=8``,
  ``param="bits"``, ``noise="gaussian"``, ``extra_bits=0``, ``float16=False``, ``detect_bound=True``.
  DiffQ's true quantizer is its own: per tensor, min/max uniform (asymmetric) over ``round(bits)``
  bits clamped to 1..15, two float32 scales per tensor.
- Changed: ``group_size=0`` (DiffQ's default 1 learns a bitwidth per *weight*: no per-layer allocation);
  ``min_size=0`` (the default 0.01 MB would leave every layer of these small models in float); and
  ``exclude`` = every parameter that is not a mixbits layer's weight (biases, BatchNorm), so DiffQ
  quantizes exactly the weights mixbits sizes.
- Training, after DiffQ's CIFAR recipe (examples/cifar: SGD momentum 0.9 Nesterov on the weights, a
  separate Adam on the bit logits through ``DiffQuantizer.setup_optimizer``, gradient norm clipped to
  5 over all model parameters, logits included): ``epochs`` epochs (default 4, what the search gets)
  on mixbits' weight split, batch 64, cosine-decayed weight learning rate (as mixbits' search), weight
  decay 5e-4 on weights with dim > 1 (as the search). ``loss = CE + penalty * q.model_size() / F``,
  with F the float32 size in MB of the quantized layers (mixbits' ``float_quantized_bits``): the
  penalty is DiffQ's penalty per MB times F (both are in the JSON).
- The bits' Adam learning rate: DiffQ's default 1e-3 is for 200 epochs (~78k steps on CIFAR-10); in 4
  epochs (68 steps on digits, 200 on mnist5k) Adam moves a logit by at most about ``lr`` per step, so
  1e-3 cannot take the bits from 8 to 2. ``--bits-lr auto`` (default) gives ``10 / total steps``:
  room for ~10 logit units, from 8 bits to the floor and back. Fixed here, not tuned.

Choosing the learning rate and the penalty:

- For each weight learning rate of ``--lrs`` (default SGD 0.001, 0.003, 0.01; ``--optimizer adam``
  for Adam), the penalty is bisected on a log scale to the smallest penalty whose mapped bits (below)
  are at or under the budget, sized by ``space.cost.quantized_bits``. Each run starts from the float
  checkpoint with the same seed.
- That run's accuracy on mixbits' held-out split (``split_held_out(n, 0.2, seed)``, never trained
  on, never the test split), with DiffQ's own quantizer at the mapped bits, picks the learning rate.
- A run that collapses (NaN/inf, or held-out accuracy at chance, <= 1.5 / classes) is retried with the
  learning rate divided by 3, then by 10; if no run of any learning rate fits without collapsing, the
  JSON reports ``"failed"`` and the runs instead of bits.

From DiffQ's continuous bits to mixbits' bits: DiffQ's ``b = min_bits + (max_bits - min_bits) *
sigmoid(logit)`` is rounded as DiffQ's quantizer rounds it, clamped to [min_bits, 8] (mixbits' integer
candidates stop at 8; 16/32 are float), then mapped down to the nearest mixbits candidate at or below
it (1, 2, 4, 8: 3 -> 2, 5..7 -> 4). Mapping down never makes the size larger than what was bisected;
it can take bits away from a layer DiffQ rounded to 3, 5, 6 or 7 (``diffq_bits_rounded`` keeps
DiffQ's own integers, and ``accuracy_diffq_quantizer_own_bits`` its accuracy at those).

Accuracies in the JSON (test split, after DiffQ's training, DiffQ's trained weights in every case):

- ``accuracy_diffq_quantizer``: DiffQ's own true quantizer (its eval-mode ``quantize()``) with the bit
  logits set to exactly the mapped mixbits bits: DiffQ's quantizer at the bits handed over.
- ``accuracy_diffq_quantizer_own_bits``: DiffQ's quantizer at its own rounded bits (may be more bits
  than handed over: its size is ``diffq_own_bits_size_bits`` in mixbits' accounting).
- ``accuracy_mixbits_quantizer``: mixbits' quantizers at the mapped bits (``space.fix_(bits)`` on a
  prepared copy holding DiffQ's trained weights), BatchNorm statistics re-estimated on weight-split
  batches (``recalibrate_bn_``, as mixbits does before every evaluation; nothing to do without BN),
  then ``mixbits.evaluate``; ``accuracy_mixbits_quantizer_no_bn_recal`` without that.

Cost models: mixbits counts a layer at b integer bits as ``numel * b + 16 * out_channels`` (a float16
scale per output channel); DiffQ counts ``numel * b + 64`` per tensor (+ a few bits for the bitwidth).
With min_bits=2 no layer can go below 2 bits, so mixbits' size is at least 2 bits per weight plus the
scales: ~15.5x at most. Every target at or above that (16x, 24x, 28x) is unreachable, and the JSON
says ``"unreachable"`` with no bits (no run is made).

The project's own venv has no DiffQ: from there, run this file with the DiffQ venv's python as a
subprocess and read ``--out``'s JSON (``bits`` is keyed like mixbits' layers and is complete).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from _provenance import stamp  # benchmarks/ is on sys.path when run as a script

__all__ = ["import_diffq", "DiffQSettings", "DiffQRun", "mixbits_bits", "train_diffq", "fit_penalty",
           "select_lr", "evaluate_diffq_at", "evaluate_mixbits_at"]

MIXBITS_CANDIDATES = (1, 2, 4, 8, 16, 32)
INTEGER_CANDIDATES = (1, 2, 4, 8)  # the integer widths DiffQ's bits can map onto
CLIP_NORM = 5.0  # DiffQ's CIFAR recipe (max_norm)
SUFFIX = "_diffq"


def import_diffq():
    import diffq

    return diffq


# ---------------------------------------------------------------------------- settings and runs
@dataclasses.dataclass(frozen=True)
class DiffQSettings:
    """DiffQ's quantizer settings (defaults: DiffQ's, but group_size/min_size; see the module doc) and training."""

    min_bits: int = 2
    max_bits: float = 15
    init_bits: float = 8
    group_size: int = 0
    min_size: float = 0.0
    noise: str = "gaussian"
    param: str = "bits"
    epochs: int = 4
    optimizer: str = "sgd"
    bits_lr: float = 1e-3
    weight_decay: float = 5e-4
    seed: int = 0


@dataclasses.dataclass
class DiffQRun:
    """One DiffQ training run.

    Attributes:
        penalty: the normalised penalty (per float size of the quantized layers).
        lr: the weight learning rate asked for; ``lr_used`` the one that did not collapse (or the last tried).
        bits_continuous: {layer: DiffQ's continuous bits at the end}.
        bits_rounded: {layer: round(bits) clamped to 1..15, what DiffQ's own quantizer uses}.
        bits: {layer: mapped mixbits bits}, or {} if the run diverged.
        size_bits: mixbits' size of ``bits`` (a huge number if diverged).
        held_out_accuracy: DiffQ's quantizer at ``bits`` on the held-out split (nan if diverged).
        collapsed: NaN/inf or chance accuracy on every learning rate tried.
        state: the trained weights (no DiffQ logits), for the final evaluation.
    """

    penalty: float
    lr: float
    lr_used: float
    bits_continuous: dict[str, float]
    bits_rounded: dict[str, int]
    bits: dict[str, int]
    size_bits: int
    fits: bool
    held_out_accuracy: float
    collapsed: bool
    attempts: list[dict[str, Any]]
    seconds: float
    logits: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)
    state: dict[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {"penalty": self.penalty, "lr": self.lr, "lr_used": self.lr_used, "size_bits": self.size_bits,
                "fits": self.fits, "held_out_accuracy": self.held_out_accuracy, "collapsed": self.collapsed,
                "bits": self.bits, "bits_rounded": self.bits_rounded,
                "bits_continuous": {k: round(v, 4) for k, v in self.bits_continuous.items()},
                "attempts": self.attempts, "seconds": round(self.seconds, 2)}


def mixbits_bits(rounded: Mapping[str, int], min_bits: int) -> dict[str, int]:
    """DiffQ's rounded bits -> mixbits candidates: clamp to [min_bits, 8], then the candidate at or below."""
    out = {}
    for name, b in rounded.items():
        b = int(min(8, max(min_bits, int(b))))
        out[name] = max(c for c in INTEGER_CANDIDATES if c <= b)
    return out


def _layer_names(space) -> list[str]:
    return [layer.name for layer in space.layers]


def _quantizer(model: nn.Module, layers: Sequence[str], s: DiffQSettings):
    from diffq import DiffQuantizer

    wanted = {f"{n}.weight" for n in layers}
    exclude = [n for n, _ in model.named_parameters() if n not in wanted]
    q = DiffQuantizer(model, min_size=s.min_size, group_size=s.group_size, min_bits=s.min_bits,
                      max_bits=s.max_bits, init_bits=s.init_bits, noise=s.noise, param=s.param, exclude=exclude)
    logits = {}
    for qp in q._qparams:
        if qp.other is not None:
            continue
        name = next(m for m, mod in model.named_modules() if mod is qp.module)
        logits[name] = qp.logit
    missing = [n for n in layers if n not in logits]
    if missing:
        raise RuntimeError(f"DiffQ did not quantize the mixbits layers {missing}")
    return q, logits


def _continuous_bits(q, logits: Mapping[str, torch.Tensor]) -> dict[str, float]:
    with torch.no_grad():
        return {n: float(q._get_bits(p.detach()).mean()) for n, p in logits.items()}


@torch.no_grad()
def _set_logits_to_bits(q, logits: Mapping[str, torch.Tensor], bits: Mapping[str, int]) -> None:
    """Set each logit so that DiffQ's rounded bits are exactly ``bits`` (param='bits' only)."""
    lo, hi = float(q.min_bits), float(q.max_bits)
    for n, p in logits.items():
        t = min(max((bits[n] - lo) / (hi - lo), 1e-6), 1 - 1e-6)
        p.fill_(math.log(t / (1 - t)))
        assert int(q._get_bits(p).round().clamp(1, 15).item()) == bits[n], (n, bits[n])


def _accuracy(model: nn.Module, loader) -> float:
    import mixbits

    return float(mixbits.evaluate(model, loader))


def evaluate_diffq_at(model: nn.Module, q, logits: Mapping[str, torch.Tensor], bits: Mapping[str, int] | None,
                      loader) -> float:
    """Accuracy with DiffQ's own true quantizer (eval mode quantizes), at ``bits`` or at its own bits (None)."""
    saved = {n: p.detach().clone() for n, p in logits.items()}
    try:
        if bits is not None:
            _set_logits_to_bits(q, logits, bits)
        return _accuracy(model, loader)  # model.eval(): DiffQ's pre-forward hook quantizes, the post hook restores
    finally:
        with torch.no_grad():
            for n, p in logits.items():
                p.copy_(saved[n])
        model.train()


def evaluate_mixbits_at(new_model, state: Mapping[str, torch.Tensor], bits: Mapping[str, int], loader,
                        bn_loader=None) -> float:
    """Accuracy with mixbits' quantizers at ``bits`` on a prepared copy holding ``state`` (DiffQ's trained weights)."""
    import mixbits

    m = new_model()
    m.load_state_dict(state)
    space = mixbits.prepare_(m, mixbits.PrepareConfig(candidates=MIXBITS_CANDIDATES))
    space.fix_(dict(bits))
    if bn_loader is not None:
        mixbits.recalibrate_bn_(m, bn_loader)
    return float(mixbits.evaluate(m, loader))


def _cosine(step: int, total: int, peak: float) -> float:
    return 0.5 * peak * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def _train_once(new_model, layers: Sequence[str], cost, float_mb: float, penalty: float, lr: float,
                s: DiffQSettings, loaders: Mapping[str, Any], budget: int) -> dict[str, Any]:
    torch.manual_seed(s.seed)
    model = new_model().train()
    q, logits = _quantizer(model, layers, s)
    logit_ids = {id(p) for p in logits.values()}
    weights = [p for p in model.parameters() if id(p) not in logit_ids]
    groups = [{"params": [p for p in weights if p.dim() > 1], "weight_decay": s.weight_decay},
              {"params": [p for p in weights if p.dim() <= 1], "weight_decay": 0.0}]
    if s.optimizer == "sgd":
        w_opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    elif s.optimizer == "adam":
        w_opt = torch.optim.Adam(groups, lr=lr)
    else:
        raise ValueError(f"unknown optimizer {s.optimizer!r}")
    b_opt = torch.optim.Adam([{"params": []}])
    q.setup_optimizer(b_opt, lr=s.bits_lr)  # DiffQ's own: a separate Adam, no weight decay on the logits
    loader = loaders["weights"]()  # a fresh loader: every run sees the same batches in the same order
    total = s.epochs * len(loader)
    step, finite = 0, True
    for _ in range(s.epochs):
        for x, y in loader:
            for g in w_opt.param_groups:
                g["lr"] = _cosine(step, total, lr)
            task = F.cross_entropy(model(x), y)
            loss = task + penalty * q.model_size() / float_mb
            if not torch.isfinite(loss):
                finite = False
                break
            w_opt.zero_grad(set_to_none=True)
            b_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            w_opt.step()
            b_opt.step()
            step += 1
        if not finite:
            break
    finite = finite and all(torch.isfinite(p).all() for p in model.parameters())
    out: dict[str, Any] = {"finite": finite}
    if not finite:
        q.detach()
        return out
    cont = _continuous_bits(q, logits)
    with torch.no_grad():  # exactly as DiffQ's quantizer rounds (_quantize_param)
        rounded = {n: int(q._get_bits(p.detach()).round().clamp(1, 15).item()) for n, p in logits.items()}
    bits = mixbits_bits(rounded, s.min_bits)
    size = cost.quantized_bits(bits)
    held = evaluate_diffq_at(model, q, logits, bits, loaders["held_out"])
    out.update(model=model, q=q, logits=logits, cont=cont, rounded=rounded, bits=bits, size=size,
               held=held, logit_values={n: p.detach().clone() for n, p in logits.items()})
    return out


def rebuild(new_model, layers: Sequence[str], s: DiffQSettings, state: Mapping[str, torch.Tensor],
            logit_values: Mapping[str, torch.Tensor]):
    """A run's trained model with a fresh DiffQuantizer holding its trained logits: (model, quantizer, logits)."""
    model = new_model()
    model.load_state_dict(dict(state))
    q, logits = _quantizer(model, layers, s)
    q.no_optimizer()
    with torch.no_grad():
        for n, p in logits.items():
            p.copy_(logit_values[n])
    return model, q, logits


def train_diffq(new_model, layers: Sequence[str], cost, penalty: float, lr: float, s: DiffQSettings,
                loaders: Mapping[str, Any], budget: int, num_classes: int, *,
                fallback: Sequence[float] = (3.0, 10.0), log=print) -> DiffQRun:
    """One DiffQ run at ``penalty`` and weight learning rate ``lr``, retried at lr/3, lr/10 if it collapses.

    ``loaders["weights"]`` is a factory of the training loader, ``loaders["held_out"]`` a loader.
    The run keeps its trained weights and logits (:func:`rebuild` makes the model again).
    """
    float_mb = cost.float_quantized_bits() / 8 / 2**20
    chance = 1.5 / num_classes
    t0 = time.perf_counter()
    attempts, res, lr_used = [], None, lr
    for div in (1.0, *fallback):
        lr_used = lr / div
        t = time.perf_counter()
        r = _train_once(new_model, layers, cost, float_mb, penalty, lr_used, s, loaders, budget)
        collapsed = (not r["finite"]) or r["held"] <= chance
        attempts.append({"lr": lr_used, "finite": r["finite"], "held_out_accuracy": r.get("held", float("nan")),
                         "size_bits": r.get("size"), "collapsed": collapsed,
                         "seconds": round(time.perf_counter() - t, 2)})
        if res is not None and "q" in res:
            res["q"].detach()
        res = r
        if not collapsed:
            break
        log(f"    collapsed at penalty {penalty:.4g}, lr {lr_used:g} "
            f"({'non-finite' if not r['finite'] else 'held-out %.3f' % r['held']}); "
            + ("retrying with a smaller lr" if div != fallback[-1] else "giving up"))
    assert res is not None
    collapsed = attempts[-1]["collapsed"]
    if not res["finite"]:
        return DiffQRun(penalty=penalty, lr=lr, lr_used=lr_used, bits_continuous={}, bits_rounded={}, bits={},
                        size_bits=2**62, fits=False, held_out_accuracy=float("nan"), collapsed=True,
                        attempts=attempts, seconds=time.perf_counter() - t0)
    state = {k: v.detach().clone() for k, v in res["model"].state_dict().items() if not k.endswith(SUFFIX)}
    run = DiffQRun(penalty=penalty, lr=lr, lr_used=lr_used, bits_continuous=res["cont"], bits_rounded=res["rounded"],
                   bits=res["bits"], size_bits=res["size"], fits=res["size"] <= budget,
                   held_out_accuracy=res["held"], collapsed=collapsed, attempts=attempts,
                   seconds=time.perf_counter() - t0, logits=res["logit_values"], state=state)
    res["q"].detach()
    return run


def fit_penalty(train, budget: int, *, start: float = 1.0, max_runs: int = 9, ratio: float = 1.25,
                log=print) -> tuple[DiffQRun | None, list[DiffQRun]]:
    """Bisect the penalty (log scale) to the smallest one whose mapped bits fit ``budget``.

    ``train(penalty)`` gives a :class:`DiffQRun`. A diverged run counts as "penalty too large" (it
    has no bits), a collapsed one steers the bisection by its size but is never chosen. Returns the
    chosen run (the smallest fitting penalty among non-collapsed runs; None if there is none) and all runs.
    """
    memo: dict[float, DiffQRun] = {}

    def run(p: float) -> DiffQRun:
        if p not in memo:
            r = train(p)
            memo[p] = r
            log(f"  penalty {p:<10.4g} lr {r.lr_used:<7g} size {r.size_bits if r.bits else '-':>8} "
                f"fits {str(r.fits):<5} held-out {r.held_out_accuracy:.4f} bits {r.bits} "
                f"{'COLLAPSED ' if r.collapsed else ''}({r.seconds:.1f}s)")
        return memo[p]

    def fits(p: float) -> bool:
        r = run(p)
        return r.fits or not r.bits  # diverged: treat as too large a penalty

    lo = hi = None
    p = start
    if fits(p):
        hi = p
        for _ in range(3):
            p /= 10
            if fits(p):
                hi = p
            else:
                lo = p
                break
    else:
        lo = p
        for _ in range(5):
            p *= 10
            if fits(p):
                hi = p
                break
            lo = p
    while lo is not None and hi is not None and len(memo) < max_runs and hi / lo > ratio:
        mid = math.sqrt(lo * hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    ok = [r for r in memo.values() if r.fits and r.bits and not r.collapsed]
    best = min(ok, key=lambda r: r.penalty) if ok else None
    return best, list(memo.values())


def select_lr(lrs: Sequence[float], train_at, budget: int, *, max_runs: int, log=print
              ) -> tuple[DiffQRun | None, dict[float, tuple[DiffQRun | None, list[DiffQRun]]]]:
    """Bisect the penalty for each weight lr; pick the lr whose fitting run is best on the held-out split."""
    per_lr: dict[float, tuple[DiffQRun | None, list[DiffQRun]]] = {}
    start = 1.0
    for lr in lrs:
        log(f"lr {lr:g}:")
        best, runs = fit_penalty(lambda p, lr=lr: train_at(p, lr), budget, start=start, max_runs=max_runs, log=log)
        per_lr[lr] = (best, runs)
        if best is not None:
            start = best.penalty  # the next lr's bisection starts where this one ended
            log(f"  -> lr {lr:g}: penalty {best.penalty:.4g}, size {best.size_bits}, "
                f"held-out {best.held_out_accuracy:.4f}")
        else:
            log(f"  -> lr {lr:g}: no fitting run that did not collapse")
    cands = [b for b, _ in per_lr.values() if b is not None]
    chosen = max(cands, key=lambda r: (r.held_out_accuracy, r.size_bits, -r.lr)) if cands else None
    return chosen, per_lr


# ---------------------------------------------------------------------------- CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a mixbits zoo name, e.g. lenet5, digits_cnn")
    p.add_argument("--data", required=True, help="a mixbits data set, e.g. mnist5k, digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--checkpoint", required=True, help="float checkpoint (a run's float.pt or a state_dict)")
    p.add_argument("--target", required=True, help="a mixbits target, e.g. 16x, 300KB, 2.5bits")
    p.add_argument("--min-bits", type=int, default=2, choices=(1, 2), help="DiffQ's min_bits (its default: 2)")
    p.add_argument("--max-bits", type=float, default=15, help="DiffQ's max_bits (its default: 15)")
    p.add_argument("--init-bits", type=float, default=8, help="DiffQ's init_bits (its default: 8)")
    p.add_argument("--epochs", type=int, default=4, help="DiffQ training epochs per run (the search's weight epochs)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"), help="weight optimizer")
    p.add_argument("--lrs", default="0.001,0.003,0.01", help="weight learning rates tried (held-out choice)")
    p.add_argument("--bits-lr", default="auto", help="Adam lr of DiffQ's bit logits; auto: 10 / total steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--held-out-fraction", type=float, default=0.2)
    p.add_argument("--max-runs", type=int, default=9, help="DiffQ runs at most per learning rate when bisecting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def _write(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


def _setup(args: argparse.Namespace):
    """(data set, a function making a fresh float model, the float model's space, its loaders)."""
    import mixbits
    from mixbits.data import TensorLoader, load_dataset, split_held_out
    from mixbits.models import create_model
    from mixbits.pipeline import load_float_state

    ds = load_dataset(args.data, root=args.data_root)
    c, h = ds.input_shape[0], ds.input_shape[-1]
    float_model = create_model(args.model, in_channels=c, num_classes=ds.num_classes, input_size=h)
    load_float_state(float_model, args.checkpoint)
    float_state = copy.deepcopy(float_model.state_dict())

    def new_model():
        m = create_model(args.model, in_channels=c, num_classes=ds.num_classes, input_size=h)
        m.load_state_dict(float_state)
        return m

    space = mixbits.prepare_(copy.deepcopy(float_model), mixbits.PrepareConfig(candidates=MIXBITS_CANDIDATES))
    w_idx, h_idx = split_held_out(len(ds.train_y), args.held_out_fraction, args.seed)
    norm = dict(mean=ds.mean, std=ds.std)
    loaders = {
        "weights": lambda: TensorLoader(ds.train_x[w_idx], ds.train_y[w_idx], batch_size=args.batch_size,
                                        shuffle=True, augment=ds.augment, drop_last=True, seed=args.seed + 1, **norm),
        "held_out": TensorLoader(ds.train_x[h_idx], ds.train_y[h_idx], batch_size=512, **norm),
        "bn": TensorLoader(ds.train_x[w_idx], ds.train_y[w_idx], batch_size=args.batch_size, shuffle=True,
                           seed=args.seed + 3, **norm),
        "test": TensorLoader(ds.test_x, ds.test_y, batch_size=512, **norm),
    }
    return ds, new_model, space, loaders


def _report_head(args: argparse.Namespace, diffq, s: DiffQSettings, budget: int, steps: int, lrs: list[float],
                 float_mb: float) -> dict[str, Any]:
    """The settings half of the report: what ran, with which DiffQ and training settings."""
    import mixbits

    return {
        "model": args.model, "data": args.data, "float": args.checkpoint, "target": args.target,
        "min_bits": args.min_bits, "budget_bits": budget,
        "diffq": {"version": getattr(diffq, "__version__", "?"), "min_bits": s.min_bits, "max_bits": s.max_bits,
                  "init_bits": s.init_bits, "group_size": s.group_size, "min_size": s.min_size, "noise": s.noise,
                  "param": s.param, "exclude": "every parameter but the mixbits layers' weights"},
        "training": {"epochs": s.epochs, "steps": steps, "batch_size": args.batch_size, "optimizer": s.optimizer,
                     "momentum": 0.9 if s.optimizer == "sgd" else None, "nesterov": s.optimizer == "sgd",
                     "weight_decay": s.weight_decay, "schedule": "cosine", "bits_optimizer": "adam",
                     "bits_lr": s.bits_lr, "bits_lr_rule": "10 / steps" if args.bits_lr == "auto" else "given",
                     "clip_grad_norm": CLIP_NORM, "lr_grid": lrs, "data": "mixbits weight split",
                     "held_out_fraction": args.held_out_fraction, "float_mb": float_mb},
        "mapping": "DiffQ bits rounded (as its quantizer), clamped to [min_bits, 8], mapped to the mixbits "
                   "candidate at or below (1, 2, 4, 8)",
        "seed": args.seed,
        "versions": {"torch": torch.__version__, "diffq": getattr(diffq, "__version__", "?"),
                     "mixbits": mixbits.__version__},
        **stamp(),
    }


def _unreachable(args: argparse.Namespace, cost, layers: Sequence[str], budget: int) -> dict[str, Any] | None:
    """Why the target cannot be met with ``min_bits`` (every layer keeps at least that), or None."""
    floor_bits = cost.quantized_bits({n: mixbits_bits({n: args.min_bits}, args.min_bits)[n] for n in layers})
    if floor_bits <= budget:
        return None
    return {"unreachable": (
        f"with min_bits={args.min_bits} every layer keeps at least {args.min_bits} bits: mixbits' smallest size "
        f"is {floor_bits} bits ({cost.float_quantized_bits() / floor_bits:.2f}x, the per-channel float16 scales "
        f"included), above the {args.target} budget of {budget} bits"),
        "max_weight_compression": cost.float_quantized_bits() / floor_bits}


def _failed(per_lr: Mapping[float, tuple], budget: int, lrs: list[float]) -> str:
    """Why no DiffQ run fit the budget without collapsing."""
    all_runs = [r for _, rs in per_lr.values() for r in rs]
    fitting = [r for r in all_runs if r.fits]
    smallest = min((r.size_bits for r in all_runs if r.bits), default=None)
    return (f"no DiffQ run fit {budget} bits without collapsing (NaN or chance held-out accuracy) with lrs {lrs} "
            f"and retries at lr/3, lr/10: {len(all_runs)} runs, {len(fitting)} fitting"
            f"{' (all collapsed)' if fitting else ''}, smallest size reached {smallest} bits, "
            f"penalties up to {max(r.penalty for r in all_runs):g}")


def _evaluate_chosen(chosen: DiffQRun, new_model, layers: Sequence[str], s: DiffQSettings, loaders, space
                     ) -> dict[str, Any]:
    """The chosen run's accuracies under DiffQ's quantizer and mixbits', with its sizes."""
    cost = space.cost
    model, q, logits = rebuild(new_model, layers, s, chosen.state, chosen.logits)
    bits = chosen.bits
    check = evaluate_diffq_at(model, q, logits, bits, loaders["held_out"])
    if abs(check - chosen.held_out_accuracy) > 1e-9:
        raise RuntimeError(f"rebuilt DiffQ model: held-out {check} != {chosen.held_out_accuracy} of the run")
    acc_dq = evaluate_diffq_at(model, q, logits, bits, loaders["test"])
    acc_dq_own = evaluate_diffq_at(model, q, logits, None, loaders["test"])
    own_size = sum(layer.num_weights * chosen.bits_rounded[layer.name] + 16 * layer.num_channels
                   for layer in space.layers)
    dq_true_mb = float(q.true_model_size())
    q.detach()
    size = cost.quantized_bits(bits)
    return {
        "bits": bits, "size_bits": size, "size_bytes": size / 8,
        "weight_compression": cost.weight_compression(bits), "average_bits": cost.average_bits(bits),
        "penalty": chosen.penalty, "penalty_per_mb": chosen.penalty / (cost.float_quantized_bits() / 8 / 2**20),
        "lr": chosen.lr_used, "held_out_accuracy": chosen.held_out_accuracy,
        "accuracy_float": _accuracy(new_model(), loaders["test"]),
        "accuracy_diffq_quantizer": acc_dq,
        "accuracy_diffq_quantizer_own_bits": acc_dq_own,
        "accuracy_mixbits_quantizer": evaluate_mixbits_at(new_model, chosen.state, bits, loaders["test"],
                                                          bn_loader=loaders["bn"]),
        "accuracy_mixbits_quantizer_no_bn_recal": evaluate_mixbits_at(new_model, chosen.state, bits, loaders["test"]),
        "accuracy_notes": ACCURACY_NOTES,
        "diffq_bits_continuous": {k: round(v, 4) for k, v in chosen.bits_continuous.items()},
        "diffq_bits_rounded": chosen.bits_rounded,
        "diffq_own_bits_size_bits": own_size,
        "diffq_true_model_size_mb": dq_true_mb,
    }


ACCURACY_NOTES = {
    "accuracy_diffq_quantizer": "test split; DiffQ's true quantizer (per tensor min/max uniform, eval-mode "
                                "quantize()) with the logits set to exactly `bits`",
    "accuracy_diffq_quantizer_own_bits": "test split; DiffQ's quantizer at its own rounded bits "
                                         "(`diffq_bits_rounded`, may exceed the budget)",
    "accuracy_mixbits_quantizer": "test split; mixbits' quantizers, space.fix_(bits) on a prepared copy of "
                                  "DiffQ's trained weights, BN re-estimated on weight-split batches",
    "accuracy_mixbits_quantizer_no_bn_recal": "the same without BN re-estimation",
    "held_out_accuracy": "held-out split (20% of train), DiffQ's quantizer at `bits`: chose the lr",
    "no fine-tuning": "none of these fine-tunes after DiffQ's training"}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import mixbits

    diffq = import_diffq()
    t_start = time.perf_counter()
    ds, new_model, space, loaders = _setup(args)
    cost = space.cost
    layers = _layer_names(space)
    budget = mixbits.budget_bits(args.target, cost)
    steps = args.epochs * len(loaders["weights"]())
    bits_lr = 10.0 / steps if args.bits_lr == "auto" else float(args.bits_lr)
    s = DiffQSettings(min_bits=args.min_bits, max_bits=args.max_bits, init_bits=args.init_bits, epochs=args.epochs,
                      optimizer=args.optimizer, bits_lr=bits_lr, seed=args.seed)
    lrs = [float(x) for x in args.lrs.split(",")]
    float_mb = cost.float_quantized_bits() / 8 / 2**20
    report = _report_head(args, diffq, s, budget, steps, lrs, float_mb)
    unreachable = _unreachable(args, cost, layers, budget)
    if unreachable is not None:
        report.update(unreachable, seconds=round(time.perf_counter() - t_start, 2))
        print(f"unreachable: {report['unreachable']}")
        _write(args.out, report)
        return 0

    def train_at(penalty: float, lr: float) -> DiffQRun:
        return train_diffq(new_model, layers, cost, penalty, lr, s, loaders, budget, ds.num_classes)

    print(f"{args.model}/{args.data} target {args.target} = {budget} bits, min_bits {args.min_bits}, "
          f"{s.epochs} epochs ({steps} steps), bits lr {bits_lr:.4g}, lrs {lrs}")
    chosen, per_lr = select_lr(lrs, train_at, budget, max_runs=args.max_runs)
    runs = [r.record() for _, rs in per_lr.values() for r in rs]
    report["runs"] = runs
    report["per_lr"] = {f"{lr:g}": (None if b is None else {"penalty": b.penalty, "lr_used": b.lr_used,
                                                            "held_out_accuracy": b.held_out_accuracy,
                                                            "size_bits": b.size_bits})
                        for lr, (b, _) in per_lr.items()}
    if chosen is None:
        report.update(failed=_failed(per_lr, budget, lrs), seconds=round(time.perf_counter() - t_start, 2))
        print(f"failed: {report['failed']}")
        _write(args.out, report)
        return 1
    report.update(_evaluate_chosen(chosen, new_model, layers, s, loaders, space), lr_chosen_from_grid=chosen.lr,
                  num_runs=sum(len(r["attempts"]) for r in runs), seconds=round(time.perf_counter() - t_start, 2))
    bits = report["bits"]
    width = max(len(n) for n in bits)
    for layer in space.layers:
        print(f"  {layer.name:<{width}}  {bits[layer.name]:>2} bits  (DiffQ {chosen.bits_continuous[layer.name]:.2f} "
              f"-> {chosen.bits_rounded[layer.name]})  {layer.num_weights:>8} weights")
    print(f"mixbits size {report['size_bits']} bits ({report['weight_compression']:.2f}x), budget {budget}; penalty "
          f"{chosen.penalty:.4g}, lr {chosen.lr_used:g}; held-out {chosen.held_out_accuracy:.4f}; test: float "
          f"{report['accuracy_float']:.4f}, DiffQ quantizer {report['accuracy_diffq_quantizer']:.4f} (own bits "
          f"{report['accuracy_diffq_quantizer_own_bits']:.4f}), mixbits quantizer "
          f"{report['accuracy_mixbits_quantizer']:.4f} (no BN recal "
          f"{report['accuracy_mixbits_quantizer_no_bn_recal']:.4f}); {report['seconds']:.1f} s")
    _write(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
