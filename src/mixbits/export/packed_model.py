"""``load(path, packed=True)``: a model whose quantized weights stay packed in memory.

Each quantized layer keeps its stored runs (:mod:`mixbits.export.layer_runs`) as buffers of a
:class:`PackedWeight` child named ``weight_packed``: the packed codes (uint8), the float16 scales,
16-bit values as float16, and for a layer with bits per structure the channels of each run.
The layer's ``weight`` becomes a read-only property that unpacks them when read (during the
layer's forward, or wherever the model reads it), with the arithmetic of
:func:`mixbits.quant.dequantize`, so the outputs equal those of ``mixbits.load(path)`` bit for bit.
Unpack-then-compute: no integer kernel runs; ``cache=True`` keeps each unpacked weight after its
first use (faster, and as large as the float model once every layer has run).

``state_dict()`` of a packed model holds the packed buffers (``<layer>.weight_packed.codes0``, ...),
not float weights; ``model.mixbits_packed`` is True. For float weights load without ``packed``.
The layer's class is replaced by a subclass (``PackedLinear`` for ``Linear``...) that adds the
property: supported are layers whose weight is the module's own ``weight`` parameter (Conv,
Linear, Embedding...); an LSTM's ``weight_ih_l0`` and the like are refused with an error.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import channels_back
from .layer_runs import LayerRuns, Run
from .packed_values import run_values

__all__ = ["PackedWeight", "pack_model_", "packed_key_problem"]

_SUBCLASSES: dict[type, type] = {}


class PackedWeight(nn.Module):
    """The runs of one quantized weight as buffers; calling it returns the float32 weight.

    Args:
        lr: the layer's stored runs.
        cache: keep the unpacked weight after the first call.
    """

    def __init__(self, lr: LayerRuns, *, cache: bool = False) -> None:
        super().__init__()
        rec = lr.record
        self.shape = rec.shape
        self.codes_shape = rec.codes_shape
        self.channel_dim = rec.channel_dim
        self.channels_first = lr.channels_first
        self.cache = cache
        self._cached: torch.Tensor | None = None
        self.meta: list[tuple[int, tuple[int, ...]]] = []  # (bits, shape) per run
        for i, run in enumerate(lr.runs):
            self.meta.append((run.bits, run.shape))
            for part in ("codes", "scales", "values"):
                t = getattr(run, part)
                if t is not None:
                    self.register_buffer(f"{part}{i}", t.clone())
            if len(lr.runs) > 1:
                self.register_buffer(f"rows{i}", torch.from_numpy(run.rows.astype("int64")))

    def _run(self, i: int) -> Run:
        bits, shape = self.meta[i]
        get = self._buffers.get
        return Run(bits, None, shape, codes=get(f"codes{i}"), scales=get(f"scales{i}"),  # type: ignore[arg-type]
                   values=get(f"values{i}"))

    def forward(self) -> torch.Tensor:
        if self._cached is not None:
            return self._cached
        if not self.channels_first:
            w = run_values(self._run(0))
        elif len(self.meta) == 1:
            w = channels_back(run_values(self._run(0)), self.channel_dim)
        else:
            wc = torch.empty(self.codes_shape, dtype=torch.float32, device=self._buffers["rows0"].device)
            for i in range(len(self.meta)):
                wc.index_copy_(0, self._buffers[f"rows{i}"], run_values(self._run(i)))  # (c_i, ...) rows
            w = channels_back(wc, self.channel_dim)
        if self.cache:
            self._cached = w
        return w

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, bits={[b for b, _ in self.meta]}, cache={self.cache}"


def _packed_weight(module: nn.Module) -> torch.Tensor:
    return module.weight_packed()


def _subclass(cls: type) -> type:
    """``cls`` with ``weight`` as a property that unpacks ``weight_packed`` (one subclass per class)."""
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Packed{cls.__name__}", (cls,), {
            "weight": property(_packed_weight, doc="the unpacked float32 weight (read-only: the model is packed)"),
            "__doc__": f"{cls.__name__} whose weight is stored packed (mixbits.load(..., packed=True)).",
        })
    return _SUBCLASSES[cls]


def packed_key_problem(model: nn.Module, key: str) -> str | None:
    """Why the state-dict key ``key`` cannot be held packed, or None when it can."""
    module_name, _, attr = key.rpartition(".")
    if attr != "weight":
        return f"{key!r} is not a module's 'weight'"
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return f"{key!r} names no module"
    if not isinstance(module._parameters.get("weight"), torch.Tensor):
        return f"{module_name or 'the model'} has no weight parameter"
    return None


def pack_model_(model: nn.Module, runs: list[LayerRuns], *, cache: bool = False) -> nn.Module:
    """Replace every quantized weight of ``model`` by its packed runs, in place.

    Args:
        model: the plain model (real or ``meta`` weights: the quantized ones are dropped, not read).
        runs: :func:`layer_runs` of the file.
        cache: keep each unpacked weight after its first use.

    Returns:
        ``model``.

    Raises:
        ValueError: a layer whose weight is not a module's ``weight`` parameter (e.g. an LSTM).
    """
    for lr in runs:
        problems = [p for p in (packed_key_problem(model, k) for k in lr.record.state_keys) if p]
        if problems:
            raise ValueError(f"packed=True cannot hold layer {lr.record.name!r}: {problems[0]}; only a module's own "
                             f"weight (Conv, Linear, Embedding...) is held packed. Load with packed=False")
        pw = PackedWeight(lr, cache=cache)
        for key in lr.record.state_keys:
            module = model.get_submodule(key.rpartition(".")[0])
            if "weight_packed" in module._modules:  # one module under several names
                continue
            del module._parameters["weight"]
            module.__class__ = _subclass(type(module))
            module.add_module("weight_packed", pw)
    model.mixbits_packed = True
    return model

