"""torchvision models through the whole mixbits pipeline: float -> prepare -> allocate -> fine-tune -> export -> load.

    OMP_NUM_THREADS=1 python benchmarks/torchvision_models.py \
        --data-root ../shared/data/cifar10-jpeg.zip --out benchmarks/results/torchvision_models.md

Needs torchvision (``pip install 'mixbits[vision]'``); the recorded run used a separate
environment (torch 2.14.1, torchvision 0.29.1). For each model (default ``torchvision:mobilenet_v2``
and ``torchvision:resnet18``, built with random weights, 10 classes, 32x32 input) on CIFAR-10:

1. float training on a seeded training subset (``take_train_subset``), test accuracy on a seeded
   random test subset (the test split is sorted by class, so never its first N images);
2. ``prepare_`` with the default candidates: share of parameters quantized, compressions;
3. allocation at the target with a registered method (default ``hessian``, traces on a held-out
   20% of the training subset), BatchNorm re-estimation, fine-tuning distilled from the float
   copy, BatchNorm re-estimation, test accuracy;
4. ``export_model`` to a ``.mbits`` file (zoo recipe), ``load(..., trust_code=True)``, and the
   logits of the loaded model against the fine-tuned prepared model on one test batch.

Writes a Markdown table (``--out``) and a JSON file beside it with every number and the bits.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from _provenance import stamp  # benchmarks/ is on sys.path when run as a script

import mixbits
import mixbits.data
from mixbits.budget import budget_bits
from mixbits.data import TensorLoader, load_dataset, split_held_out, take_train_subset
from mixbits.methods import AllocationContext, allocate
from mixbits.models import create_model


def seeded_test_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of the test split (it is sorted by class: never take the first N)."""
    if n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def loaders(ds, batch_size: int, seed: int) -> dict[str, TensorLoader]:
    """{"full", "weights", "held_out", "test"} as ``mixbits sweep`` builds them (held-out 20% of the training subset)."""
    w_idx, h_idx = split_held_out(len(ds.train_y), 0.2, 0)
    common = dict(batch_size=batch_size, mean=ds.mean, std=ds.std, device="cpu")
    aug = ds.augment
    return {
        "full": TensorLoader(ds.train_x, ds.train_y, shuffle=True, augment=aug, seed=seed, drop_last=True, **common),
        "weights": TensorLoader(ds.train_x[w_idx], ds.train_y[w_idx], shuffle=True, augment=aug, seed=seed + 1,
                                drop_last=True, **common),
        "held_out": TensorLoader(ds.train_x[h_idx], ds.train_y[h_idx], shuffle=True, augment=aug, seed=seed + 2,
                                 drop_last=True, **common),
        "test": TensorLoader(ds.test_x, ds.test_y, shuffle=False, **{**common, "batch_size": 250}),
    }


