"""Option parsing shared by subcommands: bit lists, pins, TOML config files."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["parse_bits", "parse_pin", "load_toml", "resolve_config"]


def parse_bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in str(text).split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"candidate bits must be comma-separated integers like 1,2,4,8,16,32, got {text!r}")


def parse_pin(text: str) -> tuple[str, int]:
    name, sep, bits = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a pin is LAYER=BITS (e.g. features.0=8), got {text!r}")
    try:
        return name, int(bits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pin {text!r}: bits must be an integer") from None


def load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path!r} does not exist")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path!r} is not valid TOML: {exc}") from None


def resolve_config(cls, args: argparse.Namespace, skip: set[str]) -> Any:
    """Defaults of ``cls``, then the TOML file, then command-line options."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        raw = load_toml(args.config)
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ValueError(f"config file {args.config!r} has unknown keys {unknown}; known keys: {sorted(fields)}")
        values.update(raw)
    for name in fields:
        v = getattr(args, name, None)
        if v is not None and name not in skip:
            values[name] = v
    if "pins" in values and isinstance(values["pins"], list):
        values["pins"] = dict(values["pins"])
    for key in ("candidates", "exclude"):
        if key in values:
            values[key] = tuple(values[key])
    return cls(**values)


