"""Which held-out statistic picks the allocation that scores best on test: the loss or the accuracy?

Every method that compares assignments ranks them by held-out cross-entropy. On a model small enough
to enumerate, this script scores every assignment that uses 85-100% of the budget (the band of
``allocation_quality.py``'s exhaustive reference) post-training on the fixed held-out sample, by
cross-entropy and by top-1 accuracy (BatchNorm re-estimated on its first 512 images, as
``HeldOutScorer`` does), and on the test split under ``allocation_quality.py``'s post protocol (a
fresh row of seed 0, BatchNorm re-estimated on training batches). Per target it prints the test
accuracy of the assignment each statistic chooses (accuracy ties broken by the lower loss) and the
best test accuracy in the band, a test oracle no method may use, and appends the table to
``benchmarks/results/selection_objective.md``.

    OMP_NUM_THREADS=1 python benchmarks/selection_objective.py --model lenet5 --data mnist5k \\
        --checkpoint benchmarks/checkpoints/lenet5_mnist5k_e60_h20.pt

Where enumeration is impossible, ``--recorded`` takes as candidates every distinct allocation that the
newest post-training rows of ``allocation_quality.csv`` hold for the model at the target (every method,
every seed), and the last column is the best test accuracy among those:

    OMP_NUM_THREADS=1 python benchmarks/selection_objective.py --model resnet20 --data cifar10 \\
        --data-root ../shared/data/cifar10-jpeg.zip --train-subset 5000 \\
        --checkpoint benchmarks/checkpoints/resnet20_cifar10_e37.pt --targets 24x 28x --recorded
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import describe, stamp  # noqa: E402

from mixbits.methods.scoring import HeldOutScorer  # noqa: E402
from mixbits.pipeline import Settings  # noqa: E402
from mixbits.pipeline.allocation import prepare_config, start_row  # noqa: E402
from mixbits.pipeline.data import build_data  # noqa: E402
from mixbits.pipeline.float_model import check_targets, load_float_state, new_model  # noqa: E402
from mixbits.train import recalibrate_bn_  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "selection_objective.md"
TARGETS = ["8x", "16x", "24x", "28x", "1.5bits", "1.2bits"]


def _allocation_quality():
    """``allocation_quality.py`` as a module (its band and post protocol, not copies of them)."""
    path = Path(__file__).resolve().parent / "allocation_quality.py"
    spec = importlib.util.spec_from_file_location("allocation_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def held_out_scores(scorer: HeldOutScorer, bits: dict) -> tuple[float, float]:
    """(cross-entropy, top-1 accuracy) of ``bits`` on the scorer's images, BatchNorm as the scorer sets it."""
    scorer.space.fix_(dict(bits))
    if scorer.bn:
        recalibrate_bn_(scorer.model, scorer.bn_batches, device=scorer.device, batches=len(scorer.bn_batches))
    scorer.model.eval()
    out = torch.cat([scorer.model(scorer.x[i:i + 256]) for i in range(0, len(scorer.y), 256)]).float()
    return float(F.cross_entropy(out, scorer.y)), float((out.argmax(1) == scorer.y).float().mean())


def _recorded(aq, model: str) -> dict[str, list[dict]]:
    """{target: the distinct integer allocations of ``model``'s newest post rows in allocation_quality.csv}."""
    with aq.CSV_PATH.open() as f:
        rows = [r for r in aq._newest(list(csv.DictReader(f))) if r["model"] == model and r["regime"] == "post"]
    out: dict[str, list[dict]] = {}
    for r in rows:
        bits = json.loads(r["bits"])
        if all(isinstance(b, int) for b in bits.values()) and bits not in out.setdefault(r["target"], []):
            out[r["target"]].append(bits)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root")
    p.add_argument("--train-subset", type=int)
    p.add_argument("--targets", nargs="+", default=TARGETS)
    p.add_argument("--recorded", action="store_true",
                   help="candidates: the distinct allocations of the model's newest post rows in allocation_quality.csv "
                        "at each target, instead of every assignment in the band")
    args = p.parse_args()
    torch.set_num_threads(1)
    aq = _allocation_quality()
    settings = Settings(data=args.data, data_root=args.data_root, model=args.model, checkpoint=args.checkpoint,
                        train_subset=args.train_subset, device="cpu")
    data = build_data(args.data, root=args.data_root, train_subset=args.train_subset, device=torch.device("cpu"))
    model = new_model(args.model, data)
    load_float_state(model, args.checkpoint)
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    budgets = check_targets(model, prepare_config(settings), args.targets)
    row = start_row(settings, data, float_state, 0)
    scorer = HeldOutScorer(row.model, row.space, row.loaders["held_out"], images=1 << 30, bn_images=512)
    recorded = _recorded(aq, args.model) if args.recorded else None
    what = "the recorded post-training allocations" if args.recorded else "the assignments in the band"
    lines = [f"## {args.model} from `{args.checkpoint}`: {what}", "",
             f"{describe()} (dirty={stamp()['dirty']}); {len(scorer.y)} held-out images.", "",
             "| target | assignments | chosen by held-out loss: test % | chosen by held-out accuracy: test % | "
             "best test % among them (oracle) |", "|---|---|---|---|---|"]
    t0 = time.perf_counter()
    for target, budget in zip(args.targets, budgets):
        band = (recorded.get(target, []) if recorded is not None
                else list(aq._enumerate_band(row.space.cost.cost_table(), budget)))
        if not band:
            raise SystemExit(f"no recorded post-training allocation of {args.model} at {target}")
        scored = []
        for bits in band:
            loss, acc = held_out_scores(scorer, bits)
            scored.append((loss, acc, aq._accuracy(settings, data, float_state, 0, "post", bits)))
        by_loss = min(scored, key=lambda s: s[0])
        by_acc = max(scored, key=lambda s: (s[1], -s[0]))
        oracle = max(s[2] for s in scored)
        lines.append(f"| {target} | {len(band)} | {100 * by_loss[2]:.1f} | {100 * by_acc[2]:.1f} | "
                     f"{100 * oracle:.1f} |")
        print(lines[-1], f"({time.perf_counter() - t0:.0f}s)", flush=True)
    OUT.parent.mkdir(exist_ok=True)
    if not OUT.exists():
        OUT.write_text("# Held-out loss or held-out accuracy to choose an allocation\n\n"
                       "Written by `benchmarks/selection_objective.py` (its docstring says how).\n\n")
    with OUT.open("a") as f:
        f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
