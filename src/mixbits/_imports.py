"""Private plumbing: resolve a user's ``package.module:function`` and call it with the arguments it takes."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable

__all__ = ["import_callable", "call_with_accepted", "lazy_attributes"]


def lazy_attributes(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """PEP 562 ``__getattr__`` and ``__dir__`` for ``package``: each public name in ``table`` ({name: module})
    is imported from its module on first use and then kept in the package, so importing the package is cheap."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__


def import_callable(spec: str, kind: str) -> Callable:
    """The function named by ``"package.module:function"`` (the current folder is importable too).

    Args:
        spec: ``module:attribute`` (dots allowed on both sides, e.g. ``pkg.mod:Factory.build``).
        kind: what it makes (``"model"``, ``"data set"``), for error messages.

    Raises:
        ValueError: a malformed spec, a module that does not import, or a missing or non-callable attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a user {kind} is given as package.module:function, got {spec!r}")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # like `python -m`, let `mixbits` find a module in the current folder
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for the {kind} {spec!r}: {exc}. "
                         f"Is its folder on PYTHONPATH?") from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (the {kind} {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec!r} is a {type(obj).__name__}, not a function that builds a {kind}")
    return obj


def call_with_accepted(fn: Callable, **kwargs: Any) -> Any:
    """Call ``fn`` with those of ``kwargs`` its signature accepts (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return fn(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})
