"""``load``: a ``.mbits`` file -> a plain, runnable nn.Module with dequantized weights.

The module computes exactly what the fake-quantized model computed: 1..8-bit
weights are ``dequantize(codes, scales)`` as in :mod:`mixbits.quant`, 16-bit
weights the float16 values, everything else the stored float32 values.
Nothing is unpickled; only a manifest's ``import`` recipe imports code, and only
when no model is given.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileformat import MbitsFile, decode_state_dict, read_mbits

__all__ = ["load", "build_model"]


def build_model(source: Any, *, path: str = "the file") -> nn.Module:
    """Build the float model a manifest's ``model`` entry describes.

    Raises:
        ValueError: no recipe (pass ``model=`` to :func:`load`), an unknown zoo name,
            an import path that cannot be imported, or a builder that fails on its kwargs.
    """
    if source is None:
        raise ValueError(f"{path} does not say how to build its model (it was exported without zoo= or "
                         f"import_path=): pass the model, e.g. mixbits.load(path, model=MyNet())")
    if not isinstance(source, dict) or not isinstance(source.get("kwargs", {}), dict):
        raise ValueError(f"{path} has a malformed model recipe {source!r}")
    kwargs = source.get("kwargs", {})
    if "zoo" in source:
        from ..models import create_model

        name = source["zoo"]
        try:
            model = create_model(name, **kwargs)
        except TypeError as exc:
            raise ValueError(f"model {name!r} cannot be built with {kwargs}: {exc}") from None
    elif "import" in source:
        target = str(source["import"])
        module_name, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import the model builder {target!r} named in {path}: {exc}; "
                             f"install its package, or pass model=") from None
        try:
            model = obj(**kwargs)
        except TypeError as exc:
            raise ValueError(f"model builder {target!r} fails on {kwargs}: {exc}") from None
    else:
        raise ValueError(f"{path} has a model recipe with neither 'zoo' nor 'import': {source!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model recipe of {path} returned a {type(model).__name__}, not an nn.Module")
    return model


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Raise a ValueError naming the keys or shapes where the file and the model disagree."""
    target = model.state_dict()
    unknown = [k for k in state if k not in target]
    missing = [k for k, v in target.items() if v.is_floating_point() and k not in state]
    wrong = [f"{k} (file {tuple(state[k].shape)}, model {tuple(target[k].shape)})"
             for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    problems = []
    if unknown:
        problems.append(f"the model has no {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else ""))
    if missing:
        problems.append(f"the file has no {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if wrong:
        problems.append(f"shapes differ for {', '.join(wrong[:5])}" + (" ..." if len(wrong) > 5 else ""))
    if problems:
        raise ValueError(f"{path} does not match the model: " + "; ".join(problems))


def load(path: str | Path | MbitsFile, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a runnable float model from a ``.mbits`` file, in eval mode.

    Args:
        path: the file (or an already read :class:`MbitsFile`).
        model: a plain (not prepared) instance of the architecture to fill in place;
            default: built (on the CPU) from the manifest's zoo name or import path.

    Returns:
        the model with dequantized weights; integer buffers (``num_batches_tracked``) keep
        the values the model was built with.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a truncated or corrupted file, an unknown format version, a prepared
            model, or a model that does not match the manifest.
    """
    from ..space import _DECISION_ATTR

    f = path if isinstance(path, MbitsFile) else read_mbits(path)
    where = repr(f.path)
    if model is None:
        model = build_model(f.manifest.get("model"), path=where)
    elif not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    elif any(hasattr(m, _DECISION_ATTR) for m in model.modules()):
        raise ValueError("model is prepared (mixbits.prepare_): pass a plain instance of the architecture, "
                         "or call mixbits.unprepare_(model) first")
    state = decode_state_dict(f)
    _check_fits(model, state, where)
    model.load_state_dict(state, strict=False)  # strict=False only for the integer buffers not stored
    return model.eval()
