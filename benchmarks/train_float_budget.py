"""Train a float zoo model with the longest cosine recipe that fits a wall-clock budget.

One probe epoch (on a throw-away copy) times an epoch; the real run then trains
``min(max_epochs, budget / epoch_time)`` epochs with the usual recipe (SGD +
Nesterov, warm-up, cosine decay to zero), so the schedule is complete, never cut
short. Used to make the committed float checkpoints under
``benchmarks/checkpoints/`` on a lent GPU:

    python benchmarks/train_float_budget.py --model resnet20 --data cifar10 \\
        --data-root cifar10-jpeg.zip --budget-s 240 --max-epochs 200 --out OUT

``--init-from CKPT`` continues from a float checkpoint instead of a random start: a second
cosine cycle (a warm restart, as in SGDR) with the learning rate given.

Writes ``OUT/float.pt`` (the checkpoint mixbits loads), ``OUT/train.json`` (the
record: epochs, per-epoch history, test accuracy, timings, device) and prints the
sha256 of the checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import sys
import time
from pathlib import Path

import torch

from mixbits.commands.train import FloatTrainConfig, train_float
from mixbits.pipeline import build_data, float_checkpoint, load_float_state, new_model, resolve_device
from mixbits.runfiles import prepare_run_dir, save_checkpoint, write_json
from mixbits.train import TrainConfig, evaluate, fit


def probe_epoch_seconds(config: FloatTrainConfig) -> float:
    """Seconds of one training epoch of ``config``'s model and data (after a short warm-up)."""
    device = resolve_device(config.device)
    data = build_data(config.data, root=config.data_root, device=device)
    model = new_model(config.model, data)
    loader = data.train_loader(config.batch_size, seed=123)
    fit(copy.deepcopy(model), loader, TrainConfig(epochs=1, lr=config.lr), device=device)  # warm-up (kernels, caches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    fit(model, loader, TrainConfig(epochs=1, lr=config.lr), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-root")
    p.add_argument("--budget-s", type=float, required=True, help="wall-clock seconds for the real run")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--min-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--init-from", help="a float checkpoint to continue from (a second cosine cycle)")
    p.add_argument("--epochs", type=int, help="train exactly this many epochs (no probe)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.init_from:
        return continue_training(args, argv)
    base = FloatTrainConfig(data=args.data, data_root=args.data_root, model=args.model, epochs=1, lr=args.lr,
                            batch_size=args.batch_size, weight_decay=args.weight_decay, seed=args.seed,
                            device=args.device, out=args.out)
    t_epoch = probe_epoch_seconds(base)
    epochs = int(max(args.min_epochs, min(args.max_epochs, math.floor(args.budget_s / t_epoch))))
    print(f"probe: {t_epoch:.2f} s/epoch -> {epochs} epochs in a budget of {args.budget_s:.0f} s", flush=True)
    config = FloatTrainConfig(**{**base.__dict__, "epochs": epochs, "warmup_epochs": min(2.0, epochs / 10)})
    s = train_float(config, progress=False, command=_command(argv),
                    on_epoch=lambda e, st: print(f"epoch {st['epoch']}/{epochs} loss {st['loss']:.4f} "
                                                 f"train acc {100 * st['train_accuracy']:.2f}%", flush=True))
    digest = hashlib.sha256(Path(s["checkpoint"]).read_bytes()).hexdigest()
    print(f"float test accuracy {100 * s['test_accuracy']:.2f}% after {epochs} epochs "
          f"({s['seconds']['train']:.1f} s on {s['device']}); probe {t_epoch:.2f} s/epoch")
    print(f"sha256 {digest}  {s['checkpoint']}")
    return 0


def _command(argv: list[str] | None) -> str:
    return "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))


def continue_training(args: argparse.Namespace, argv: list[str] | None) -> int:
    """A second cosine cycle from ``args.init_from``; writes the checkpoint and record like :func:`train_float`."""
    if not args.epochs:
        raise SystemExit("--init-from needs --epochs")
    t_start = time.time()
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    data = build_data(args.data, root=args.data_root, device=device)
    model = new_model(args.model, data)
    start = load_float_state(model, args.init_from)
    loader = data.train_loader(args.batch_size, seed=args.seed)
    test = data.test_loader()
    before = evaluate(model, test, device=device)
    recipe = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=1.0)
    t0 = time.time()
    history = fit(model, loader, recipe, device=device,
                  on_epoch=lambda e, st: print(f"epoch {st['epoch']}/{args.epochs} loss {st['loss']:.4f} "
                                               f"train acc {100 * st['train_accuracy']:.2f}%", flush=True))
    train_s = time.time() - t0
    acc = evaluate(model, test, device=device)
    out = prepare_run_dir(args.out)
    ckpt = save_checkpoint(out / "float.pt", float_checkpoint(args.model, args.data, data, model.state_dict(), acc))
    write_json(out / "train.json", {"command": _command(argv), "init_from": args.init_from,
                                    "init_test_accuracy": before, "init_record": start.get("test_accuracy"),
                                    "test_accuracy": acc, "epochs": args.epochs, "lr": args.lr,
                                    "batch_size": args.batch_size, "history": history, "device": str(device),
                                    "test_samples": len(data.dataset.test_y),
                                    "seconds": {"train": round(train_s, 2), "total": round(time.time() - t_start, 2)}})
    digest = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    print(f"float test accuracy {100 * before:.2f}% -> {100 * acc:.2f}% after {args.epochs} more epochs "
          f"({train_s:.1f} s on {device})")
    print(f"sha256 {digest}  {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
