"""Which curvature trace should a structure's sensitivity use: its own, or its layer's mean?

Per-structure Hutchinson estimates sum fewer probe products than a layer's, so they are noisier;
the empirical-Fisher trace (``--estimator fisher``, the default) has no probes, only the examples.
For each granularity, seed and choice (``structure_traces`` = ``structure`` or ``layer``), the
``hessian`` allocation is solved at every target from the float checkpoint, the bits are fixed,
the BatchNorm statistics re-estimated, and the model evaluated on the full test split, with no
fine-tuning: the allocation alone is compared. ``layer`` granularity is the reference.

    python benchmarks/structure_traces.py --data-root ../shared/data/cifar10-jpeg.zip \\
        --json benchmarks/results/structure_traces_fisher.json
    # benchmarks/results/structure_traces.json: the same with --estimator hutchinson (before the Fisher default)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from _provenance import stamp  # benchmarks/ is on sys.path when run as a script
from mixbits.budget import budget_bits
from mixbits.derive import solve_budget
from mixbits.methods.hessian import sensitivity
from mixbits.pipeline.data import build_data
from mixbits.pipeline.float_model import new_model
from mixbits.runfiles import load_checkpoint
from mixbits.space import PrepareConfig, prepare_
from mixbits.train import evaluate, recalibrate_bn_

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(HERE / "checkpoints" / "resnet20_cifar10_e37.pt"))
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--data-root")
    ap.add_argument("--targets", default="16x,24x,28x")
    ap.add_argument("--granularities", default="layer,group:8,channel")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--estimator", choices=["fisher", "hutchinson"], default="fisher")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data = build_data(args.data, root=args.data_root, device=device)
    state = load_checkpoint(args.checkpoint)["state_dict"]
    targets = [t for t in args.targets.split(",") if t]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        loaders = data.loaders(batch_size=args.batch_size, held_out_fraction=0.2, seed=seed)
        for gran in [g for g in args.granularities.split(",") if g]:
            for mode in (("structure",) if gran == "layer" else ("structure", "layer")):
                t0 = time.time()
                model = new_model(args.model, data, state)
                space = prepare_(model, PrepareConfig(granularity=gran))
                omega, _ = sensitivity(model, space, loaders["held_out"], seed=seed, structure_traces=mode,
                                       estimator=args.estimator)
                top = max(v for per in omega.values() for v in per.values()) or 1.0
                scores = {u: {b: -v / top for b, v in per.items()} for u, per in omega.items()}
                for target in targets:
                    bits = space.cost.to_layers(solve_budget(scores, space.cost.cost_table(),
                                                             budget_bits(target, space.cost)))
                    model.load_state_dict(state)
                    space.fix_(bits)
                    recalibrate_bn_(model, loaders["full"], device=device)
                    acc = evaluate(model, loaders["test"], device=device)
                    space.unfix_()
                    rows.append({"seed": seed, "granularity": gran, "structure_traces": mode, "target": target,
                                 "weight_compression": space.cost.weight_compression(bits), "accuracy": acc})
                    print(f"seed {seed} {gran:>8} traces {mode:>9} {target:>4}: {100 * acc:.2f}% "
                          f"({time.time() - t0:.0f} s)", flush=True)
    print("\nmean accuracy (%) over seeds, no fine-tuning, BatchNorm re-estimated:")
    for gran, mode in sorted({(r["granularity"], r["structure_traces"]) for r in rows}):
        cells = [f"{t} {statistics.fmean(100 * r['accuracy'] for r in rows if (r['granularity'], r['structure_traces'], r['target']) == (gran, mode, t)):.2f}"
                 for t in targets]
        print(f"  {gran:>8} traces {mode:>9}: " + ", ".join(cells))
    meta = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads", "torch": torch.__version__,
            "checkpoint": Path(args.checkpoint).name, "estimator": args.estimator,
            **stamp()}
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
