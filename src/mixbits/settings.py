"""Typed settings: every value from the command line or a TOML file, checked before any work.

A settings dataclass (:class:`mixbits.pipeline.RunConfig`, :class:`mixbits.pipeline.SweepConfig`,
``FloatTrainConfig``) is mirrored by a strict pydantic model: an integer is an integer
(not ``2.5``, ``"10"`` or ``true``), a boolean a boolean (not ``"no"``), a list a
list (not ``"1,2,4"``), and the ranges of :data:`BOUNDS` hold. A failure is one
ValueError that names every bad key and where it came from, raised before any
folder is created or any training starts.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

import pydantic
from pydantic import ConfigDict, Field

__all__ = ["BOUNDS", "validate_settings", "check_method_options"]

# Ranges by setting name, shared by the configs that have the setting.
BOUNDS: dict[str, dict[str, float]] = {
    "float_epochs": {"ge": 0, "le": 100_000}, "finetune_epochs": {"ge": 0, "le": 100_000},
    "search_epochs": {"ge": 1, "le": 100_000}, "epochs": {"ge": 1, "le": 100_000},
    "batch_size": {"ge": 1, "le": 1 << 20}, "held_out_fraction": {"gt": 0, "lt": 1},
    "float_lr": {"gt": 0, "le": 100}, "finetune_lr": {"gt": 0, "le": 100}, "lr": {"gt": 0, "le": 100},
    "momentum": {"ge": 0, "lt": 1}, "weight_decay": {"ge": 0, "le": 1}, "warmup_epochs": {"ge": 0},
    "label_smoothing": {"ge": 0, "lt": 1}, "seed": {"ge": 0, "le": 2 ** 63 - 1},
    "train_subset": {"ge": 1}, "test_subset": {"ge": 2}, "calibration": {"ge": 1},
}

_MODELS: dict[type, type[pydantic.BaseModel]] = {}


def _model_of(cls: type) -> type[pydantic.BaseModel]:
    """The strict pydantic twin of a settings dataclass (fields, types, defaults, :data:`BOUNDS`)."""
    if cls not in _MODELS:
        hints = typing.get_type_hints(cls)
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            fields[f.name] = (hints[f.name], Field(default=default, **BOUNDS.get(f.name, {})))
        _MODELS[cls] = pydantic.create_model(  # type: ignore[call-overload]
            f"{cls.__name__}Settings", __config__=ConfigDict(strict=True, extra="forbid"), **fields)
    return _MODELS[cls]


def _tuples(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """TOML and argparse give lists where the settings hold tuples: convert lists (only lists)."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, v in values.items():
        if isinstance(v, list) and typing.get_origin(hints.get(name)) is tuple:
            out[name] = tuple(v)
    return out


def validate_settings(cls: type, values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> Any:
    """Check ``values`` against ``cls``'s types and :data:`BOUNDS`, then build ``cls(**values)``.

    Args:
        cls: a settings dataclass.
        values: {setting: value}, from a TOML file and the command line.
        sources: {setting: where it came from} for messages (e.g. ``config file 'run.toml'``,
            ``the command line``).

    Raises:
        ValueError: every bad key, its value, what it should be and where it came from.
    """
    sources = dict(sources or {})
    try:
        _model_of(cls).model_validate(_tuples(cls, values))
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "?"
            top = str(err["loc"][0]) if err["loc"] else key
            where = sources.get(top, "the settings")
            if err["type"] == "extra_forbidden":
                known = ", ".join(f.name for f in dataclasses.fields(cls))
                problems.append(f"unknown key {key!r} in {where} (known: {known})")
                continue
            value = repr(err.get("input"))
            value = value if len(value) <= 60 else value[:57] + "..."
            problems.append(f"{key} = {value} in {where}: {err['msg'][0].lower()}{err['msg'][1:]}")
        raise ValueError("bad settings: " + "; ".join(problems[:8])) from None
    return cls(**_tuples(cls, values))


def check_method_options(method_options: Mapping[str, Any], methods: list[str], where: str) -> None:
    """Unknown method options fail now, not after the float training.

    Raises:
        ValueError: an option no method of ``methods`` knows, or options that are not a table.
    """
    from .methods import evolution, exhaustive, fracbits, hard_search, hessian, pairwise, probe
    from .search import SearchConfig

    known = {"search": {f.name for f in dataclasses.fields(SearchConfig)} - {"target", "epochs", "distill_weight"},
             "hessian": set(hessian._OPTIONS), "random": {"band"}, "uniform": {"bits"},
             "evolution": set(evolution._OPTIONS), "hardsearch": set(hard_search._DEFAULTS),
             "fracbits": set(fracbits._DEFAULTS), "pairwise": set(pairwise._DEFAULTS), "probe": set(probe._OPTIONS),
             "exhaustive": set(exhaustive._OPTIONS)}
    choices = {"hessian": hessian.CHOICES}
    for method in methods:
        if method not in known:
            continue  # a user-registered method checks its own options
        unknown = sorted(set(method_options) - known[method])
        if unknown:
            raise ValueError(f"unknown method_options {unknown} for method {method!r} in {where}; "
                             f"known: {sorted(known[method])}")
        for option, allowed in choices.get(method, {}).items():
            if option in method_options and method_options[option] not in allowed:
                raise ValueError(f"method_options {option} = {method_options[option]!r} for method {method!r} in "
                                 f"{where}: choose one of {', '.join(map(repr, allowed))}")
