"""``load``: a ``.mbits`` file -> a plain, runnable nn.Module with dequantized weights.

The module computes exactly what the fake-quantized model computed: 1..8-bit
weights are ``dequantize(codes, scales)`` as in :mod:`mixbits.quant`, 16-bit
weights the float16 values, everything else the stored float32 values; a layer
with bits per structure (format version 3) gets each structure's output channels
at that structure's bits, as ``quantize_hard`` of the whole weight computes them.
Files of format versions 2 and 3 load.

Loading cannot run code the file names: nothing is unpickled, and a manifest's
model recipe is only looked up by name in the built-in model registry, built first
on the ``meta`` device (no memory) and checked against the file's shapes before
the real model is allocated. A recipe that names code (``import`` of
``package.module:function``, or a ``torchvision:``/``timm:``/user zoo name) is
refused unless the caller opts in with ``trust_code=True``, as with other model
libraries' remote code.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..parametrized import fold_for_keys_
from ..safetext import printable
from ..targets import DECISIONS_ATTR, unwrap_compiled
from .fileformat import MbitsFile, MbitsFormatError, decode_state_dict, path_repr, read_mbits, short_repr
from .layer_runs import float_tensors, layer_runs
from .packed_model import pack_model_
from .preprocessing import MANIFEST_KEY as PREPROCESSING_KEY
from .preprocessing import parse_preprocessing

__all__ = ["load", "build_model", "CodeNotTrustedError"]


class CodeNotTrustedError(ValueError):
    """The file's model recipe names code to import; loading it needs ``trust_code=True``."""


def _build_registered(name: str, kwargs: dict[str, Any], path: str, device: str | None) -> nn.Module:
    """A built-in registry model from untrusted kwargs; any failure is the file's fault."""
    from ..models import MODELS, create_model

    if name not in MODELS:
        hint = ("; it names code: pass trust_code=True (CLI: --trust-model-code) if you trust the file, "
                "or pass model=") if ":" in name else f"; known: {', '.join(MODELS.names())}, or pass model="
        err = CodeNotTrustedError if ":" in name else MbitsFormatError
        raise err(f"{path} asks for model {short_repr(name)}, which is not a built-in model{hint}")
    try:
        if device is None:
            return create_model(name, **kwargs)
        with torch.device(device):
            return create_model(name, **kwargs)
    except Exception as exc:  # a built-in builder failing on the file's arguments
        raise MbitsFormatError(f"{path}: model {name!r} cannot be built with {short_repr(kwargs)}: "
                               f"{short_repr(str(exc))}") from None


def _default_device(device: str | None):
    """``torch.device(device)`` as a context manager, or one that changes nothing."""
    return torch.device(device) if device is not None else contextlib.nullcontext()


def build_model(source: Any, *, path: str = "the file", trust_code: bool = False,
                device: str | None = None) -> nn.Module:
    """Build the float model a manifest's ``model`` entry describes.

    Args:
        source: the recipe, ``{"zoo" | "import": name, "kwargs": {...}}``.
        path: the file, for messages.
        trust_code: allow a recipe that imports code (``import``, or a zoo name with ``:``).
        device: build under this default device (``"meta"``: shapes only, no memory).

    Raises:
        CodeNotTrustedError: the recipe names code and ``trust_code`` is False.
        MbitsFormatError: no usable recipe (pass ``model=`` to :func:`load`), an unknown zoo name,
            or a built-in builder that fails on the file's kwargs.
        ValueError: trusted code that cannot be imported or fails on its kwargs.
    """
    if source is None:
        raise MbitsFormatError(f"{path} does not say how to build its model (it was exported without zoo= or "
                               f"import_path=): pass the model, e.g. mixbits.load(path, model=MyNet())")
    if not isinstance(source, dict) or not isinstance(source.get("kwargs", {}), dict):
        raise MbitsFormatError(f"{path} has a malformed model recipe {short_repr(source)}")
    kwargs = dict(source.get("kwargs", {}))
    if "zoo" in source and not trust_code:
        model = _build_registered(str(source["zoo"]), kwargs, path, device)
    elif "zoo" in source:
        from ..models import create_model

        name = str(source["zoo"])
        try:
            with _default_device(device):
                model = create_model(name, **kwargs)
        except TypeError as exc:
            raise ValueError(f"model {name!r} cannot be built with {kwargs}: {exc}") from None
    elif "import" in source:
        target = str(source["import"])
        if not trust_code:
            raise CodeNotTrustedError(
                f"{path} builds its model by importing {short_repr(target)}: loading it would run that code. "
                f"If you trust the file, pass trust_code=True (CLI: --trust-model-code); or pass model=")
        module_name, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import the model builder {target!r} named in {path}: {exc}; "
                             f"install its package, or pass model=") from None
        try:
            with _default_device(device):
                model = obj(**kwargs)
        except TypeError as exc:
            raise ValueError(f"model builder {target!r} fails on {kwargs}: {exc}") from None
    else:
        raise MbitsFormatError(f"{path} has a model recipe with neither 'zoo' nor 'import': {short_repr(source)}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model recipe of {path} returned a {type(model).__name__}, not an nn.Module")
    return model


