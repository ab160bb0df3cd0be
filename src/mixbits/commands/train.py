"""``mixbits train``: train the float model that ``mixbits search --checkpoint`` starts from.

The recipe is SGD with Nesterov momentum, linear warm-up then cosine decay,
weight decay on weights (not on biases and norms) and optional label smoothing
(:func:`mixbits.train.fit`). The run folder holds:

- ``settings.json``  the resolved settings;
- ``float.pt``       the checkpoint, in the format of a search run's ``float.pt``
  (model, model_kwargs, data, state_dict, test_accuracy);
- ``train.json``     per-epoch loss, accuracy and learning rate, the test accuracy and the timings;
- ``resume.pt``      while training: the state after the last finished epoch (``mixbits train --resume``),
  removed once ``float.pt`` is written.

A resumed run ends with exactly the weights of an uninterrupted one (same device).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

NAME = "train"
HELP = "train the float model (SGD + Nesterov, cosine schedule) and save a checkpoint for search"

__all__ = ["FloatTrainConfig", "train_float", "resume_train", "load_train_settings", "NAME", "HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
TRAIN_FILES = ("settings.json", "float.pt", "train.json", RESUME_FILE)


@dataclass(frozen=True, kw_only=True)
class FloatTrainConfig:
    """Every setting of ``mixbits train`` (the CLI options and the keys of a ``-c`` TOML file)."""

    data: str = "digits"
    data_root: str | None = None
    model: str = "digits_cnn"
    epochs: int = 30
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    train_subset: int | None = None
    held_out_fraction: float = 0.2
    train_on_held_out: bool = False
    seed: int = 0
    device: str = "auto"
    out: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be >= 1, got {self.train_subset}")


def resume_train(folder: str | Path, *, device: str | None = None, progress: bool = True,
                 command: str | None = None, on_epoch: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Continue the ``mixbits train`` run in ``folder`` from its last finished epoch, with its saved settings.

    Raises:
        FileNotFoundError: ``folder`` has no settings.json.
        ValueError: settings.json is not a ``mixbits train`` run's.
    """
    return train_float(load_train_settings(folder, device=device), progress=progress, command=command,
                       on_epoch=on_epoch, resume=True)


def load_train_settings(folder: str | Path, *, device: str | None = None) -> FloatTrainConfig:
    """The settings saved in a ``mixbits train`` run folder (``out`` set to ``folder``), checked."""
    from ..settings import validate_settings

    path = Path(folder) / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a mixbits train run folder: it has no settings.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is not readable JSON: {exc}") from None
    names = {f.name for f in dataclasses.fields(FloatTrainConfig)}
    values = {k: v for k, v in raw.items() if k in names}
    if "held_out_fraction" not in raw:  # a run from before the held-out part was left out trained on all of it
        values["train_on_held_out"] = True
    values["out"] = str(folder)
    if device is not None:
        values["device"] = device
    return validate_settings(FloatTrainConfig, values, {k: repr(str(path)) for k in values})


