"""Which weight tensors of which layer kinds are quantized, and how a layer computes with them.

A *target* is one weight tensor: a Parameter of a module, named by an attribute.
:func:`quantized_attrs` asks a small registry which attributes of a module are
targets (``weight`` of Conv/Linear/Embedding/EmbeddingBag and Hugging Face
``Conv1D``; ``in_proj_weight`` or ``q/k/v_proj_weight`` of MultiheadAttention,
whose ``out_proj`` is a Linear; every ``weight_ih_l*``/``weight_hh_l*``/``weight_hr_l*``
of LSTM/GRU/RNN). Any other parameter can be named by the user.
:func:`channel_dim` says which dimension of a target holds its output channels (one
scale each): dim 0 for every kind but Hugging Face ``Conv1D``, which stores its
weight as (in, out) and so has its outputs on dim 1.

:func:`swap_class_` gives a module a subclass of its own class whose target
attributes are properties returning the quantized (or mixed) weight, so every
forward that reads ``self.<attr>`` computes with it, while ``_parameters`` and the
state-dict keys stay those of the float layer. Recurrent layers read their weights
through ``_flat_weights``, which the subclass turns into a property too.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["register_target", "quantized_attrs", "channel_dim", "swap_class_", "restore_class_", "is_swapped", "DECISIONS_ATTR",
           "QUANTIZABLE_TYPES"]

DECISIONS_ATTR = "_mixbits_decisions"  # {attribute: Decision} on every module that computes with a quantized weight
_ORIG_CLASS_ATTR = "_mixbits_float_class"

_Entry = tuple[Callable[[nn.Module], bool], Callable[[nn.Module], tuple[str, ...]], int]
_REGISTRY: list[_Entry] = []
_MIXED_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def register_target(match: type | Callable[[nn.Module], bool], attrs: Callable[[nn.Module], tuple[str, ...]],
                    channel_dim: int = 0) -> None:
    """Declare which attributes of matching modules are quantized (later registrations win).

    Args:
        match: a module class (subclasses match too) or a predicate on the module.
        attrs: the module's target attribute names.
        channel_dim: the dimension of those weights that indexes output channels; each output
            channel gets one scale. 0 for (out, in, ...) weights; 1 for (in, out) ones.
    """
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int) or channel_dim < 0:
        raise ValueError(f"channel_dim must be a non-negative int, got {channel_dim!r}")
    pred = (lambda m, t=match: isinstance(m, t)) if isinstance(match, type) else match
    _REGISTRY.insert(0, (pred, attrs, channel_dim))


def _entry(module: nn.Module) -> _Entry | None:
    return next((e for e in _REGISTRY if e[0](module)), None)


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


_WEIGHT = (lambda m: ("weight",))
register_target(nn.Conv1d, _WEIGHT)
register_target(nn.Conv2d, _WEIGHT)
register_target(nn.Conv3d, _WEIGHT)
register_target(nn.Linear, _WEIGHT)
register_target(nn.Embedding, _WEIGHT)
register_target(nn.EmbeddingBag, _WEIGHT)
register_target(_is_hf_conv1d, _WEIGHT, channel_dim=1)
register_target(nn.MultiheadAttention, lambda m: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"))
register_target(nn.RNNBase, lambda m: tuple(n for n in m._flat_weights_names if n.startswith("weight_")))

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding,
                                                  nn.EmbeddingBag, nn.MultiheadAttention, nn.RNNBase)


def _attr_property(attr: str) -> property:
    def get(self: nn.Module) -> torch.Tensor:
        return self.__dict__[DECISIONS_ATTR][attr].mixed_weight(self._parameters[attr])

    return property(get)


def _flat_weights_get(self: nn.Module) -> list:
    return [getattr(self, n) if self._parameters.get(n) is not None else None for n in self._flat_weights_names]


def _flat_weights_set(self: nn.Module, value: list) -> None:
    pass  # the list is rebuilt from the attributes at every read


def _mixed_class(cls: type, attrs: tuple[str, ...]) -> type:
    key = (cls, attrs)
    if key not in _MIXED_CLASSES:
        body: dict = {a: _attr_property(a) for a in attrs}
        if issubclass(cls, nn.RNNBase):
            body["_flat_weights"] = property(_flat_weights_get, _flat_weights_set)
            body["flatten_parameters"] = lambda self: None  # cuDNN's flat copy would hold float weights
        _MIXED_CLASSES[key] = type(f"Mixed{cls.__name__}", (cls,), body)
    return _MIXED_CLASSES[key]


def is_swapped(module: nn.Module) -> bool:
    return DECISIONS_ATTR in module.__dict__


def swap_class_(module: nn.Module, decisions: dict) -> None:
    """Make ``module`` compute with ``decisions[attr].mixed_weight(float parameter)`` for each attr."""
    object.__setattr__(module, DECISIONS_ATTR, dict(decisions))
    object.__setattr__(module, _ORIG_CLASS_ATTR, type(module))
    module.__class__ = _mixed_class(type(module), tuple(sorted(decisions)))


def restore_class_(module: nn.Module) -> None:
    """Undo :func:`swap_class_`."""
    module.__class__ = module.__dict__.pop(_ORIG_CLASS_ATTR)
    del module.__dict__[DECISIONS_ATTR]