def _record_shapes(f: MbitsFile) -> dict[str, tuple[int, ...]]:
    """{state-dict key: shape} of every tensor the file holds, from its records (nothing decoded)."""
    shapes = {key: rec.shape for rec in f.layers for key in rec.state_keys}
    shapes.update({key: rec.shape for rec in f.floats for key in (rec.key,) + rec.aliases})
    return shapes


def _check_fits(model: nn.Module, shapes: dict[str, tuple[int, ...]], path: str) -> None:
    """Raise an MbitsFormatError naming the keys or shapes where the file and the model disagree."""
    target = model.state_dict()
    unknown = [k for k in shapes if k not in target]
    missing = [k for k, v in target.items() if v.is_floating_point() and k not in shapes]
    wrong = [f"{k} (file {tuple(shapes[k])}, model {tuple(target[k].shape)})"
             for k in shapes if k in target and tuple(shapes[k]) != tuple(target[k].shape)]
    problems = []
    for what, keys in (("the model has no", unknown), ("the file has no", missing), ("shapes differ for", wrong)):
        if keys:
            problems.append(f"{what} {', '.join(printable(k[:120]) for k in keys[:3])}"
                            + (" ..." if len(keys) > 3 else ""))
    if problems:
        raise MbitsFormatError(f"{path} does not match the model: " + "; ".join(problems))


def _meta_build_suffices(model: nn.Module, stored: dict[str, torch.Tensor]) -> bool:
    """Whether a ``meta`` model can be filled from the file alone: every tensor it holds is in the file,
    but for ``num_batches_tracked`` counters (zero in a fresh model); no non-persistent buffers."""
    if any(m._non_persistent_buffers_set for m in model.modules()):
        return False
    return all(k in stored or k.rpartition(".")[2] == "num_batches_tracked" for k in model.state_dict())


def _load_packed(f: MbitsFile, model: nn.Module | None, where: str, trust_code: bool, cache: bool) -> nn.Module:
    """The packed model (see :mod:`mixbits.export.packed_model`); no float copy of a quantized weight is made."""
    runs = layer_runs(f)
    floats = {k: t.clone() for k, t in float_tensors(f).items()}
    shapes = {k: tuple(lr.record.shape) for lr in runs for k in lr.record.state_keys}
    shapes.update({k: tuple(t.shape) for k, t in floats.items()})
    if model is None:
        recipe = f.manifest.get("model")
        if not trust_code:
            _check_fits(build_model(recipe, path=where, device="meta"), shapes, where)
        meta = build_model(recipe, path=where, trust_code=trust_code, device="meta")
        # built on the meta device when the file holds all it needs: the quantized weights are never allocated
        model = meta if _meta_build_suffices(meta, shapes) else build_model(recipe, path=where, trust_code=trust_code)
    _check_fits(model, shapes, where)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(floats, strict=False, assign=on_meta)
    pack_model_(model, runs, cache=cache)
    if on_meta:
        for m in model.modules():
            for name, b in m._buffers.items():
                if b is not None and b.is_meta:  # num_batches_tracked only (_meta_build_suffices)
                    m._buffers[name] = torch.zeros(b.shape, dtype=b.dtype)
    return model