def train_float(config: FloatTrainConfig, *, progress: bool = True, command: str | None = None,
                on_epoch: Callable[[int, dict], None] | None = None, resume: bool = False,
                force: bool = False, on_folder: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train the float model, evaluate it on the test split and write the run folder.

    Every epoch ends with an atomic checkpoint (``resume.pt``); with ``resume=True`` the run
    in ``config.out`` continues from it and ends with the weights an uninterrupted run has.

    Args:
        resume: continue the run in ``config.out`` (see :func:`resume_train`).
        force: overwrite a run already in ``config.out``.
        on_folder: called with the run folder once it is claimed (the CLI's resume hint).

    Returns:
        summary: run folder, checkpoint path, test accuracy, per-epoch history, timings.

    Raises:
        ValueError: unknown data set or model, a bad subset size, an unwritable folder, a folder
            holding a run without ``force`` (before any training).
        RunFolderBusyError: another process writes the folder.
        NonFiniteLossError: training diverged.
    """
    import torch

    from ..pipeline import build_data, new_model, resolve_device
    from ..runfiles import claim_run_dir, load_checkpoint, write_json
    from ..train import NonFiniteLossError, TrainConfig

    t_start = time.time()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    # the pipeline's data stage: the subset `mixbits search --train-subset` takes too
    data = build_data(config.data, root=config.data_root, train_subset=config.train_subset, device=device)
    model = new_model(config.model, data)
    recipe = TrainConfig(epochs=config.epochs, lr=config.lr, momentum=config.momentum, nesterov=True,
                         weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs,
                         label_smoothing=config.label_smoothing)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.model}-{config.data}").strip("_")
    out = Path(config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-train-{slug}")
    lock = claim_run_dir(out, markers=("settings.json",), outputs=TRAIN_FILES, force=force, resume=resume)
    if on_folder is not None:
        on_folder(out)
    try:
        if resume and (out / "train.json").is_file() and not (out / RESUME_FILE).is_file():
            log.info("run %s is already complete", out)
            return json.loads((out / "train.json").read_text(encoding="utf-8"))
        state = load_checkpoint(out / RESUME_FILE)["fit"] if resume and (out / RESUME_FILE).is_file() else None
        if not resume:
            write_json(out / "settings.json", {**asdict(config), "out": str(out), "device_resolved": str(device),
                                               **({"command": command} if command else {})})
        try:
            return _train(config, data, model, recipe, out, state, progress=progress,
                          command=command, on_epoch=on_epoch, t_start=t_start)
        except NonFiniteLossError as exc:
            kept = (f"{out / RESUME_FILE} keeps the last good epoch, but --resume repeats the same settings."
                    if (out / RESUME_FILE).is_file() else "No epoch finished, so there is nothing to resume.")
            raise NonFiniteLossError(f"{exc} {kept} Start again with a lower --lr and --force to reuse {out}.") from None
    finally:
        lock.release()


def _train(config: FloatTrainConfig, data, model, recipe, out: Path, state: dict | None, *,
           progress: bool, command: str | None, on_epoch: Callable[[int, dict], None] | None,
           t_start: float) -> dict[str, Any]:
    from ..pipeline import float_checkpoint
    from ..runfiles import save_checkpoint, write_json
    from ..train import evaluate, fit

    device, ds = data.device, data.dataset
    if config.train_on_held_out:
        train_loader = data.train_loader(config.batch_size, config.seed)
    else:  # the part `mixbits search` scores allocations on stays unseen
        kept, _ = data.held_out_split(config.held_out_fraction)
        train_loader = data.train_loader(config.batch_size, config.seed, kept)
    test_loader = data.test_loader(1000)

    t0 = time.time()
    history = fit(model, train_loader, recipe, device=device, on_epoch=on_epoch, progress=progress, desc="float",
                  resume=state, on_checkpoint=lambda s: save_checkpoint(out / RESUME_FILE, {"version": 1, "fit": s}))
    train_s = time.time() - t0
    test_acc = evaluate(model, test_loader, device=device)
    ckpt = save_checkpoint(out / "float.pt", float_checkpoint(config.model, config.data, data, model.state_dict(), test_acc,
                                                              data_root=config.data_root,
                                                              train_subset=config.train_subset,
                                                              held_out_fraction=None if config.train_on_held_out
                                                              else config.held_out_fraction))
    images = config.epochs * len(train_loader) * config.batch_size
    summary = {"command": command, "run_folder": str(out), "checkpoint": str(ckpt), "model": config.model,
               "data": config.data, "train_samples": len(train_loader.x), "test_samples": len(ds.test_y),
               "held_out_left_out": len(ds.train_y) - len(train_loader.x),
               "parameters": sum(p.numel() for p in model.parameters()), "test_accuracy": test_acc,
               "device": str(device), "history": history,
               "seconds": {"train": round(train_s, 2), "total": round(time.time() - t_start, 2)},
               "train_images_per_s": round(images / max(train_s, 1e-9), 1)}
    write_json(out / "train.json", summary)
    (out / RESUME_FILE).unlink(missing_ok=True)  # the run is complete: float.pt and train.json hold it
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = FloatTrainConfig()
    p.add_argument("-c", "--config", help="TOML file of settings (command-line options override it)")
    p.add_argument("--data", help=f"data set: a name, imagefolder:PATH or package.module:function (default {d.data})")
    p.add_argument("--data-root", help="where the data set lives (a folder or zip), or is downloaded to")
    p.add_argument("--model", help=f"model: a name, torchvision:NAME, timm:NAME or package.module:function "
                                   f"(default {d.model})")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {d.epochs})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    p.add_argument("--momentum", type=float, help=f"Nesterov momentum (default {d.momentum})")
    p.add_argument("--weight-decay", type=float, help=f"weight decay of conv/linear weights (default {d.weight_decay})")
    p.add_argument("--warmup-epochs", type=float, help=f"linear warm-up epochs before the cosine decay "
                                                       f"(default {d.warmup_epochs})")
    p.add_argument("--label-smoothing", type=float, help=f"label smoothing (default {d.label_smoothing})")
    p.add_argument("--train-subset", type=int, metavar="N",
                   help="train on a fixed seeded subset of N training samples (quick CPU recipes; default all)")
    p.add_argument("--held-out-fraction", type=float,
                   help=f"the part of the training split left out, the one `mixbits search` with the same "
                        f"--held-out-fraction and --train-subset ranks allocations on (default {d.held_out_fraction})")
    p.add_argument("--train-on-held-out", action="store_true", default=None,
                   help="train on the whole training split: a later search then measures its held-out losses on "
                        "images the model has seen")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--out", help="run folder (default runs/<time>-train-<model>-<data>)")
    p.add_argument("--force", action="store_true", help="overwrite the run already in --out (its files are removed)")
    p.add_argument("--resume", metavar="RUN_FOLDER",
                   help="continue an interrupted run from its last finished epoch, with its saved settings "
                        "(only --device may change)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    from .options import resolve_config

    from .search import _check_resume_args

    cmd = "mixbits " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def show(epoch: int, stats: dict) -> None:
        print(f"epoch {stats['epoch']}/{config.epochs}  loss {stats['loss']:.4f}  "
              f"train acc {100 * stats['train_accuracy']:.2f}%  lr {stats['lr']:.4g}", flush=True)

    if args.resume:
        _check_resume_args(args, FloatTrainConfig)
        config = load_train_settings(args.resume, device=args.device)
    else:
        config = resolve_config(FloatTrainConfig, args, skip=set())
    s = train_float(config, progress=not args.quiet, command=cmd, on_epoch=None if args.quiet else show,
                    resume=bool(args.resume), force=args.force,
                    on_folder=lambda folder: setattr(args, "resume_hint", f"continue it with: mixbits train --resume "
                                                                          f"{shlex.quote(str(folder))}"))
    print(f"float test accuracy {100 * s['test_accuracy']:.2f}% ({s['test_samples']} test samples, "
          f"{s['train_samples']} training samples, {s['parameters']:,} parameters, "
          f"{s['seconds']['train']:.1f} s on {s['device']})")
    print(f"checkpoint: {s['checkpoint']}")
    search = ["mixbits", "search", "--data", config.data, "--model", config.model, "--checkpoint", s["checkpoint"]]
    if config.data_root:
        search += ["--data-root", config.data_root]
    if config.train_subset is not None:
        search += ["--train-subset", str(config.train_subset)]
    if not config.train_on_held_out and config.held_out_fraction != FloatTrainConfig().held_out_fraction:
        search += ["--held-out-fraction", str(config.held_out_fraction)]
    print("next: " + " ".join(shlex.quote(a) for a in search) + " --target 24x")
    return 0
