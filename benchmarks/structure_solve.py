"""Time of the exact budget solve and of the price projection, per granularity, at scale.

For each model and granularity: the number of decision units, the median time of
``BitSpace.project_`` (the vectorised price solve the search runs around every logit step)
and of the exact derivation (``derive_bits``: the HiGHS knapsack with the 95% floor, then the
budget fill), at 16x, 24x and 28x, from random logits (the solve's work does not depend on
where the logits come from). Models: ResNet-20 and ResNet-56 (CIFAR), and a wide MLP whose
per-channel space has tens of thousands of units. Nothing is trained.

    python benchmarks/structure_solve.py --json benchmarks/results/structure_solve.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from _provenance import stamp  # benchmarks/ is on sys.path when run as a script
from mixbits.budget import budget_bits
from mixbits.models import create_model
from mixbits.search import derive_bits
from mixbits.space import PrepareConfig, prepare_


def wide_mlp() -> nn.Module:
    """Three 2048-wide layers and a 10,000-way output: 16,144 output channels."""
    return nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048),
                         nn.ReLU(), nn.Linear(2048, 10000))


def measure(model: nn.Module, granularity: str, targets: list[str], repeats: int) -> dict:
    space = prepare_(model, PrepareConfig(granularity=granularity))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for d in space.decision_list:
            d.logits.copy_(torch.randn(d.logits.shape, generator=g) * 2)
    out = {"units": space.cost.num_units, "layers": len(space.layers), "targets": {}}
    for target in targets:
        budget = budget_bits(target, space.cost)
        proj, solve = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            space.project_(budget)
            proj.append(time.perf_counter() - t)
            t = time.perf_counter()
            bits = derive_bits(space, budget)
            solve.append(time.perf_counter() - t)
        size = space.cost.quantized_bits(bits)
        out["targets"][target] = {"project_s": statistics.median(proj), "derive_s": statistics.median(solve),
                                  "size_bits": size, "budget_bits": budget, "budget_used": size / budget}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="16x,24x,28x")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    torch.manual_seed(0)
    cases = [("resnet20", g) for g in ("layer", "group:32", "group:8", "channel")]
    cases += [("resnet56", "channel"), ("wide_mlp", "group:8"), ("wide_mlp", "channel")]
    results = {}
    for name, gran in cases:
        model = wide_mlp() if name == "wide_mlp" else create_model(name, in_channels=3, num_classes=10, input_size=32)
        r = measure(model, gran, targets, args.repeats)
        results[f"{name} {gran}"] = r
        cells = ", ".join(f"{t}: project {1000 * v['project_s']:.1f} ms, derive {v['derive_s']:.3f} s "
                          f"({100 * v['budget_used']:.2f}% of the budget)" for t, v in r["targets"].items())
        print(f"{name:>9} {gran:>9}: {r['units']:>6} units; {cells}", flush=True)
    meta = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads", "torch": torch.__version__,
            **stamp(), "repeats": args.repeats}
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