def load(path: str | Path | MbitsFile, model: nn.Module | None = None, *, trust_code: bool = False,
         packed: bool = False, cache: bool = False) -> nn.Module:
    """Rebuild a runnable model from a ``.mbits`` file, in eval mode.

    Args:
        path: the file (or an already read :class:`MbitsFile`).
        model: a plain (not prepared) instance of the architecture to fill in place (a
            ``torch.compile``'d one is filled through the module it wraps; weight_norm/spectral_norm
            parametrizations of the weights the file stores are folded into plain parameters);
            default: built (on the CPU) from the manifest's recipe.
        trust_code: let the manifest's recipe import and call code (``import`` recipes,
            ``torchvision:``/``timm:``/``package.module:function`` zoo names). Off by default:
            only built-in models are built, after a shape check on the ``meta`` device.
        packed: keep every quantized weight packed (its codes and scales) and unpack a layer's weight
            when it is read (:mod:`mixbits.export.packed_model`): memory near the file's size plus the
            largest layer in float, the same outputs; ``state_dict()`` then holds the packed buffers.
        cache: with ``packed``, keep each unpacked weight after its first use.

    Returns:
        the model with dequantized (or packed) weights; integer buffers (``num_batches_tracked``) keep
        the values the model was built with (zero when a packed model is built on the ``meta`` device).
        ``model.mixbits_preprocessing`` is the file's :class:`~mixbits.export.preprocessing.Preprocessing`
        (input normalisation and class names), or None when the file records none.

    Raises:
        FileNotFoundError: no such file.
        MbitsFormatError: (a ValueError) a truncated, corrupted or inconsistent file, an unknown
            format version, or a file that does not match the model.
        CodeNotTrustedError: (a ValueError) the recipe names code and ``trust_code`` is False.
        ValueError: a prepared model; with ``packed``, a layer whose weight is not a module's ``weight``.
    """

    f = path if isinstance(path, MbitsFile) else read_mbits(path)
    where = path_repr(f.path)
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if model is not None and any(hasattr(m, DECISIONS_ATTR) for m in model.modules()):
        raise ValueError("model is prepared (mixbits.prepare_): pass a plain instance of the architecture, "
                         "or call mixbits.unprepare_(model) first")
    given = model
    if model is not None:
        model = unwrap_compiled(model)  # a torch.compile'd model is filled through the module it wraps
    if packed:
        model = _load_packed(f, model, where, trust_code, cache)
        given = given if given is not None else model
    else:
        shapes = _record_shapes(f)  # keys and shapes are checked before anything is decoded or allocated
        if model is None:
            recipe = f.manifest.get("model")
            if not trust_code:  # shapes first, on the meta device: a crafted width allocates nothing
                meta = build_model(recipe, path=where, device="meta")
                fold_for_keys_(meta, shapes)
                _check_fits(meta, shapes, where)
            model = given = build_model(recipe, path=where, trust_code=trust_code)
        fold_for_keys_(model, shapes)  # weight_norm / spectral_norm weights are stored folded (mixbits.parametrized)
        _check_fits(model, shapes, where)
        state = decode_state_dict(f)
        on_meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        # strict=False only for the integer buffers not stored. A model built on the meta device has no storage
        # to copy into: the file's tensors are assigned instead.
        model.load_state_dict(state, strict=False, assign=on_meta)
        if on_meta:
            _materialize_meta_leftovers_(model)
    given.mixbits_preprocessing = parse_preprocessing(f.manifest.get(PREPROCESSING_KEY), f.manifest.get("input_shape"))
    return given.eval()


def _materialize_meta_leftovers_(model: nn.Module) -> None:
    """Zero CPU tensors for the integer buffers a meta-built model still lacks (the file does not store
    ``num_batches_tracked``); a parameter still on meta is a model the file cannot fill."""
    for name, module in model.named_modules():
        for key, b in module._buffers.items():
            if b is not None and b.is_meta:
                module._buffers[key] = torch.zeros(b.shape, dtype=b.dtype)
        leftover = [k for k, p in module._parameters.items() if p is not None and p.is_meta]
        if leftover:
            raise MbitsFormatError(f"the file holds no values for {name + '.' if name else ''}{leftover[0]}, and the "
                                   f"model was built on the meta device: build it on the CPU instead")
