"""How good is each method's allocation? Its accuracy against the best allocation that exists.

Regimes (every method allocates on the frozen float weights of one committed checkpoint):

- ``post``: the bits fixed, no weight update, BatchNorm statistics re-estimated on training
  batches, then the test accuracy;
- ``ft1``: the same bits, then ONE epoch of fine-tuning at them (distilled from the float
  model, every method the same epoch: compute-matched), BatchNorm re-estimated, test accuracy.

The reference per (model, target, seed):

- ``exhaustive`` (models with few layers): every assignment whose size is 85-100% of the
  budget, each scored by its held-out loss (the fixed held-out part of the TRAINING split,
  BatchNorm re-estimated per assignment); the best by held-out loss is the reference, its
  accuracy measured on the test split like every method's. In ``ft1`` the reference is that
  same assignment fine-tuned for the epoch (the post-training optimum, not an ft1 optimum);
- ``evolution:N`` (models too large to enumerate): the ``evolution`` method (EvoPress-style)
  with N held-out-loss evaluations.

Every accuracy is measured on a fresh row of the seed (``start_row``): the BatchNorm batches and the
fine-tuning stream depend on the bits and the seed only, so equal bits give equal rows whatever the method
read. ``--reevaluate`` measures the newest rows of a model again from their recorded bits (no allocation),
the commit that allocated them kept in ``bits_commit``.

Rows are appended to the CSV as they finish (a killed run keeps its rows, and a rerun skips the
(model, regime, method, target, seed) rows already there, whatever commit wrote them); ``--report``
rewrites the Markdown summary from the CSV.

    OMP_NUM_THREADS=1 python benchmarks/allocation_quality.py --model lenet5 --data mnist5k \\
        --checkpoint benchmarks/checkpoints/lenet5_mnist5k_e60.pt --targets 8x 16x 24x 28x --seeds 0 1 2
    python benchmarks/allocation_quality.py --report

Post-training peers (MCT, NNCF's HAWQ, AIMET's AMP) allocate in their own venvs with
``benchmarks/peer_allocation.py`` (its docstring has the commands); their JSON is scored here:

    OMP_NUM_THREADS=1 python benchmarks/allocation_quality.py --peer-bits benchmarks/results/peer_bits/*.json

The character-level LM (``benchmarks/charlm.py``; test perplexity in ``test_accuracy``, ``metric`` perplexity;
``--data`` not needed; the reference must be ``evolution:N``):

    OMP_NUM_THREADS=1 python benchmarks/allocation_quality.py --model charlm \\
        --checkpoint benchmarks/checkpoints/charlm_py_s4000.pt --targets 16x 24x 28x --reference evolution:200
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import command_line, describe, stamp  # noqa: E402
import charlm  # noqa: E402

import mixbits  # noqa: E402

from mixbits.methods.scoring import HeldOutScorer  # noqa: E402
from mixbits.pipeline import Settings  # noqa: E402
from mixbits.pipeline.allocation import allocate_bits, rewind_streams_, start_row  # noqa: E402
from mixbits.pipeline.data import build_data  # noqa: E402
from mixbits.pipeline.finetune import finetune_and_evaluate  # noqa: E402
from mixbits.pipeline.float_model import check_targets, load_float_state, new_model  # noqa: E402
from mixbits.pipeline.allocation import prepare_config  # noqa: E402
from mixbits.train import evaluate, recalibrate_bn_  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CSV_PATH = RESULTS / "allocation_quality.csv"
MD_PATH = RESULTS / "allocation_quality.md"
FIELDS = ("model", "regime", "method", "target", "seed", "weight_compression", "test_accuracy", "reference_accuracy",
          "reference", "seconds", "metric", "held_out_loss", "size_bits", "budget_bits", "bits", "commit", "dirty",
          "machine", "bits_commit")

# label -> (registered method, options). Rows labelled <method>_hutchinson: see HUTCHINSON_ROWS below; the
# label ``hessian_hutchinson`` reruns that estimator. Rows labelled hardsearch_adam (optimizer "adam") and
# hardsearch_reinforce (estimator "reinforce", 60 steps, lr 0.5) in the CSV come from commits
# fdfcbff and 8d3ed54, before those options were removed for losing to straight-through SGD.
# Rows labelled evolution_kl (evolution scored by the KL divergence from the float model's
# predictions instead of the labels' cross-entropy) come from commit fe9e517; that objective was
# removed for not beating cross-entropy (ResNet-20 post-training, 3 seeds: 72.2% against 72.4% at
# 24x, 67.6% against 68.0% at 28x; the same post-training accuracy on LeNet-5 and the digits CNN
# at every target and seed).
METHODS = {
    "uniform": ("uniform", {}),
    "random": ("random", {}),
    "hessian": ("hessian", {}),
    "hessian_hutchinson": ("hessian", {"estimator": "hutchinson"}),
    "search": ("search", {"train_weights": False, "warmup_epochs": 0}),
    "hardsearch": ("hardsearch", {}),
    "hardsearch_noselect": ("hardsearch", {"select": False}),
    "evolution": ("evolution", {}),
    # fracbits rows labelled fracbits_sgd (optimizer "sgd", lr 1.0) and fracbits_slope (scores "slope") come from
    # commits 4b2ffa4 (lenet5) and 29cba4f (digits_cnn), without the Hessian candidate, before those options were removed
    "fracbits": ("fracbits", {}),
    "fracbits_nohessian": ("fracbits", {"hessian_candidate": False}),
    "fracbits_hessian": ("fracbits", {"init": "hessian"}),
    "fracbits_noselect": ("fracbits", {"select": False}),
    "pairwise": ("pairwise", {}),
    "pairwise_single": ("pairwise", {"interactions": False}),
    "probe": ("probe", {}),
    "probe_norefine": ("probe", {"refine": False}),
    "exhaustive": ("exhaustive", {}),
    "refine": ("refine", {}),
}

# Methods whose answer depends on whether fine-tuning follows (``probe`` fine-tunes its candidates briefly
# unless post-training): they allocate once per regime, with ``post_training`` set for ``post``. Every
# other method allocates once on the frozen float weights and both regimes use those bits.
REGIME_DEPENDENT = {"probe"}

log = logging.getLogger("allocation_quality")


def _allocation_groups(name: str, regimes: list[str]) -> list[list[str]]:
    """The regimes that share one allocation: each alone for a regime-dependent method, else all together."""
    return [[r] for r in regimes] if name in REGIME_DEPENDENT else [regimes]


def _append(row: dict) -> None:
    new = not CSV_PATH.exists()
    if not new:
        _upgrade_header()
    with CSV_PATH.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()


def _upgrade_header() -> None:
    """Rewrite the CSV with today's columns when it was written with fewer (new columns blank), through a
    temporary file renamed over it, so a crash leaves the old file whole."""
    with CSV_PATH.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) == FIELDS:
            return
        unknown = set(reader.fieldnames or ()) - set(FIELDS)
        if unknown:
            raise ValueError(f"{CSV_PATH} has columns {sorted(unknown)} this script does not know: is it another "
                             f"benchmark's file?")
        rows = list(reader)
    tmp = CSV_PATH.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, restval="")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(CSV_PATH)


def _newest(rows: list[dict]) -> list[dict]:
    """The last row appended for each (model, regime, method, target, seed): a row run again with ``--redo``
    replaces the earlier one in the report (the CSV keeps both)."""
    last = {(r["model"], r["regime"], r["method"], r["target"], r["seed"]): r for r in rows}
    return list(last.values())


def _done() -> set:
    if not CSV_PATH.exists():
        return set()
    with CSV_PATH.open() as f:
        return {(r["model"], r["regime"], r["method"], r["target"], r["seed"]) for r in csv.DictReader(f)}


def _earlier_bits() -> dict:
    """{(model, method, target, seed): (bits, seconds, reference name)} of the ``post`` rows already in the CSV."""
    if not CSV_PATH.exists():
        return {}
    with CSV_PATH.open() as f:
        return {(r["model"], r["method"], r["target"], r["seed"]): (json.loads(r["bits"]), float(r["seconds"]),
                                                                    r["reference"])
                for r in csv.DictReader(f) if r["regime"] == "post" and r["bits"]}


def _enumerate_band(costs: dict, budget: int, low: float = 0.85):
    names = list(costs)
    floor = math.ceil(low * budget)
    for combo in itertools.product(*[sorted(costs[n]) for n in names]):
        total = sum(costs[n][b] for n, b in zip(names, combo))
        if floor <= total <= budget:
            yield dict(zip(names, combo))


def _post_accuracy(row, bits) -> float:
    row.model.load_state_dict(row.float_state)
    row.space.fix_(bits)
    rewind_streams_(row)  # the BatchNorm batches of the seed, whatever the method read
    recalibrate_bn_(row.model, row.loaders["full"], device=row.device)
    with torch.no_grad():
        return evaluate(row.model, row.loaders["test"], device=row.device)


def _ft1_accuracy(row, settings, bits) -> float:
    row.model.load_state_dict(row.float_state)
    return finetune_and_evaluate(row, settings, bits, 0.0).test_accuracy  # from the row's starting streams


def _accuracy(settings, data, float_state, seed: int, regime: str, bits) -> float:
    """The test accuracy of ``bits`` in ``regime``, measured on a fresh row of ``seed`` (nothing a method did to
    its own row reaches it)."""
    row = start_row(settings, data, float_state, seed)
    return _post_accuracy(row, bits) if regime == "post" else _ft1_accuracy(row, settings, bits)


def _charlm_rows() -> dict:
    """{(regime, target, seed): perplexity} of the charlm reference rows already in the CSV."""
    if not CSV_PATH.exists():
        return {}
    with CSV_PATH.open() as f:
        return {(r["regime"], r["target"], r["seed"]): float(r["test_accuracy"]) for r in csv.DictReader(f)
                if r["model"] == "charlm" and r["method"] == "reference"}


def _charlm_row(float_model: torch.nn.Module, seed: int):
    """A fresh prepared copy of the float LM (every Linear/Embedding prepare_ finds; the tied head is one
    decision), its space, the float teacher and the loaders seeded by ``seed``."""
    model = charlm.CharLM(float_model.config)
    model.load_state_dict(float_model.state_dict())
    teacher = charlm.CharLM(float_model.config)
    teacher.load_state_dict(float_model.state_dict())
    teacher.eval()
    space = mixbits.prepare_(model, mixbits.PrepareConfig())
    return model, space, teacher


def _charlm_perplexity(model, space, teacher, corpus, float_state, bits, regime: str, seed: int) -> float:
    """Test perplexity at ``bits``: fixed on the float weights (post), or after one distilled epoch (ft1) on
    fresh loaders of the seed (the same stream whatever the method read)."""
    model.load_state_dict(float_state)
    loaders = charlm.loaders(corpus, model.config.context, seed=seed)
    if regime == "ft1":  # the pipeline's fine-tuning (mixbits.pipeline.finetune): SGD, lr 0.01, distill 0.5
        torch.manual_seed(seed)
        mixbits.finetune_(model, space, bits, loaders["train"],
                          mixbits.TrainConfig(epochs=1, lr=Settings().finetune_lr, distill_weight=0.5),
                          teacher=teacher)
    else:
        space.fix_(bits)
    return charlm.perplexity(model, loaders["test"])


def run_charlm(args: argparse.Namespace) -> None:
    """The character-level LM: every method through the public API, test perplexity in ``test_accuracy``."""
    if not args.checkpoint:
        raise SystemExit("--model charlm needs --checkpoint (e.g. benchmarks/checkpoints/charlm_py_s4000.pt)")
    RESULTS.mkdir(exist_ok=True)
    st, machine = stamp(), describe()
    float_model, record = charlm.load_checkpoint(args.checkpoint)
    corpus = charlm.build_corpus(record["corpus"])
    float_state = {k: v.clone() for k, v in float_model.state_dict().items()}
    if args.reevaluate:
        def measure(seed: int, regime: str, bits) -> float:
            model, space, teacher = _charlm_row(float_model, seed)
            return _charlm_perplexity(model, space, teacher, corpus, float_state, bits, regime, seed)
        reevaluate("charlm", args.regimes, args.seeds, measure)
        report()
        return
    model, space, _ = _charlm_row(float_model, 0)
    budgets = {t: mixbits.budget_bits(t, space.cost) for t in args.targets}  # an unreachable target fails here
    for label, extra in json.loads(args.options).items():
        METHODS[label] = (METHODS[label][0], {**METHODS[label][1], **extra})
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method labels {unknown}; known: {', '.join(METHODS)}")
    if args.reference != "none" and not args.reference.startswith("evolution:"):
        raise SystemExit("--model charlm: the reference must be evolution:N or none (enumeration is impossible)")
    done, earlier_ref = (set() if args.redo else _done()), _charlm_rows()
    for seed in args.seeds:
        for target in args.targets:
            budget = budgets[target]
            ref, ref_name = {}, ""
            if args.reference != "none":
                n = int(args.reference.split(":")[1])
                ref_name = f"evolution({n} held-out-loss evaluations)"
                ref = {r: earlier_ref[(r, target, str(seed))] for r in args.regimes
                       if (r, target, str(seed)) in earlier_ref}
                if len(ref) < len(args.regimes):
                    model, space, teacher = _charlm_row(float_model, seed)
                    loaders = charlm.loaders(corpus, float_model.config.context, seed=seed)
                    t0 = time.perf_counter()
                    res = mixbits.allocate(model, space, loaders["train"], loaders["held_out"], target=target,
                                           method="evolution", post_training=True, seed=seed,
                                           options={"evaluations": n})
                    ref_seconds = time.perf_counter() - t0
                    best = res.bits
                    ho = HeldOutScorer(model, space, loaders["held_out"], images=1 << 30).loss(best)
                    for regime in args.regimes:
                        if regime in ref:
                            continue
                        ppl = _charlm_perplexity(model, space, teacher, corpus, float_state, best, regime, seed)
                        ref[regime] = ppl
                        _append({"model": "charlm", "regime": regime, "method": "reference", "target": target,
                                 "seed": seed, "weight_compression": round(space.cost.float_quantized_bits()
                                                                           / space.cost.quantized_bits(best), 3),
                                 "test_accuracy": round(ppl, 4), "reference_accuracy": round(ppl, 4),
                                 "reference": ref_name, "seconds": round(ref_seconds, 2), "metric": "perplexity",
                                 "held_out_loss": round(ho, 5), "size_bits": space.cost.quantized_bits(best),
                                 "budget_bits": budget, "bits": json.dumps(best), **st, "machine": machine})
                        log.info("charlm %s %s seed %d reference perplexity %.3f (%s) %.1fs", regime, target, seed,
                                 ppl, ref_name, ref_seconds)
            for label in args.methods:
                regimes = [r for r in args.regimes if ("charlm", r, label, target, str(seed)) not in done]
                if not regimes:
                    continue
                name, options = METHODS[label]
                for group in _allocation_groups(name, regimes):
                    _charlm_method(label, name, options, group, float_model, float_state, corpus, target, seed,
                                   budget, ref, ref_name, args, st, machine)
    report()


def _charlm_method(label, name, options, regimes, float_model, float_state, corpus, target, seed, budget, ref,
                   ref_name, args, st, machine) -> None:
    """One method's allocation on the LM, then its rows for ``regimes`` (post-training allocation unless the
    method is regime-dependent and the one regime is ``ft1``)."""
    model, space, teacher = _charlm_row(float_model, seed)
    loaders = charlm.loaders(corpus, float_model.config.context, seed=seed)
    t0 = time.perf_counter()
    try:
        res = mixbits.allocate(model, space, loaders["train"], loaders["held_out"], target=target,
                               method=name, post_training=regimes != ["ft1"] or name not in REGIME_DEPENDENT,
                               seed=seed, epochs=args.search_epochs, options=options, teacher=teacher)
    except Exception as exc:  # noqa: BLE001 - a failing method is recorded in the log, the rest go on
        log.warning("%s %s seed %d failed: %s", label, target, seed, exc)
        return
    seconds = time.perf_counter() - t0
    bits = res.bits
    model.load_state_dict(float_state)
    ho = HeldOutScorer(model, space, loaders["held_out"], images=1 << 30).loss(bits)
    for regime in regimes:
        ppl = _charlm_perplexity(model, space, teacher, corpus, float_state, bits, regime, seed)
        _append({"model": "charlm", "regime": regime, "method": label, "target": target, "seed": seed,
                 "weight_compression": round(space.cost.float_quantized_bits()
                                             / space.cost.quantized_bits(bits), 3),
                 "test_accuracy": round(ppl, 4),
                 "reference_accuracy": round(ref[regime], 4) if regime in ref else "",
                 "reference": ref_name, "seconds": round(seconds, 2), "metric": "perplexity",
                 "held_out_loss": round(ho, 5), "size_bits": space.cost.quantized_bits(bits),
                 "budget_bits": budget, "bits": json.dumps(bits), **st, "machine": machine})
        log.info("charlm %s %s seed %d %s perplexity %.3f (ref %s) %.1fs", regime, target, seed, label,
                 ppl, ref.get(regime), seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--data-root")
    p.add_argument("--checkpoint")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--targets", nargs="+", default=["8x", "16x", "24x", "28x"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--regimes", nargs="+", default=["post", "ft1"])
    p.add_argument("--reference", default="exhaustive", help="exhaustive, evolution:N or none")
    p.add_argument("--calibration", type=int, default=None, help="images a method may read (default: no bound)")
    p.add_argument("--search-epochs", type=int, default=10)
    p.add_argument("--bits", help="candidate bitwidths, e.g. 1,2,3,4,5,6,7,8,16,32 (default: the default candidates); "
                                  "the model column then reads MODEL[bits=...]")
    p.add_argument("--options", default="{}", help='JSON {label: {option: value}} merged into the methods\' options')
    p.add_argument("--reuse-bits", action="store_true",
                   help="take each (method, target, seed)'s bits and seconds from its post-training row in the CSV "
                        "instead of allocating again (allocation runs on the frozen float weights, so the ft1 regime "
                        "starts from the same bits); rows without one allocate as usual")
    p.add_argument("--peer-bits", nargs="+", metavar="JSON",
                   help="append the post-training rows of peers' allocations (benchmarks/peer_allocation.py's JSON "
                        "files, written in the peers' own venvs): their bits through mixbits' post protocol as "
                        "<peer>, their own quantized models' accuracy as <peer>_own")
    p.add_argument("--redo", action="store_true",
                   help="allocate and append the asked rows again though the CSV holds them (the report keeps the "
                        "newest row of each model, regime, method, target and seed; the older stay as history)")
    p.add_argument("--reevaluate", action="store_true",
                   help="measure the newest rows of --model (every method and target; --regimes, --seeds) again from "
                        "their recorded bits, each on a fresh row of its seed, and append them (no allocation)")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(1)
    if args.report:
        report()
        return
    if args.peer_bits:
        for path in args.peer_bits:
            append_peer_rows(Path(path))
        report()
        return
    if args.model == "charlm":
        run_charlm(args)
        return
    RESULTS.mkdir(exist_ok=True)
    st = stamp()
    machine = describe()
    extra = {"candidates": tuple(int(b) for b in args.bits.split(","))} if args.bits else {}
    label_model = f"{args.model}[bits={args.bits}]" if args.bits else args.model
    settings = Settings(**extra, data=args.data, data_root=args.data_root, model=args.model, checkpoint=args.checkpoint,
                        train_subset=args.train_subset, search_epochs=args.search_epochs, finetune_epochs=1,
                        compute_matched=False, finetune_from="float", device="cpu")
    data = build_data(args.data, root=args.data_root, train_subset=args.train_subset, device=torch.device("cpu"))
    model = new_model(args.model, data)
    load_float_state(model, args.checkpoint)
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    if args.reevaluate:
        reevaluate(label_model, args.regimes, args.seeds,
                   lambda seed, regime, bits: _accuracy(settings, data, float_state, seed, regime, bits))
        report()
        return
    budgets = dict(zip(args.targets, check_targets(model, prepare_config(settings), args.targets)))
    for label, extra in json.loads(args.options).items():
        METHODS[label] = (METHODS[label][0], {**METHODS[label][1], **extra})
    done = set() if args.redo else _done()
    earlier = _earlier_bits() if args.reuse_bits else {}
    for seed in args.seeds:
        for target in args.targets:
            budget = budgets[target]
            ref, ref_name = {}, ""
            if args.reference != "none":
                row = start_row(settings, data, float_state, seed)
                t0 = time.perf_counter()
                reused = earlier.get((label_model, "reference", target, str(seed)))
                if reused is not None:
                    best, ref_seconds, ref_name = reused
                    ref_loss = float("nan")
                elif args.reference == "exhaustive":
                    scorer = HeldOutScorer(row.model, row.space, row.loaders["held_out"], images=1 << 30,
                                           bn_images=512, device=row.device)
                    band = list(_enumerate_band(row.space.cost.cost_table(), budget))
                    best = min(band, key=scorer.loss)
                    ref_name = f"exhaustive({len(band)} assignments, best held-out loss)"
                    ref_loss = scorer.loss(best)
                else:
                    n = int(args.reference.split(":")[1])
                    res = allocate_bits(row, settings, "evolution", budget=budget, target=target,
                                        options={"evaluations": n})
                    best = res.bits
                    ref_name = f"evolution({n} held-out-loss evaluations)"
                    ref_loss = float("nan")
                if reused is None:
                    ref_seconds = time.perf_counter() - t0
                for regime in args.regimes:
                    acc = _accuracy(settings, data, float_state, seed, regime, best)
                    ref[regime] = acc
                    label = "reference"
                    if (label_model, regime, label, target, str(seed)) not in done:
                        _append({"model": label_model, "regime": regime, "method": label, "target": target,
                                 "seed": seed, "weight_compression": round(row.space.cost.float_quantized_bits()
                                                                           / row.space.cost.quantized_bits(best), 3),
                                 "test_accuracy": round(acc, 5), "reference_accuracy": round(acc, 5),
                                 "reference": ref_name, "seconds": round(ref_seconds, 2), "metric": "top1",
                                 "held_out_loss": round(ref_loss, 5), "size_bits": row.space.cost.quantized_bits(best),
                                 "budget_bits": budget, "bits": json.dumps(best), **st, "machine": machine})
                    log.info("%s %s %s seed %d reference %.4f (%s)", args.model, regime, target, seed, acc, ref_name)
            for label in args.methods:
                regimes = [r for r in args.regimes if (label_model, r, label, target, str(seed)) not in done]
                if not regimes:
                    continue
                name, options = METHODS[label]
                for group in _allocation_groups(name, regimes):
                    _cnn_method(label, name, options, group, settings, data, float_state, seed, target, budget, ref,
                                ref_name, earlier, label_model, args, st, machine)
    report()


def _cnn_method(label, name, options, regimes, settings, data, float_state, seed, target, budget, ref, ref_name,
                earlier, label_model, args, st, machine) -> None:
    """One method's allocation on an image model, then its rows for ``regimes`` (a regime-dependent method
    allocating for ``post`` alone does so with ``post_training``; its ``ft1`` bits are never reused)."""
    if name in REGIME_DEPENDENT and regimes == ["post"]:
        settings = dataclasses.replace(settings, post_training=True, finetune_epochs=0)
    row = start_row(settings, data, float_state, seed)
    t0 = time.perf_counter()
    reused = None if name in REGIME_DEPENDENT else earlier.get((label_model, label, target, str(seed)))
    if reused is not None:
        bits, seconds, _ = reused
        log.info("%s %s seed %d: bits of the post-training row reused", label, target, seed)
    else:
        try:
            res = allocate_bits(row, settings, name, budget=budget, target=target, options=options)
        except Exception as exc:  # noqa: BLE001 - a failing method is recorded, the rest go on
            log.warning("%s %s seed %d failed: %s", label, target, seed, exc)
            return
        seconds = time.perf_counter() - t0
        bits = res.bits
    scorer = HeldOutScorer(row.model, row.space, row.loaders["held_out"], images=1 << 30, bn_images=512,
                           device=row.device)
    ho = scorer.loss(bits) if all(isinstance(b, int) for b in bits.values()) else float("nan")
    row.space.unfix_()
    for regime in regimes:
        acc = _accuracy(settings, data, float_state, seed, regime, bits)
        _append({"model": label_model, "regime": regime, "method": label, "target": target, "seed": seed,
                 "weight_compression": round(row.space.cost.float_quantized_bits()
                                             / row.space.cost.quantized_bits(bits), 3),
                 "test_accuracy": round(acc, 5), "reference_accuracy": ref.get(regime, ""),
                 "reference": ref_name if ref else "", "seconds": round(seconds, 2), "metric": "top1",
                 "held_out_loss": round(ho, 5), "size_bits": row.space.cost.quantized_bits(bits),
                 "budget_bits": budget, "bits": json.dumps(bits), **st, "machine": machine})
        log.info("%s %s %s seed %d %s %.4f (ref %s) %.1fs", args.model, regime, target, seed, label, acc,
                 ref.get(regime), seconds)


def reevaluate(label_model: str, regimes: list[str], seeds: list[int], measure) -> None:
    """Measure the newest rows of ``label_model`` in ``regimes`` and ``seeds`` again from their recorded bits and
    append them: ``measure(seed, regime, bits)`` gives the accuracy (perplexity); equal (regime, seed, bits) are
    measured once. Everything but the accuracies and the provenance is kept (``seconds`` and ``held_out_loss``
    are the allocation's); ``bits_commit`` names the commit that allocated the bits. A peer's ``_own`` rows
    (its own quantized model's accuracy, not mixbits') are left as they are."""
    with CSV_PATH.open() as f:
        rows = [r for r in _newest(list(csv.DictReader(f))) if r["model"] == label_model and r["regime"] in regimes
                and int(r["seed"]) in seeds and not r["method"].endswith("_own")]
    if not rows:
        raise SystemExit(f"no rows of {label_model} in regimes {regimes} and seeds {seeds} to evaluate again")
    rows.sort(key=lambda r: (r["regime"], int(r["seed"]), r["target"], r["method"] != "reference"))
    st, machine = stamp(), describe()
    measured: dict = {}
    reference: dict = {}
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        bits = json.loads(r["bits"])
        key = (r["regime"], r["seed"], json.dumps(bits, sort_keys=True))
        if key not in measured:
            measured[key] = measure(int(r["seed"]), r["regime"], bits)
        value = measured[key]
        digits = 4 if r["metric"] == "perplexity" else 5
        cell = (r["regime"], r["seed"], r["target"])
        if r["method"] == "reference":
            reference[cell] = round(value, digits)
        _append({**r, "test_accuracy": round(value, digits),
                 "reference_accuracy": reference.get(cell, r["reference_accuracy"]), **st, "machine": machine,
                 "bits_commit": r.get("bits_commit") or r["commit"]})
        log.info("%d/%d %s %s %s seed %s %s: %s -> %.5f (%d measured, %.0fs)", i + 1, len(rows), label_model,
                 r["regime"], r["target"], r["seed"], r["method"], r["test_accuracy"], value, len(measured),
                 time.perf_counter() - t0)


def append_peer_rows(path: Path) -> None:
    """Append a peer's post-training rows from ``benchmarks/peer_allocation.py``'s JSON at ``path``.

    Two rows per (target, seed) the peer reached: ``<peer>`` = its bits through :func:`_post_accuracy`
    (mixbits' quantizer, BatchNorm re-estimated), ``<peer>_own`` = the test accuracy of the peer's own
    quantized model; for NNCF's HAWQ also ``<peer>_mem``: the least-HAWQ-metric sequence of HAWQ's own
    candidate table whose mixbits size fits the budget (HAWQ's sensitivity with the memory budget in place
    of its FLOPs-weighted ratio), through :func:`_post_accuracy`. Both carry the reference of the ``post`` reference row already in the CSV for that
    (model, target, seed) (read, not recomputed; blank, with a warning, where there is none) and mixbits' size
    of the bits; rows already there are skipped.

    Raises:
        ValueError: a budget that differs from the reference row's (another checkpoint or candidates).
    """
    peer = json.loads(path.read_text())
    with CSV_PATH.open() as f:
        refs = {(r["target"], r["seed"]): r for r in csv.DictReader(f)
                if r["model"] == peer["model"] and r["regime"] == "post" and r["method"] == "reference"}
    entries = [e for e in peer["rows"] if "bits" in e]
    missing = [(e["target"], e["seed"]) for e in entries if (e["target"], str(e["seed"])) not in refs]
    if missing:
        log.warning("%s: no post reference row for %s at %s: those rows get no reference", path, peer["model"],
                    missing)
    other = [(e["target"], e["budget_bits"]) for e in entries if (e["target"], str(e["seed"])) in refs
             and int(refs[(e["target"], str(e["seed"]))]["budget_bits"]) != e["budget_bits"]]
    if other:
        raise ValueError(f"{path}: budgets {other} differ from the reference rows' (another checkpoint or candidates?)")
    settings = Settings(data=peer["data"], data_root=peer["data_root"], model=peer["model"],
                        checkpoint=peer["checkpoint"], train_subset=peer["train_subset"], device="cpu")
    data = build_data(peer["data"], root=peer["data_root"], train_subset=peer["train_subset"],
                      device=torch.device("cpu"))
    model = new_model(peer["model"], data)
    load_float_state(model, peer["checkpoint"])
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    done, st, machine = _done(), stamp(), describe()
    for e in entries:
        ref = refs.get((e["target"], str(e["seed"])), {"test_accuracy": "", "reference": ""})
        row = start_row(settings, data, float_state, e["seed"])
        # (label, bits, the peer's own accuracy or None: mixbits' post protocol)
        variants = [(peer["peer"], e["bits"], None), (f"{peer['peer']}_own", e["bits"], e["own_accuracy"])]
        if e.get("hawq_sequences"):  # HAWQ's own metric, with mixbits' memory budget in place of its FLOPs ratio
            fits = [q for q in e["hawq_sequences"] if row.space.cost.quantized_bits(q["bits"]) <= e["budget_bits"]]
            variants.append((f"{peer['peer']}_mem", min(fits, key=lambda q: q["metric"])["bits"], None))
        for label, bits, own in variants:
            if (peer["model"], "post", label, e["target"], str(e["seed"])) in done:
                continue
            size = row.space.cost.quantized_bits(bits)
            ho = float("nan")
            if own is None:
                scorer = HeldOutScorer(row.model, row.space, row.loaders["held_out"], images=1 << 30, bn_images=512,
                                       device=row.device)
                ho = scorer.loss(bits)
                row.space.unfix_()
            acc = _accuracy(settings, data, float_state, e["seed"], "post", bits) if own is None else own
            _append({"model": peer["model"], "regime": "post", "method": label, "target": e["target"],
                     "seed": e["seed"], "weight_compression": round(row.space.cost.float_quantized_bits() / size, 3),
                     "test_accuracy": round(acc, 5), "reference_accuracy": ref["test_accuracy"],
                     "reference": ref["reference"], "seconds": e["seconds"], "metric": "top1",
                     "held_out_loss": round(ho, 5) if own is None else "", "size_bits": size,
                     "budget_bits": e["budget_bits"], "bits": json.dumps(bits),
                     **(st if own is None else {"commit": peer["commit"], "dirty": peer["dirty"]}),
                     "machine": machine if own is None else f"{e['version']}; {peer['machine']}"})
            log.info("%s post %s seed %s %s %.4f (ref %s), %d/%d bits", peer["model"], e["target"], e["seed"], label,
                     acc, ref["test_accuracy"], size, e["budget_bits"])


def _target_order(target: str) -> tuple[int, float]:
    """Compressions ("8x") first by size, then average bits ("2bits") from most bits to fewest."""
    if target.endswith("x"):
        return 0, float(target[:-1])
    return 1, -float(target.removesuffix("bits"))


def _charlm_protocol(rows: list[dict]) -> list[str]:
    """The paragraph on the character-level LM, when the CSV has its rows (float perplexity from its record)."""
    if not any(r["model"] == "charlm" for r in rows):
        return []
    records = sorted(Path(__file__).resolve().parent.glob("checkpoints/charlm_*_train.json"))
    floats = "; ".join(f"`{p.name.removesuffix('_train.json')}.pt` float test perplexity "
                       f"{json.loads(p.read_text())['test_perplexity']:.3f}" for p in records)
    return ["`charlm` (`benchmarks/charlm.py`): a pre-norm causal character-level transformer (d=128, 2 blocks, "
            "4 heads, context 64, 97 tokens) trained on Python standard-library source, the splits disjoint by "
            f"file ({floats}). The cells are the TEST PERPLEXITY (the `metric` column says `perplexity`; "
            "`test_accuracy` holds it): lower is better, and a positive gap is worse than the reference. "
            "Quantized: every Linear and Embedding the default `prepare_` finds (9 weights: the token "
            "embedding, tied to the output head and counted once, and per block `qkv`, `proj`, `fc1`, "
            "`fc2`); biases, LayerNorms and the learned positions stay float. Held-out (the methods' choice): "
            "128 fixed windows of held-out files; test: 512 fixed windows of test files; `ft1`'s epoch: "
            "1,024 fixed training windows (32 steps of 32), SGD lr 0.01 distilled from the float model (the pipeline's "
            "fine-tuning settings). The reference is `evolution` with the number of held-out-loss evaluations "
            "the `reference` column states (200); the methods ran with `--search-epochs 5 --options "
            "'{\"evolution\": {\"evaluations\": 60}, \"hardsearch\": {\"steps\": 100}}'` (fewer than the "
            "defaults of 10 epochs and 300 steps, to fit one CPU thread), `hardsearch_noselect` not run. The "
            "`held_out_loss` column of these rows is the held-out scorer's cross-entropy summed over a window's 64 "
            "tokens (divide by 64 for the per-token loss).", ""]


# Labels whose option was removed (rows from earlier commits) and the peers' own quantized models: not
# methods a user can run today, so the defaults are not judged against them.
# Rows labelled <method>_hutchinson were measured when ``hessian``'s trace was Hutchinson's estimate (commits before
# the empirical-Fisher default); every method that starts from or ranks the ``hessian`` allocation changed with it.
HUTCHINSON_ROWS = {"hessian_hutchinson", "probe_hutchinson", "evolution_hutchinson", "hardsearch_hutchinson",
                   "fracbits_hutchinson"}
REMOVED_VARIANTS = {"hardsearch_adam", "hardsearch_reinforce", "evolution_kl", "fracbits_sgd",
                    "fracbits_slope"} | HUTCHINSON_ROWS
DEFAULTS = {"post": mixbits.DEFAULT_POST_TRAINING_METHOD, "ft1": mixbits.DEFAULT_METHOD}


def _defaults_section(groups: dict) -> list[str]:
    """Each regime's default against the best other method at 16x, 24x and 28x, seeds 0-2: mean (min-max),
    and whether the default is below it by more than the larger of the two seed spreads."""
    lines = ["## The defaults against every other method (16x, 24x, 28x; seeds 0-2)", "",
             "The default of each regime (`post`: `" + DEFAULTS["post"] + "`, `ft1`: `" + DEFAULTS["ft1"] + "`) "
             "against the best mean of every other method with all three seeds (`reference` included; removed "
             "variants and the peers' own models left out), and `below`: every method the default's mean is worse "
             "than by more than the larger of the two seed spreads (max - min), with that gap and spread.", "",
             "| model | regime | target | default | best other | gap | larger spread | below |", "|---|---|---|---|---|---|---|---|"]
    for (model, regime, target, method), g in sorted(groups.items()):
        if target not in ("16x", "24x", "28x") or method != DEFAULTS.get(regime):
            continue
        ppl = g[0]["metric"] == "perplexity"
        sign, scale, d = (-1, 1, 2) if ppl else (1, 100, 1)

        def by_seed(rows):
            return {r["seed"]: scale * float(r["test_accuracy"]) for r in rows if r["seed"] in ("0", "1", "2")}

        mine = by_seed(g)
        if len(mine) < 3:
            continue
        others = []
        for (m2, r2, t2, meth), g2 in groups.items():
            if (m2, r2, t2) != (model, regime, target) or meth == method or meth in REMOVED_VARIANTS \
                    or meth.endswith("_own"):
                continue
            v = by_seed(g2)
            if len(v) == 3:
                others.append((sign * statistics.mean(v.values()), meth, v))
        if not others:
            continue
        def cell(x):
            return f"{statistics.mean(x.values()):.{d}f} ({min(x.values()):.{d}f}-{max(x.values()):.{d}f})"

        def gap_spread(v):
            return (sign * (statistics.mean(v.values()) - statistics.mean(mine.values())),
                    max(max(mine.values()) - min(mine.values()), max(v.values()) - min(v.values())))

        _, best, v = max(others)
        gap, spread = gap_spread(v)
        below = sorted(f"`{m}` ({gap_spread(w)[0]:+.{d}f} > {gap_spread(w)[1]:.{d}f})" for _, m, w in others
                       if gap_spread(w)[0] > gap_spread(w)[1])
        lines.append(f"| {model} | {regime} | {target} | {cell(mine)} | `{best}` {cell(v)} | {gap:+.{d}f} | "
                     f"{spread:.{d}f} | {'**' + ', '.join(below) + '**' if below else 'none'} |")
    return lines + [""]


def report() -> None:
    """Rewrite the Markdown summary: mean test accuracy over seeds, its spread, the gap to the reference."""
    if not CSV_PATH.exists():
        return
    with CSV_PATH.open() as f:
        rows = _newest(list(csv.DictReader(f)))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["regime"], r["target"], r["method"]), []).append(r)
    commits = sorted({(r["commit"], r["dirty"]) for r in rows})
    lines = ["# Allocation quality: each method against the best allocation that exists", "",
             f"Written by `{command_line()}`; rows from commits {', '.join(f'{c} (dirty={d})' for c, d in commits)}.",
             f"{describe()}", "",
             "Mean test accuracy (%) over seeds, min-max spread, mean gap to the reference (points), mean seconds "
             "of the allocation. Reference: see the `reference` column of `allocation_quality.csv`. "
             "Rows of commits d9da519, bfd521b and fe9e517 marked dirty=True differed from their commit only in "
             "`benchmarks/results/` (the CSV an earlier command of the same chain had appended to; checked with "
             "`git status` in those worktrees); `benchmarks/_provenance.py` no longer counts result files as dirty.", "",
             "Checkpoints: `lenet5` and `digits_cnn` rows start from `lenet5_mnist5k_e60_h20.pt` and "
             "`digits_cnn_e18_h20.pt` (commit 69f2253 on), trained by `mixbits train` without the held-out part of "
             "the training split, so every held-out loss (the reference's, every method's) is measured on images "
             "the float model never saw. `lenet5[held-out seen]` and `digits_cnn[held-out seen]` are the rows from "
             "the earlier checkpoints, trained on the whole training split, held-out part included: there a "
             "held-out loss is a training loss, and on the digits CNN (100% training accuracy) it rewards keeping "
             "what the model memorised. `resnet20`'s checkpoint also saw its held-out images (all 50,000 training "
             "images; no other checkpoint exists, and no GPU was lent to train one). The protocol paragraph below "
             "was written before those checkpoints: its `lenet5` and `digits_cnn` are the rows now labelled "
             "`[held-out seen]` (the new rows ran the methods reference, uniform, random, hessian, search, "
             "hardsearch, evolution, fracbits, pairwise, probe, exhaustive and refine with their defaults).", "",
             "Evaluation: from commit 85b63f1 on, every accuracy is measured on a fresh row of the seed (the "
             "BatchNorm batches and the fine-tuning stream depend on the bits and the seed only), so equal bits "
             "give equal rows. Before, a method's rows were measured on the row it had allocated on, after "
             "whatever it had read of the loaders and torch's RNG (digits_cnn 16x ft1 seed 0: the same bits "
             "98.61% after `probe`, 98.89% after `refine`). Measured again from their recorded bits "
             "(`--reevaluate`, commit 85b63f1; `bits_commit` names the commit that allocated them): every row of "
             "`lenet5[held-out seen]` and `digits_cnn[held-out seen]` (all post rows and all lenet5 ft1 rows came "
             "out unchanged; 107 digits ft1 rows moved, by at most 0.84 points, three test images), every "
             "`resnet20` row (not `resnet20[bits=...]`: 45 of 98 ft1 rows moved, by at most 0.76 points; all 160 "
             "post rows unchanged) and every `charlm` ft1 row (commit 69f2253: all 234 unchanged).", "",
             "Protocol: every method allocates on the frozen float weights of the committed checkpoint "
             "(`benchmarks/checkpoints/`); `post` = bits fixed, BatchNorm re-estimated on 50 training batches, "
             "test accuracy; `ft1` = the same bits, one epoch of fine-tuning from the float weights (distilled, "
             "the same for every method), BatchNorm re-estimated, test accuracy. `reference` on lenet5 and "
             "digits_cnn: every assignment using 85-100% of the budget, the best by held-out loss (the fixed "
             "held-out part of the training split); in ft1 that same assignment fine-tuned. On resnet20 "
             "(train subset of 5,000 images, seed 0; full 10,000-image test set) the reference is `evolution` "
             "with 200 held-out-loss evaluations (24x and 28x only; the 8x, 16x and average-bit rows have no "
             "reference), and the methods' `evolution` row uses 60, scoring 1,000 images (`hardsearch` 100 steps "
             "of 64 images; `fracbits` 1,000 images); resnet20's ft1 rows at 24x and 28x reuse the bits of the "
             "post row (`--reuse-bits`). `resnet20[bits=...]`/`lenet5[bits=...]` = candidates 1..8, 16, 32. "
             "Average-bit targets: `2bits` is the 16x budget exactly, so it is not run separately. Labels: `search` = "
             "the differentiable search learning only its logits on the frozen weights (10 epochs); "
             "`hardsearch_noselect` = hardsearch's last derivation, without the held-out selection; "
             "`probe` = the default (both regimes): the answers of hessian, evolution and pairwise, each "
             "fine-tuned for a quarter epoch, the best by held-out loss (post: ranked on the float weights, the best "
             "then refined as `refine` does, from commit c76876e on; its earlier post rows are labelled "
             "`probe_norefine`, the same method with `refine = false`); it "
             "allocates once per regime (every other method once, on the frozen weights, for both); on resnet20 "
             "its evolution used 60 evaluations of 1,000 images and its pairwise candidates within one step "
             "(`--options`), ft1 at 16x, 24x and 28x, post at 24x and 28x. `exhaustive` = every maximal "
             "assignment (no layer can take its next wider candidate and still fit), the best by held-out loss "
             "(lenet5, digits_cnn: all scored on every held-out image; resnet20 at 28x, seeds 0-2: 10,254 of "
             "them scored on 64 held-out images, the best 1,282 on 256, the best 161 on all 1,000). `refine` = "
             "every maximal assignment within 4 layers of hessian's answer raced the same way (64, 256, then all "
             "held-out images), moving to the winner while its held-out loss is lower, at most 3 moves (a ball of "
             "more than 1,000 assignments shrinks its radius). "
             "Held-out losses: from commit 00cd0d1 on (rows of commit ef5402d and later) every scorer reads one fixed "
             "sample of the held-out split (an order fixed by seed 0, each image once, never augmented); before, "
             "each scorer took the next batches of the seeded, shuffled held-out loader, on resnet20 randomly "
             "cropped and flipped, and its last incomplete batch dropped (960 of 1,000 images). Re-run with the "
             "fixed sample (`--redo`; the report keeps the newest row of each cell): reference, probe, refine, "
             "exhaustive, evolution and pairwise on lenet5 and digits_cnn (post and ft1); probe, refine and hessian "
             "(unchanged: its trace reads batches, not a score) on resnet20 post at 24x and 28x, and exhaustive at "
             "28x seed 0; `exhaustive_augmented` = resnet20's exhaustive rows at 28x, seeds 0-2, from commit "
             "9e15225, before the fixed sample. Every other row of a method that scores held-out loss (hardsearch, "
             "fracbits, probe_norefine, the ft1 rows on resnet20) is from before; charlm's held-out windows were "
             "always fixed and unaugmented. "
             "The lenet5 and digits_cnn ft1 rows of every method that still exists were "
             "re-run at commit 8b6d027 with the post rows' bits (`--reuse-bits`): the fine-tuning's numerics had "
             "changed since their first commit by a test image or two (digits 16x `hessian`: 98.89% then, "
             "98.61% now, the same bits); "
             "`hardsearch_adam`, `hardsearch_reinforce` = removed variants (Adam beta1 0.9; score-function "
             "estimator), rows from commits fdfcbff and 8d3ed54; `evolution_kl` = removed variant (evolution scored "
             "by KL divergence from the float model's predictions), rows from commit fe9e517. "
             "From commit b5107e2 on, `hessian`'s curvature trace is the empirical Fisher's (the mean squared "
             "per-example gradient on 4 held-out batches, no random probes); rows labelled `<method>_hutchinson` "
             "(hessian, probe, evolution, hardsearch, fracbits) were measured before, with Hutchinson's Rademacher "
             "estimate of the Hessian trace, which each of those methods starts from or ranks. Re-run with the "
             "Fisher trace: all five on lenet5 and digits_cnn; hessian, probe and evolution on charlm; on resnet20 "
             "every row of hessian, probe, evolution, hardsearch and fracbits (commits cf74013, b5107e2 and "
             "9780749). Not re-run, so still from commits with Hutchinson's trace under their own labels: "
             "hardsearch and fracbits on charlm; pairwise never used the trace. With 16 held-out batches instead of 4 the Fisher trace gives `hessian` the same "
             "bits in every (model, target, seed) cell but lenet5 28x seeds 1 and 2 (81.2% -> 89.6% post-training) "
             "and resnet20 1.2 bits seed 2 (checked by allocating both ways from fresh rows); 4 stays the default "
             "because on resnet20 16 batches also move the augmentation stream the later methods draw from, so "
             "its probe rows would not carry over. Post-training peers (`benchmarks/peer_allocation.py` "
             "in each peer's own venv, then `allocation_quality.py --peer-bits`): `mct` = Sony MCT 2.6.1's mixed "
             "precision, `nncf_hawq` = NNCF 2.19.0's HAWQ precision initialisation, `aimet_amp` = AIMET 2.42.0's "
             "AMP, each with weights 2/4/8 bits and float activations, calibrated on the held-out training images "
             "of the seed, its own budget knob (MCT bytes without scales, HAWQ's FLOPs-weighted ratio, AMP's "
             "accuracy-ordered path) searched for the largest allocation whose size counted by mixbits (scales "
             "included) fits the budget; the peer's bits are scored with mixbits' post protocol, `<peer>_own` is "
             "the peer's own quantized model (its quantizer, no BatchNorm re-estimation); `nncf_hawq_mem` = the "
             "sequence of least HAWQ metric among HAWQ's own candidates whose mixbits size fits the budget (its "
             "sensitivity, a memory budget in place of its FLOPs ratio), mixbits' post protocol. With 2 bits their "
             "smallest width, every layer at 2 bits plus mixbits' scales is over the 16x budget: the peers reach "
             "8x only. A cell marked OVER BUDGET holds rows larger than the budget.", "",
             *_charlm_protocol(rows)]
    lines += _defaults_section(groups)
    for model in sorted({k[0] for k in groups}):
        for regime in sorted({k[1] for k in groups if k[0] == model}):
            targets = sorted({k[2] for k in groups if k[:2] == (model, regime)}, key=_target_order)
            ppl = any(r["metric"] == "perplexity" for k, g in groups.items() if k[:2] == (model, regime) for r in g)
            scale = 1 if ppl else 100
            title = (f"## {model}, {regime}: test perplexity (lower is better; a positive gap is worse than the "
                     "reference)" if ppl else f"## {model}, {regime}")
            lines += [title, "", "| method | " + " | ".join(targets) + " | seconds |",
                      "|---|" + "---|" * (len(targets) + 1)]
            methods = sorted({k[3] for k in groups if k[:2] == (model, regime)}, key=lambda m: (m != "reference", m))
            for m in methods:
                cells, secs = [], []
                for t in targets:
                    g = groups.get((model, regime, t, m), [])
                    if not g:
                        cells.append("")
                        continue
                    acc = [scale * float(r["test_accuracy"]) for r in g]
                    gaps = [scale * (float(r["test_accuracy"]) - float(r["reference_accuracy"])) for r in g
                            if r["reference_accuracy"] not in ("", None)]
                    secs += [float(r["seconds"]) for r in g]
                    d = 2 if ppl else 1
                    gap = f", {statistics.mean(gaps):+.{d}f}" if gaps and m != "reference" else ""
                    over = sum(1 for r in g if r["size_bits"] and r["budget_bits"]
                               and int(r["size_bits"]) > int(r["budget_bits"]))
                    flag = f" **{over} OVER BUDGET**" if over else ""
                    cells.append(f"{statistics.mean(acc):.{d}f} ({min(acc):.{d}f}-{max(acc):.{d}f}{gap}) n={len(g)}{flag}")
                lines.append(f"| {m} | " + " | ".join(cells) + f" | {statistics.mean(secs):.1f} |" if secs else "")
            lines.append("")
    MD_PATH.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
