"""Which weight tensors of which layer kinds are quantized, and how a layer computes with them.

A *target* is one weight tensor: a Parameter of a module, named by an attribute.
:func:`quantized_attrs` asks a small registry which attributes of a module are
targets (``weight`` of Conv/ConvTranspose/Linear/Bilinear/Embedding/EmbeddingBag and Hugging Face
``Conv1D``; ``in_proj_weight`` or ``q/k/v_proj_weight`` of MultiheadAttention,
whose ``out_proj`` is a Linear; every ``weight_ih_l*``/``weight_hh_l*``/``weight_hr_l*``
of LSTM/GRU/RNN). Any other parameter can be named by the user.
:func:`channel_dim` says which dimension of a target holds its output channels (one
scale each): dim 0 for every kind but Hugging Face ``Conv1D``, which stores its
weight as (in, out), and the transposed convolutions: both have their outputs on dim 1.

:func:`swap_class_` gives a module a subclass of its own class whose target
attributes are properties returning the quantized (or mixed) weight, so every
forward that reads ``self.<attr>`` computes with it, while ``_parameters`` and the
state-dict keys stay those of the float layer. Recurrent layers read their weights
through ``_flat_weights``, which the subclass turns into a property too (a registration's
``extra`` class attributes: how another kind's forward reads its weights).

Weights under ``torch.nn.utils.parametrize`` (``weight_norm``,
``spectral_norm``) are folded into plain parameters first (:mod:`mixbits.parametrized`).

The weight a prepared layer returns for ``module.weight`` is a :class:`WriteThroughWeight`:
in-place writes through it (``module.weight.data += x``, ``module.weight.copy_(w)``,
``nn.init.normal_(module.weight)``, ``module.weight.requires_grad_(False)``) and its
``.grad`` reach the float Parameter, so code written for the float model (peft's
``merge_adapter()``, initialisers) keeps working; ``module.weight = nn.Parameter(w)``
replaces the float Parameter (same shape) as on the float layer.

Adding a layer kind takes one call::

    register_target(MyLayer, lambda m: ("kernel",), channel_dim=0)

when ``MyLayer.forward`` reads ``self.kernel``; if it reads the weight some other way (a
cached copy, a list), pass ``extra={"name": property(...)}`` to give the swapped class what
its forward reads.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .mixture import mixed_weight_outside_graph as _mixed_outside_graph

__all__ = ["register_target", "declared_attrs", "quantized_attrs", "channel_dim", "swap_class_", "restore_class_", "is_swapped", "DECISIONS_ATTR",
           "QUANTIZABLE_TYPES", "WriteThroughWeight", "unwrap_compiled"]

DECISIONS_ATTR = "_mixbits_decisions"  # {attribute: Decision} on every module that computes with a quantized weight
_ORIG_CLASS_ATTR = "_mixbits_float_class"

_Entry = tuple[Callable[[nn.Module], bool], Callable[[nn.Module], tuple[str, ...]], int, Mapping[str, Any]]
_REGISTRY: list[_Entry] = []
_MIXED_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def register_target(match: type | Callable[[nn.Module], bool], attrs: Callable[[nn.Module], tuple[str, ...]],
                    channel_dim: int = 0, *, extra: Mapping[str, Any] | None = None) -> None:
    """Declare which attributes of matching modules are quantized (later registrations win).

    Args:
        match: a module class (subclasses match too) or a predicate on the module.
        attrs: the module's target attribute names (parameters its forward reads as ``self.<attr>``).
        channel_dim: the dimension of those weights that indexes output channels; each output
            channel gets one scale. 0 for (out, in, ...) weights; 1 for (in, out) ones and for
            transposed convolutions.
        extra: class attributes of the swapped class, for a forward that reads its weights other
            than through ``self.<attr>`` (recurrent layers: ``_flat_weights``).

    Raises:
        ValueError: a channel_dim that is not a non-negative int, or ``match`` neither a class nor callable.
    """
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or channel_dim < 0:
        raise ValueError(f"channel_dim must be a non-negative int, got {channel_dim!r}")
    if not isinstance(match, type) and not callable(match):
        raise ValueError(f"match must be a module class or a predicate on a module, got {match!r}")
    pred = (lambda m, t=match: isinstance(m, t)) if isinstance(match, type) else match
    _REGISTRY.insert(0, (pred, attrs, channel_dim, dict(extra or {})))
    _MIXED_CLASSES.clear()  # swapped classes are rebuilt with the new registration


def _entry(module: nn.Module) -> _Entry | None:
    return next((e for e in _REGISTRY if e[0](module)), None)


def declared_attrs(module: nn.Module) -> tuple[str, ...]:
    """The attributes the registry declares targets of ``module``, present as plain parameters or not."""
    entry = _entry(module)
    return tuple(entry[1](module)) if entry is not None else ()


def quantized_attrs(module: nn.Module) -> tuple[str, ...]:
    """The attributes of ``module`` that are quantization targets (present parameters only)."""
    entry = _entry(module)
    if entry is None:
        return ()
    return tuple(a for a in entry[1](module) if module._parameters.get(a) is not None)


def channel_dim(module: nn.Module, attr: str) -> int:
    """The output-channel dimension of ``module.<attr>``: 0 unless its registration says otherwise.

    Parameters that are not registered targets (named with ``params=``) have their channels on dim 0.
    """
    entry = _entry(module)
    return entry[2] if entry is not None and attr in entry[1](module) else 0


def _is_hf_conv1d(m: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D (GPT-2 style): weight (in, out), y = x @ W + b, so its output
    # channels are the columns (channel_dim 1). Matched by name so that mixbits never imports transformers.
    cls = type(m)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _flat_weights_get(self: nn.Module) -> list:
    return [getattr(self, n) if self._parameters.get(n) is not None else None for n in self._flat_weights_names]


def _flat_weights_set(self: nn.Module, value: list) -> None:
    pass  # the list is rebuilt from the attributes at every read


_WEIGHT = (lambda m: ("weight",))
register_target(nn.Conv1d, _WEIGHT)
register_target(nn.Conv2d, _WEIGHT)
register_target(nn.Conv3d, _WEIGHT)
# ConvTranspose weights are (in, out/groups, k...): one scale per output channel is one per index of dim 1.
register_target(nn.ConvTranspose1d, _WEIGHT, channel_dim=1)
register_target(nn.ConvTranspose2d, _WEIGHT, channel_dim=1)
register_target(nn.ConvTranspose3d, _WEIGHT, channel_dim=1)
register_target(nn.Linear, _WEIGHT)
register_target(nn.Bilinear, _WEIGHT)  # (out, in1, in2)
register_target(nn.Embedding, _WEIGHT)
register_target(nn.EmbeddingBag, _WEIGHT)
register_target(_is_hf_conv1d, _WEIGHT, channel_dim=1)
register_target(nn.MultiheadAttention, lambda m: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"))
register_target(nn.RNNBase, lambda m: tuple(n for n in m._flat_weights_names if n.startswith("weight_")),
                extra={"_flat_weights": property(_flat_weights_get, _flat_weights_set),
                       # cuDNN's flat copy would hold float weights
                       "flatten_parameters": lambda self: None})

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                                  nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear, nn.Bilinear,
                                                  nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention, nn.RNNBase)

# Tensor attributes whose reads and writes through a prepared layer's weight go to the float Parameter.
_REDIRECTED_ATTRS = tuple(getattr(torch._C.TensorBase, a) for a in ("data", "grad", "requires_grad"))
_INPLACE_OPERATORS = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__",
                                "__setitem__"})


class WriteThroughWeight(torch.Tensor):
    """The weight a prepared layer computes with (quantized or mixed), whose writes reach the float Parameter.

    Every operation that reads it computes with its own (quantized) values and returns plain tensors;
    in-place operations (methods ending in ``_``, ``+=``, item assignment) and ``.data``, ``.grad``,
    ``.requires_grad`` act on the float Parameter it was computed from.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if args and type(args[0]) is WriteThroughWeight:
            name = getattr(func, "__name__", "")
            redirect = (getattr(func, "__self__", None) in _REDIRECTED_ATTRS if name in ("__get__", "__set__")
                        else name in _INPLACE_OPERATORS or (name.endswith("_") and not name.startswith("_")))
            if redirect:
                args = (args[0].__dict__["_mixbits_float"],) + tuple(args[1:])
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def _attr_property(attr: str) -> property:
    def get(self: nn.Module) -> torch.Tensor:
        param = self._parameters[attr]
        decision = self.__dict__[DECISIONS_ATTR][attr]
        if torch.compiler.is_compiling():
            return _mixed_outside_graph(decision, param)
        w = decision.mixed_weight(param)
        if w is param:
            return w
        out = w.as_subclass(WriteThroughWeight)
        out.__dict__["_mixbits_float"] = param
        return out

    return property(get)


