"""The ``mixbits`` command line: a thin shell over the library.

Each subcommand is a module of :mod:`mixbits.commands` that defines ``NAME``,
``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit code``; list it in
``COMMAND_MODULES``. Errors a user can fix (ValueError, FileNotFoundError...) are
printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

__all__ = ["main"]

COMMAND_MODULES = (
    "mixbits.commands.search",
    "mixbits.commands.report",
    "mixbits.commands.sweep",
    "mixbits.commands.train",
    "mixbits.commands.export",
    "mixbits.commands.inspect",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixbits", description="Automatic mixed-precision search for PyTorch models.")
    parser.add_argument("--log-level", default="WARNING", help="logging level on stderr (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        mod = importlib.import_module(module_name)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .train import NonFiniteLossError

    try:
        return args._run(args)
    except (ValueError, OSError, NonFiniteLossError, ImportError) as exc:
        print(f"mixbits {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
