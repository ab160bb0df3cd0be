"""Does the number of held-out batches of ``hessian``'s Fisher trace change its bits?

For each model, target and seed, ``hessian`` allocates twice from a fresh row of the benchmark
(`allocation_quality.py`'s ``start_row``: the committed checkpoint, the seed's loaders), once with
``batches=4`` (the default) and once with ``--batches`` (default 16); a cell whose bits differ is
scored post-training both ways (bits fixed, BatchNorm re-estimated, full test set).

    OMP_NUM_THREADS=1 python benchmarks/hessian_batches.py --json benchmarks/results/hessian_batches.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import describe, stamp  # noqa: E402
import allocation_quality as aq  # noqa: E402

from mixbits.pipeline import Settings  # noqa: E402
from mixbits.pipeline.allocation import allocate_bits, prepare_config, start_row  # noqa: E402
from mixbits.pipeline.data import build_data  # noqa: E402
from mixbits.pipeline.float_model import check_targets, load_float_state, new_model  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = {
    "lenet5": ("mnist5k", "lenet5_mnist5k_e60.pt", None, None),
    "digits_cnn": ("digits", "digits_cnn_e18.pt", None, None),
    "resnet20": ("cifar10", "resnet20_cifar10_e37.pt", str(HERE.parent.parent / "shared/data/cifar10-jpeg.zip"), 5000),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--targets", nargs="+", default=["8x", "16x", "24x", "28x", "1.5bits", "1.2bits"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--data-root", help="CIFAR-10 for resnet20 (default ../shared/data/cifar10-jpeg.zip)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"meta": {**stamp(), "machine": describe(), "command": " ".join(sys.argv)}, "cells": []}
    for name in args.models:
        data_name, ckpt, root, subset = MODELS[name]
        root = args.data_root or root
        settings = Settings(data=data_name, data_root=root, model=name, checkpoint=str(HERE / "checkpoints" / ckpt),
                            train_subset=subset, finetune_epochs=1, compute_matched=False, finetune_from="float",
                            device="cpu")
        data = build_data(data_name, root=root, train_subset=subset, device=torch.device("cpu"))
        model = new_model(name, data)
        load_float_state(model, settings.checkpoint)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        budgets = dict(zip(args.targets, check_targets(model, prepare_config(settings), args.targets)))
        for seed in args.seeds:
            for target in args.targets:
                bits, seconds = {}, {}
                for b in (4, args.batches):
                    row = start_row(settings, data, state, seed)
                    t0 = time.perf_counter()
                    bits[b] = allocate_bits(row, settings, "hessian", budget=budgets[target], target=target,
                                            options={"batches": b}).bits
                    seconds[b] = time.perf_counter() - t0
                cell = {"model": name, "target": target, "seed": seed, "same_bits": bits[4] == bits[args.batches],
                        "seconds": {str(b): round(s, 2) for b, s in seconds.items()}}
                if not cell["same_bits"]:
                    row = start_row(settings, data, state, seed)
                    cell["post_accuracy"] = {str(b): round(aq._post_accuracy(row, bits[b]), 4) for b in bits}
                    cell["differs"] = {n: [bits[4][n], bits[args.batches][n]] for n in bits[4]
                                       if bits[4][n] != bits[args.batches][n]}
                out["cells"].append(cell)
                print(json.dumps(cell), flush=True)
    if args.json:
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
