"""Time of one search step divided by one float training step, measured side by side.

A search step is one forward/backward/update through the mixed weights: a weight
step (SGD on the weights, a training batch) or a logit step (Adam on the logits,
a held-out batch, plus the exact budget projection). The search interleaves them
in the proportion of the split (80% / 20% by default), so the figure that counts
is the weighted mean. A ``hardsearch`` step (:mod:`mixbits.methods.hard_search`) is one
forward with ONE sampled candidate per layer on the frozen weights (every candidate's
quantized weight computed once), a backward to the logits only, an SGD step of the
logits and the budget projection; it is reported as ``ratio_hard_step``. Float and search steps alternate in rounds and the median
of each is reported, so background load hits both alike.

    python benchmarks/step_time.py            # both models, CPU, quick
    python benchmarks/step_time.py --device cuda --rounds 50
    python benchmarks/step_time.py --granularity layer channel group:8 group:32   # bits per structure
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from _provenance import stamp  # benchmarks/ is on sys.path when run as a script
import torch.nn.functional as F
from torch import nn

from mixbits.models import create_model
from mixbits.space import PrepareConfig, prepare_


def conv_stack(width: int = 16, num_classes: int = 10) -> nn.Module:
    """A ResNet-20-sized plain stack: 19 3x3 convs (16/32/64 channels), BN, ReLU, a Linear."""
    layers: list[nn.Module] = []
    c_in = 3
    for stage, c in enumerate((width, 2 * width, 4 * width)):
        for i in range(7 if stage == 0 else 6):
            stride = 2 if (stage > 0 and i == 0) else 1
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int, held_fraction: float,
            device: torch.device, granularity: str = "layer") -> dict:
    float_model = model.to(device)
    search_model = copy.deepcopy(model).to(device)
    space = prepare_(search_model, PrepareConfig(granularity=granularity)).to(device)
    budget = (space.cost.min_quantized_bits() + space.cost.max_quantized_bits()) // 8
    space.project_(budget)
    f_opt = torch.optim.SGD(float_model.parameters(), lr=0.01, momentum=0.9)
    w_opt = torch.optim.SGD(search_model.parameters(), lr=0.01, momentum=0.9)
    a_opt = torch.optim.Adam(space.parameters(), lr=0.01)
    hard_model = copy.deepcopy(model).to(device)
    hard_space = prepare_(hard_model, PrepareConfig(granularity=granularity)).to(device)
    for p in hard_model.parameters():
        p.requires_grad_(False)
    hard_space.set_gumbel_(True)
    for d in hard_space.decision_list:
        d.hard = True
    hard_space.project_(budget)
    h_opt = torch.optim.SGD(hard_space.parameters(), lr=0.01)

    def float_step():
        loss = F.cross_entropy(float_model(x), y)
        f_opt.zero_grad(set_to_none=True)
        loss.backward()
        f_opt.step()

    def weight_step():
        loss = F.cross_entropy(search_model(x), y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()

    def logit_step():
        loss = F.cross_entropy(search_model(x), y)
        a_opt.zero_grad(set_to_none=True)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        a_opt.step()
        space.project_(budget)

    def hard_step():
        loss = F.cross_entropy(hard_model(x), y)
        h_opt.zero_grad(set_to_none=True)
        loss.backward()
        h_opt.step()
        hard_space.project_(budget)

    def timed(fn) -> float:
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t

    for fn in (float_step, weight_step, logit_step, hard_step):  # warm-up
        fn()
        fn()
    times = {"float": [], "weight": [], "logit": [], "hard": []}
    for _ in range(rounds):
        times["float"].append(timed(float_step))
        times["weight"].append(timed(weight_step))
        times["logit"].append(timed(logit_step))
        times["hard"].append(timed(hard_step))
    med = {k: statistics.median(v) for k, v in times.items()}
    search_step = (1 - held_fraction) * med["weight"] + held_fraction * med["logit"]
    return {
        "float_step_s": med["float"],
        "weight_step_s": med["weight"],
        "logit_step_s": med["logit"],
        "search_step_s": search_step,
        "ratio_weight_step": med["weight"] / med["float"],
        "ratio_logit_step": med["logit"] / med["float"],
        "ratio_search_step": search_step / med["float"],
        "hard_step_s": med["hard"],
        "ratio_hard_step": med["hard"] / med["float"],
        "layers": len(space.layers),
        "decision_units": space.cost.num_units,
        "granularity": granularity,
        "candidates": list(space.layers[0].candidates),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--held-out-fraction", type=float, default=0.2)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--granularity", nargs="+", default=["layer"],
                    help="granularities to measure, each on its own search model (default: layer)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cases = {
        "digits_cnn (default model), batch 64, 1x8x8": (
            create_model("digits_cnn", in_channels=1, num_classes=10, input_size=8),
            torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))),
        "ResNet-20-sized 3x3 conv stack, batch 128, 3x32x32": (
            conv_stack(), torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))),
    }
    results = {}
    for (name, (model, x, y)), gran in [(c, g) for c in cases.items() for g in args.granularity]:
        r = measure(copy.deepcopy(model), x.to(device), y.to(device), args.rounds, args.held_out_fraction, device,
                    gran)
        if len(args.granularity) > 1:
            name = f"{name}, granularity {gran} ({r['decision_units']} units)"
        results[name] = r
        print(f"{name}: float step {1000 * r['float_step_s']:.1f} ms, weight step {1000 * r['weight_step_s']:.1f} ms, "
              f"logit step {1000 * r['logit_step_s']:.1f} ms -> search step / float step = "
              f"{r['ratio_search_step']:.3f} (weight {r['ratio_weight_step']:.3f}, logit {r['ratio_logit_step']:.3f}); "
              f"hardsearch step {1000 * r['hard_step_s']:.1f} ms -> {r['ratio_hard_step']:.3f}")
    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        **stamp(),
        "rounds": args.rounds,
    }
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
