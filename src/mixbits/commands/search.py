"""``mixbits search``: search, fine-tune and evaluate; print the per-layer table."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from .options import parse_target_text, resolve_config
from .settings_args import add_settings_arguments

NAME = "search"
HELP = "search the bitwidths, fine-tune and evaluate (default: a CNN on scikit-learn digits)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .defaults import SEARCH as d

    add_settings_arguments(p, d, out_default="runs/<time>-<model>-<target>")
    p.add_argument("--method", help=f"allocation method (default {d.method}; {d.post_training_method} with "
                                    f"--post-training)")
    p.add_argument("--target", type=parse_target_text, help=f'size target: "24x" weight compression, "12KB" size of '
                                                            f'the .mbits file (header included), "1.5bits" (default {d.target})')
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
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
        args.resume_hint = f"continue it with: mixbits search --resume {shlex.quote(str(folder))}"

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
