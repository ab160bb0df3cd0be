"""``mixbits search``: search, fine-tune and evaluate; print the per-layer table."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from .options import parse_bits, parse_pin, parse_target_text, resolve_config

NAME = "search"
HELP = "search the bitwidths, fine-tune and evaluate (default: a CNN on scikit-learn digits)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .defaults import SEARCH as d

    p.add_argument("-c", "--config", help="TOML file of settings (command-line options override it)")
    p.add_argument("--data", help=f"data set name (default {d.data})")
    p.add_argument("--data-root", help="where the data set lives (a folder or zip), or is downloaded to")
    p.add_argument("--model", help=f"model name (default {d.model})")
    p.add_argument("--method", help=f"allocation method (default {d.method})")
    p.add_argument("--target", type=parse_target_text, help=f'size target: "24x" weight compression, "12KB" size of the .mbits file (header included), "1.5bits" (default {d.target})')
    p.add_argument("--bits", type=parse_bits, dest="candidates", help="candidate bitwidths, e.g. 1,2,4,8,16,32")
    p.add_argument("--pin", type=parse_pin, action="append", dest="pins", metavar="LAYER=BITS",
                   help="fix layers matching a glob pattern at BITS (repeatable)")
    p.add_argument("--exclude", action="append", metavar="PATTERN", help="keep layers matching PATTERN in float (repeatable)")
    p.add_argument("--float-epochs", type=int, help=f"float training epochs when no checkpoint is given (default {d.float_epochs})")
    p.add_argument("--search-epochs", type=int, help=f"search epochs (default {d.search_epochs})")
    p.add_argument("--finetune-epochs", type=int, help=f"fine-tuning epochs (default {d.finetune_epochs})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    p.add_argument("--float-lr", type=float, help=f"peak learning rate of the float training (default {d.float_lr})")
    p.add_argument("--finetune-lr", type=float, help=f"peak learning rate of the fine-tuning (default {d.finetune_lr})")
    p.add_argument("--held-out-fraction", type=float, help=f"training data held out for the logits (default {d.held_out_fraction})")
    p.add_argument("--no-distill", dest="distill", action="store_false", default=None,
                   help="do not distil from the float model during search and fine-tuning")
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--out", help="run folder (default runs/<time>-<model>-<target>)")
    p.add_argument("--force", action="store_true", help="overwrite the run already in --out (its files are removed)")
    p.add_argument("--checkpoint", help="float checkpoint to start from instead of training the float model")
    p.add_argument("--train-subset", type=int, metavar="N",
                   help="use a fixed seeded subset of N training samples (quick CPU recipes; default all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--resume", metavar="RUN_FOLDER",
                   help="continue an interrupted run from its last checkpoint, with its saved settings "
                        "(only --device may change)")


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..report import format_table
    from ..run import RunConfig, resume_run, run_search
    from .logfile import attach_log_file, detach_log_file

    cmd = "mixbits " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    handler: list = []
    main = True

    def on_folder(folder) -> None:
        handler.append(attach_log_file(folder))

    try:
        if args.resume:
            _check_resume_args(args, RunConfig)
            report = resume_run(args.resume, device=args.device, progress=not args.quiet, command=cmd,
                                on_folder=on_folder)
        else:
            config = resolve_config(RunConfig, args, skip=set())
            report = run_search(config, progress=not args.quiet, command=cmd, on_folder=on_folder, force=args.force)
        main = distributed.is_main()
    finally:
        detach_log_file(handler[0] if handler else None)
        distributed.destroy()
    if main:
        print(format_table(report))
        print(f"\nrun folder: {report['run_folder']}  ({report['seconds']['total']:.1f} s on {report['device']})")
    return 0


def _check_resume_args(args: argparse.Namespace, config_cls) -> None:
    given = [f.name for f in dataclasses.fields(config_cls)
             if f.name != "device" and getattr(args, f.name, None) is not None]
    if getattr(args, "config", None):
        given.insert(0, "config")
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"--resume continues a run with the settings saved in {args.resume}/settings.json; "
                         f"drop {flags} (only --device may change)")