def _checked_setattr(attrs: tuple[str, ...]) -> Callable[[nn.Module, str, Any], None]:
    def setattr_(self: nn.Module, name: str, value: Any) -> None:
        old = self._parameters.get(name) if name in attrs else None
        if old is not None and isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"cannot replace the prepared weight {name!r} of shape {tuple(old.shape)} by one of "
                             f"shape {tuple(value.shape)}: its bits and size were chosen for that shape; call "
                             f"mixbits.unprepare_(model) first and prepare again")
        super(type(self), self).__setattr__(name, value)

    return setattr_


def _mixed_class(cls: type, attrs: tuple[str, ...], extra: Mapping[str, Any]) -> type:
    key = (cls, attrs)
    if key not in _MIXED_CLASSES:
        body: dict = {a: _attr_property(a) for a in attrs}
        body["__setattr__"] = _checked_setattr(attrs)
        body.update(extra)
        _MIXED_CLASSES[key] = type(f"Mixed{cls.__name__}", (cls,), body)
    return _MIXED_CLASSES[key]


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``'d model wraps (``_orig_mod``), or ``model`` itself."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    while eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        model = model._orig_mod
    return model


def is_swapped(module: nn.Module) -> bool:
    return DECISIONS_ATTR in module.__dict__


def swap_class_(module: nn.Module, decisions: dict) -> None:
    """Make ``module`` compute with ``decisions[attr].mixed_weight(float parameter)`` for each attr."""
    object.__setattr__(module, DECISIONS_ATTR, dict(decisions))
    object.__setattr__(module, _ORIG_CLASS_ATTR, type(module))
    entry = _entry(module)
    module.__class__ = _mixed_class(type(module), tuple(sorted(decisions)), entry[3] if entry is not None else {})


def restore_class_(module: nn.Module) -> None:
    """Undo :func:`swap_class_`."""
    module.__class__ = module.__dict__.pop(_ORIG_CLASS_ATTR)
    del module.__dict__[DECISIONS_ATTR]
