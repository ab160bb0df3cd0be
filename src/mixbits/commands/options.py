"""Option parsing shared by subcommands: bit lists, pins, TOML config files."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["parse_bits", "parse_pin", "parse_target_text", "parse_granularity_text", "load_toml", "resolve_config"]


def parse_bits(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4); argparse names the option (``--bits``) in front of the message."""
    try:
        bits = tuple(int(b) for b in str(text).split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"candidate bits must be comma-separated integers like 1,2,4,8,16,32, "
                                         f"got {text!r}") from None
    if not bits:
        raise argparse.ArgumentTypeError(f"no candidate bits in {text!r}: write at least one bitwidth, "
                                         f"e.g. --bits 1,2,4,8,16,32")
    return bits


def parse_target_text(text: str) -> str:
    """Check a size target (``"24x"``, ``"12KB"``, ``"1.5bits"``) while parsing arguments; keep the text."""
    from ..budget import parse_target  # torch-free

    try:
        parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_granularity_text(text: str) -> str:
    """Check ``layer``, ``channel``, ``group:N`` or ``head`` while parsing arguments; the canonical text."""
    from ..granularity import parse_granularity  # torch-free

    try:
        return parse_granularity(text).text
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_pin(text: str) -> tuple[str, int]:
    name, sep, bits = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a pin is LAYER=BITS (e.g. features.0=8), got {text!r}")
    try:
        return name, int(bits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pin {text!r}: bits must be an integer") from None


def _pins_from_list(items: list, where: str) -> dict[str, int]:
    """Pins given as a list: ``("features.0", 8)`` pairs (the command line) or ``"features.0=8"`` strings (TOML)."""
    out: dict[str, int] = {}
    for item in items:
        if isinstance(item, str):
            try:
                name, bits = parse_pin(item)
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"pins in {where}: {exc}") from None
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            name, bits = item
        else:
            raise ValueError(f"pins in {where}: {item!r} is not a pin; write a table, pins = {{\"features.0\" = 8}}, "
                             f"or a list of \"LAYER=BITS\" strings, pins = [\"features.0=8\"]")
        out[str(name)] = bits
    return out


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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # a binary file is a UnicodeDecodeError
        raise ValueError(f"config file {path!r} is not valid TOML: {str(exc)[:200]}") from None


def resolve_config(cls, args: argparse.Namespace, skip: set[str]) -> Any:
    """Defaults of ``cls``, then the TOML file, then command-line options, checked for type and range.

    Raises:
        ValueError: an unreadable config file, unknown keys, or values of the wrong type or out of range,
            naming each key and where it came from (before any folder is created or any training starts).
    """
    from ..settings import check_method_options, validate_settings

    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if getattr(args, "config", None):
        raw = load_toml(args.config)
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ValueError(f"config file {args.config!r} has unknown keys {unknown}; known keys: {sorted(fields)}")
        values.update(raw)
        sources.update({k: f"config file {args.config!r}" for k in raw})
    for name in fields:
        v = getattr(args, name, None)
        if v is not None and name not in skip:
            values[name] = v
            sources[name] = "the command line"
    if "pins" in values and isinstance(values["pins"], list):
        values["pins"] = _pins_from_list(values["pins"], sources.get("pins", "the settings"))
    config = validate_settings(cls, values, sources)
    options = getattr(config, "method_options", None) or {}
    where = sources.get("method_options", "the settings")
    if "method" in fields:  # {option: value} for the one method
        check_method_options(options, [config.method], where)
    elif "methods" in fields:  # {method: {option: value}}
        for name, opts in options.items():
            if not isinstance(opts, dict):
                raise ValueError(f"method_options.{name} in {where} must be a table of options, got {opts!r}")
            check_method_options(opts, [name], where)
    return config
