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
from typing import NoReturn, Sequence

from . import __version__
from .safetext import printable

__all__ = ["main"]

COMMAND_MODULES = (
    "mixbits.commands.search",
    "mixbits.commands.report",
    "mixbits.commands.sweep",
    "mixbits.commands.train",
    "mixbits.commands.export",
    "mixbits.commands.inspect",
)


class _Parser(argparse.ArgumentParser):
    """An argument error is one line that points to --help, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixbits", description="Automatic mixed-precision search for PyTorch models.")
    parser.add_argument("--log-level", default="WARNING", help="logging level on stderr (default WARNING)")
    parser.add_argument("--version", action="version", version=f"mixbits {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        mod = importlib.import_module(module_name)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _value_options(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(options that take one value, every option string) over the parser and its subcommands."""
    takes_value, known = set(), set()
    parsers = [parser]
    while parsers:
        p = parsers.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            known.update(action.option_strings)
            if action.option_strings and action.nargs is None and not isinstance(
                    action, (argparse._StoreConstAction, argparse._HelpAction)):
                takes_value.update(action.option_strings)
    return takes_value, known


def join_negative_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--target -5KB`` -> ``--target=-5KB``: argparse would read ``-5KB`` as an unknown option."""
    takes_value, known = _value_options(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (tok in takes_value and nxt is not None and len(nxt) > 1 and nxt.startswith("-")
                and nxt.split("=", 1)[0] not in known):
            out.append(f"{tok}={nxt}")
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else list(argv), parser))
    except SystemExit as exc:  # --help (0) or an argument error (2, one line on stderr)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .train import NonFiniteLossError

    try:
        return args._run(args)
    except (ValueError, OSError, NonFiniteLossError, ImportError) as exc:
        print(f"mixbits {args.command}: error: {printable(str(exc), keep=chr(10))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A new line: the interrupt usually lands in the middle of a progress bar.
        hint = getattr(args, "resume_hint", None)
        print(f"\nmixbits {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
