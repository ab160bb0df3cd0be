"""Export and reload a model with bits per structure: identical logits, and the file against its promise.

From a float checkpoint (the committed ResNet-20 by default), for each granularity: prepare,
allocate with ``hessian`` at the target on training batches, fix the bits, re-estimate the
BatchNorm statistics, export the ``.mbits`` file, load it back (from its zoo recipe, no model
given), and compare the logits of the prepared model and of the loaded one on test images.
Prints the file size, the promise, the bound (2% + 4 KB) and the header; nothing is fine-tuned.

    python benchmarks/export_structures.py --data-root ../shared/data/cifar10-jpeg.zip \\
        --json benchmarks/results/export_structures.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import mixbits
from _provenance import stamp  # benchmarks/ is on sys.path when run as a script
from mixbits.budget import budget_bits
from mixbits.export.exporter import size_bound_bytes
from mixbits.methods import AllocationContext, allocate
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
    ap.add_argument("--target", default="24x")
    ap.add_argument("--granularities", default="layer,group:8,channel")
    ap.add_argument("--compare-images", type=int, default=1000, help="test images whose logits are compared")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = build_data(args.data, root=args.data_root, device=torch.device("cpu"))
    state = load_checkpoint(args.checkpoint)["state_dict"]
    loaders = data.loaders(batch_size=128, held_out_fraction=0.2, seed=0)
    x, _ = next(iter(data.test_loader(batch_size=args.compare_images)))  # normalised test images
    results = {}
    for gran in [g for g in args.granularities.split(",") if g]:
        t0 = time.time()
        model = new_model(args.model, data, state)
        space = prepare_(model, PrepareConfig(granularity=gran))
        budget = budget_bits(args.target, space.cost)
        ctx = AllocationContext(model=model, space=space, loaders=loaders, budget_bits=budget, target=args.target,
                                epochs=2, seed=0, device=torch.device("cpu"))
        alloc = allocate("hessian", ctx)
        bits = space.cost.normalize(alloc.bits)
        space.fix_(bits)
        recalibrate_bn_(model, loaders["full"], device=torch.device("cpu"))
        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.mbits"
            res = mixbits.export_model(model, space, path, zoo=args.model, model_kwargs=data.model_kwargs,
                                       input_shape=tuple(x.shape[1:]))
            loaded = mixbits.load(path)  # built from the file's zoo recipe
            with torch.no_grad():
                diff = float((model(x) - loaded(x)).abs().max())
            acc = evaluate(loaded, loaders["test"])
        promised = res.promised_bytes
        r = {"units": space.cost.num_units, "file_bytes": res.file_bytes, "promised_bytes": promised,
             "header_bytes": res.header_bytes, "difference_bytes": res.file_bytes - promised,
             "bound_bytes": size_bound_bytes(promised),
             "within_bound": abs(res.file_bytes - promised) <= size_bound_bytes(promised),
             "max_abs_logit_diff": diff, "weight_compression": space.cost.weight_compression(bits),
             "test_accuracy_loaded_no_finetune": acc, "seconds": time.time() - t0}
        results[gran] = r
        print(f"{gran:>9}: {r['units']:>4} units, {r['weight_compression']:.2f}x, file {r['file_bytes']:,} B, promised "
              f"{promised:,.0f} B (+{r['difference_bytes']:,.0f} B, bound {r['bound_bytes']:,.0f} B: "
              f"{'within' if r['within_bound'] else 'OVER'}), header {r['header_bytes']:,} B, max |logit diff| "
              f"{diff:.3g}, loaded test accuracy {100 * acc:.2f}% (no fine-tuning)", flush=True)
    meta = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads", "torch": torch.__version__,
            "checkpoint": Path(args.checkpoint).name, "target": args.target,
            **stamp()}
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