def run_model(name: str, ds, args, workdir: Path) -> dict:
    t_start = time.time()
    stages: dict[str, float] = {}
    model_kwargs = {"in_channels": ds.input_shape[0], "num_classes": ds.num_classes, "input_size": ds.input_shape[1]}
    torch.manual_seed(args.seed)
    model = create_model(name, **model_kwargs)
    num_params = sum(p.numel() for p in model.parameters())
    ld = loaders(ds, args.batch_size, args.seed)

    # 1. float
    t0 = time.time()
    mixbits.fit(model, ld["full"], mixbits.TrainConfig(epochs=args.float_epochs, lr=args.float_lr, warmup_epochs=1))
    stages["float_train"] = time.time() - t0
    float_acc = mixbits.evaluate(model, ld["test"])
    print(f"[{name}] float: {100 * float_acc:.2f}% after {args.float_epochs} epochs ({stages['float_train']:.0f} s)",
          flush=True)

    # 2. prepare
    teacher = copy.deepcopy(model).eval()
    space = mixbits.prepare_(model)

    # 3. allocate, fine-tune
    budget = budget_bits(args.target, space.cost)
    ctx = AllocationContext(model=model, space=space, loaders=ld, budget_bits=budget, target=args.target, epochs=2,
                            seed=args.seed, device=torch.device("cpu"), teacher=teacher, options={})
    t0 = time.time()
    alloc = allocate(args.method, ctx)
    stages["allocate"] = time.time() - t0
    bits = {k: int(v) for k, v in alloc.bits.items()}
    summary = space.cost.summary(bits)
    assert summary["quantized_bits"] <= budget, (summary["quantized_bits"], budget)
    space.fix_(bits)
    mixbits.recalibrate_bn_(model, ld["full"])
    derived_acc = mixbits.evaluate(model, ld["test"])
    t0 = time.time()
    mixbits.finetune_(model, space, bits, ld["full"],
                      mixbits.TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, distill_weight=0.5),
                      teacher=teacher)
    mixbits.recalibrate_bn_(model, ld["full"])
    stages["finetune"] = time.time() - t0
    final_acc = mixbits.evaluate(model, ld["test"])
    print(f"[{name}] {args.method} {args.target}: {summary['weight_compression']:.2f}x weights, "
          f"derived {100 * derived_acc:.2f}%, fine-tuned {100 * final_acc:.2f}%", flush=True)

    # 4. export and load
    path = workdir / f"{name.replace(':', '_')}.mbits"
    t0 = time.time()
    res = mixbits.export_model(model, space, path, bits=bits, zoo=name, model_kwargs=model_kwargs,
                               input_shape=tuple(ds.input_shape))
    stages["export"] = time.time() - t0
    t0 = time.time()
    loaded = mixbits.load(path, trust_code=True)
    stages["load"] = time.time() - t0
    model.eval()
    xb, yb = next(iter(ld["test"]))
    with torch.no_grad():
        ref, out = model(xb), loaded(xb)
    max_diff = float((ref - out).abs().max())
    loaded_acc = mixbits.evaluate(loaded, ld["test"])
    print(f"[{name}] export: {res.file_bytes} bytes, promised {res.promised_bytes:.0f} "
          f"(within bound: {res.within_bound}); loaded logits max |diff| {max_diff:g} on {len(yb)} images; "
          f"loaded model accuracy {100 * loaded_acc:.2f}%", flush=True)

    return {
        "model": name, "model_kwargs": model_kwargs, "parameters": num_params,
        "quantized_layers": len(space.layers), "quantized_param_share": summary.get("quantized_param_share"),
        "budget_bits": budget, "quantized_bits": summary["quantized_bits"], "model_bits": summary["model_bits"],
        "float_model_bits": summary["float_model_bits"], "weight_compression": summary["weight_compression"],
        "model_compression": summary["model_compression"], "average_bits": summary["average_bits"],
        "float_accuracy": float_acc, "derived_accuracy": derived_acc, "final_accuracy": final_acc,
        "loaded_accuracy": loaded_acc, "file_bytes": res.file_bytes, "promised_bytes": res.promised_bytes,
        "header_bytes": res.header_bytes, "file_minus_promised_bytes": res.difference_bytes,
        "within_bound": res.within_bound, "file_compression": res.file_compression,
        "logits_max_abs_diff": max_diff, "logits_compared_on": int(len(yb)),
        "argmax_equal": bool(torch.equal(ref.argmax(1), out.argmax(1))),
        "seconds": time.time() - t_start, "stage_seconds": stages, "bits": bits,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="torchvision:mobilenet_v2,torchvision:resnet18")
    ap.add_argument("--data-root", required=True, help="cifar10-jpeg.zip, or a folder laid out split/class/image")
    ap.add_argument("--train-subset", type=int, default=4000)
    ap.add_argument("--test-subset", type=int, default=1000)
    ap.add_argument("--float-epochs", type=int, default=8)
    ap.add_argument("--float-lr", type=float, default=0.05)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--target", default="16x")
    ap.add_argument("--method", default="hessian")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the Markdown table here (and the JSON beside it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    ds = load_dataset("cifar10", root=args.data_root)
    ds = take_train_subset(ds, min(args.train_subset, len(ds.train_y)), seed=args.seed)
    tx, ty = seeded_test_subset(ds.test_x, ds.test_y, args.test_subset, 4321)
    ds = replace(ds, test_x=tx, test_y=ty)
    data_seconds = time.time() - t0
    print(f"data: {len(ds.train_y)} train / {len(ds.test_y)} test images, test classes "
          f"{torch.bincount(ds.test_y, minlength=10).tolist()} ({data_seconds:.1f} s)", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(run_model(name, ds, args, Path(tmp)))

    import torchvision

    cmd = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)") + " python " + " ".join(
        [Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           **stamp()}
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    lines = [
        "# torchvision models through prepare -> allocate -> fine-tune -> export -> load",
        "",
        f"Command: `{cmd}`  ",
        f"Environment: torch {env['torch']}, torchvision {env['torchvision']}, Python {env['python']}; "
        f"{env['machine']} CPU container with {env['cpu_count']} cores shared with other jobs, "
        f"{env['torch_threads']} torch thread; commit {env['commit']}{' (tree dirty)' if env['dirty'] else ''}.  ",
        f"Data: CIFAR-10 (`cifar10-jpeg.zip`), seeded training subset of {len(ds.train_y)} images "
        f"(hessian traces on a held-out 20% of it), seeded random test subset of {len(ds.test_y)} images. "
        f"Recipe: {args.float_epochs} float epochs (lr {args.float_lr}, batch {args.batch_size}, crop+flip), "
        f"`{args.method}` allocation at {args.target}, {args.finetune_epochs} fine-tune epochs "
        f"(lr {args.finetune_lr}, distilled from the float copy, weight 0.5), BatchNorm re-estimated after "
        f"allocation and after fine-tuning. Models built with random weights (no pretraining), 32x32 input "
        f"through the ImageNet stems unchanged.",
        "",
        "| model | parameters | share quantized | weight compr. | model compr. | avg bits | float acc "
        "| derived acc | final acc | file bytes / promised | export->load max abs diff | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['parameters']:,} | {100 * r['quantized_param_share']:.2f}% "
            f"| {r['weight_compression']:.2f}x | {r['model_compression']:.2f}x | {r['average_bits']:.3f} "
            f"| {100 * r['float_accuracy']:.1f}% | {100 * r['derived_accuracy']:.1f}% | {100 * r['final_accuracy']:.1f}% "
            f"| {r['file_bytes']:,} / {r['promised_bytes']:,.0f} ({r['file_minus_promised_bytes']:+,.0f}) "
            f"| {r['logits_max_abs_diff']:g} | {r['seconds']:.0f} |")
    lines += ["", "Seconds are wall-clock per model on the shared CPU, split by stage:", ""]
    for r in rows:
        s = r["stage_seconds"]
        lines.append(f"- `{r['model']}`: float training {s['float_train']:.0f} s, allocation {s['allocate']:.1f} s, "
                     f"fine-tuning + BN {s['finetune']:.0f} s, export {s['export']:.2f} s, load {s['load']:.2f} s; "
                     f"{r['quantized_layers']} quantized layers; file within the 2% + 4 KiB bound: {r['within_bound']}; "
                     f"loaded-model accuracy {100 * r['loaded_accuracy']:.1f}%, same argmax on the compared batch "
                     f"of {r['logits_compared_on']}: {r['argmax_equal']}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(
            {"command": cmd, "environment": env, "settings": settings, "data_seconds": data_seconds, "rows": rows},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
