"""The one cost model: exact and expected sizes in bits, compressions, average bits.

Everything that needs a size calls this module: the search penalty (expected
size, differentiable), the budget solver (exact cost table), the report and the
exporter's check. Units are in the names: ``*_bits`` are bits, ``*_kib`` kibibytes.

Sizes count what a deployed file must hold:

* a quantized layer at 1..8 bits: ``n * b`` code bits plus one float16 scale per
  output channel (``LayerInfo.num_channels``); at 16 bits ``n * 16``; at 32 bits ``n * 32``;
* a layer whose bits are chosen per structure (``LayerInfo.group_size``, runs of output
  channels): the sum of its structures' sizes by the rule above, plus a 4-bit code per
  structure naming its bitwidth (``LayerInfo.index_bits``, padded to whole bytes);
* everything else (biases, norms and their running statistics, layers kept in
  float): 32 bits per element.

A ``.mbits`` file adds its header and at most 7 bits of padding per 1..8-bit layer
(``file_overhead_bits`` bounds both); size targets bound the file, header included.

Weight compression (the figure papers quote) is the float32 size of the
quantized layers' weights over their quantized size, scales included; whole-model
compression divides the whole float model by the whole quantized model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from .granularity import Structures
from .quant import FLOAT_BITS, INT_BITS, SCALE_BITS, check_bits

__all__ = ["LayerInfo", "CostModel", "weight_size_bits", "Bits", "UNIT_SEP"]

Bits = Union[int, tuple[int, ...]]  # one layer's bits: an int, or one per structure
UNIT_SEP = "#"  # unit names of structures: "<layer>#<structure index>"


def weight_size_bits(num_weights: int, num_channels: int, bits: int) -> int:
    """Exact stored size in bits of ``num_weights`` weights over ``num_channels`` output channels."""
    check_bits(bits)
    if bits in INT_BITS:
        return num_weights * bits + num_channels * SCALE_BITS
    return num_weights * bits


@dataclass(frozen=True)
class LayerInfo(Structures):
    """One decision unit: a weight tensor whose bitwidth is chosen as a whole.

    Attributes:
        name: fully qualified name of the first module that owns the weight.
        aliases: other module names that use the same module or the same weight.
        kind: class name of the float layer (e.g. ``Conv2d``).
        shape: weight shape, (C_out, ...).
        candidates: bitwidths the search may choose (one element when pinned).
        pinned: True when the user fixed the bitwidth.
        keys: the state-dict keys of the weight under every name (default ``<name>.weight``).
        channel_dim: the dimension of ``shape`` with one scale per index: 0 (output channels of
            Conv/Linear, tokens of an Embedding) but for a Hugging Face Conv1D, whose (in, out)
            weight has its output features on dim 1.
        group_size: output channels per structure when bits are chosen per structure (runs of
            consecutive channels along ``channel_dim``, the last one possibly shorter); 0 when the
            whole tensor takes one bitwidth. Set only when it gives two or more structures.

    A layer's bits are an int, or for a layer with structures a tuple of one int per structure.
    """

    name: str
    aliases: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    candidates: tuple[int, ...]
    pinned: bool = False
    keys: tuple[str, ...] = ()
    channel_dim: int = 0
    group_size: int = 0

    def __post_init__(self) -> None:
        self.check_structures()

    @property
    def state_keys(self) -> tuple[str, ...]:
        """State-dict keys of the weight under every name."""
        return self.keys or tuple(f"{n}.weight" if n else "weight" for n in (self.name,) + self.aliases)

    @property
    def num_weights(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def index_bits(self) -> int:
        """Bits of the per-structure bitwidth codes a file stores (4 per structure, whole bytes); 0 if none."""
        return 8 * ((self.num_groups + 1) // 2) if self.grouped else 0

    @property
    def unit_names(self) -> tuple[str, ...]:
        """Names of the decision units: the layer's own name, or ``name#g`` per structure."""
        if not self.grouped:
            return (self.name,)
        return tuple(f"{self.name}{UNIT_SEP}{g}" for g in range(self.num_groups))

    def expand(self, bits: Bits | Sequence[int]) -> tuple[int, ...]:
        """The bits of every structure, shape (num_groups,); an int applies to all of them.

        Raises:
            ValueError: a sequence whose length is not the number of structures.
        """
        if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
            return (int(bits),) * self.num_groups
        out = tuple(int(b) for b in bits)
        if len(out) != self.num_groups:
            raise ValueError(f"layer {self.name!r} has {self.num_groups} structure(s) but {len(out)} bits were given")
        return out

    def normalize(self, bits: Bits | Sequence[int]) -> Bits:
        """The canonical form of a layer's bits: an int for a layer without structures, else a tuple."""
        out = self.expand(bits)
        for b in set(out):
            check_bits(b)
        return out if self.grouped else out[0]

    def size_bits(self, bits: Bits | Sequence[int]) -> int:
        """Exact size in bits of this layer's weight at ``bits`` (an int, or one per structure)."""
        if not self.grouped:
            b = bits if isinstance(bits, (int, np.integer)) else self.expand(bits)[0]
            return weight_size_bits(self.num_weights, self.num_channels, int(b))
        per = self.num_weights // self.num_channels
        return self.index_bits + sum(weight_size_bits(per * c, c, b)
                                     for c, b in zip(self.group_channels, self.expand(bits)))

    def unit_sizes(self) -> np.ndarray:
        """Size in bits of every structure at every candidate, shape (num_groups, K), read-only; the
        per-structure index is charged to the first structure (it is paid whatever the bits)."""
        return self._unit_sizes

    @functools.cached_property
    def _unit_sizes(self) -> np.ndarray:  # computed once: the projection and the solver read it often
        per = self.num_weights // self.num_channels
        out = np.array([[weight_size_bits(per * c, c, b) for b in self.candidates] for c in self.group_channels],
                       dtype=np.int64)
        out[0] += self.index_bits
        out.flags.writeable = False
        return out


class CostModel:
    """Exact and expected sizes of a prepared model.

    Args:
        layers: the decision units (quantized layers), in model order.
        float_rest_bits: bits of everything else the model stores in float32.
        num_params: distinct parameters of the whole model, when known (for the quantized share).
        file_overhead_bits: an upper bound on what a ``.mbits`` file of this model adds to
            :meth:`model_bits` at any bits (its header, and byte padding of each layer's codes);
            size targets (``"12KB"``) subtract it, so they bound the whole file.
    """

    def __init__(self, layers: Sequence[LayerInfo], float_rest_bits: int, num_params: int | None = None,
                 file_overhead_bits: int = 0) -> None:
        self.layers = tuple(layers)
        self.float_rest_bits = int(float_rest_bits)
        self.num_params = num_params
        self.file_overhead_bits = int(file_overhead_bits)
        self._by_name = {layer.name: layer for layer in self.layers}
        self.num_quantized_weights = sum(layer.num_weights for layer in self.layers)
        self._units = {u: (layer, g) for layer in self.layers for g, u in enumerate(layer.unit_names)}
        self._size_tensors: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def num_units(self) -> int:
        """Decision units: layers without structures plus the structures of the others."""
        return len(self._units)

    def layer(self, name: str) -> LayerInfo:
        return self._by_name[name]

    # ---- exact sizes of a discrete assignment {layer name: bits} ----
    def _check(self, bits: Mapping[str, int]) -> None:
        missing = [n for n in self._by_name if n not in bits]
        unknown = [n for n in bits if n not in self._by_name]
        if missing or unknown:
            raise ValueError(
                f"bit assignment does not match the model: missing {missing[:5]}, unknown {unknown[:5]}; "
                f"expected exactly the layers {list(self._by_name)[:8]}..."
            )

    def quantized_bits(self, bits: Mapping[str, int]) -> int:
        """Size in bits of the quantized layers' weights (scales included)."""
        self._check(bits)
        return sum(self._by_name[n].size_bits(b) for n, b in bits.items())

    def model_bits(self, bits: Mapping[str, int]) -> int:
        """Size in bits of the whole model: quantized weights plus everything kept in float."""
        return self.quantized_bits(bits) + self.float_rest_bits

    def float_quantized_bits(self) -> int:
        """Size in bits of the quantized layers' weights in float32."""
        return self.num_quantized_weights * FLOAT_BITS

    def float_model_bits(self) -> int:
        """Size in bits of the whole float32 model."""
        return self.float_quantized_bits() + self.float_rest_bits

    def weight_compression(self, bits: Mapping[str, int]) -> float:
        return self.float_quantized_bits() / self.quantized_bits(bits)

    def model_compression(self, bits: Mapping[str, int]) -> float:
        return self.float_model_bits() / self.model_bits(bits)

    def average_bits(self, bits: Mapping[str, int]) -> float:
        """Quantized size (scales included) per quantized weight."""
        return self.quantized_bits(bits) / self.num_quantized_weights

    def min_quantized_bits(self) -> int:
        return sum(int(layer.unit_sizes().min(axis=1).sum()) for layer in self.layers)

    def max_quantized_bits(self) -> int:
        return sum(int(layer.unit_sizes().max(axis=1).sum()) for layer in self.layers)

    def cost_table(self) -> dict[str, dict[int, int]]:
        """{unit name: {candidate bits: exact size in bits}}: one unit per layer, or per structure of a
        layer with structures (:attr:`LayerInfo.unit_names`; the index bits count in its first structure).
        The sizes of an assignment's units add up to :meth:`quantized_bits`."""
        out = {}
        for layer in self.layers:
            sizes = layer.unit_sizes()
            for g, u in enumerate(layer.unit_names):
                out[u] = {b: int(sizes[g, k]) for k, b in enumerate(layer.candidates)}
        return out

    def to_layers(self, unit_bits: Mapping[str, int]) -> dict[str, Bits]:
        """{unit name: bits} (what the budget solver returns) -> {layer name: bits}."""
        missing = [u for u in self._units if u not in unit_bits]
        if missing or len(unit_bits) != len(self._units):
            raise ValueError(f"unit assignment does not match the model: missing {missing[:5]}")
        out: dict[str, Bits] = {}
        for layer in self.layers:
            per = tuple(int(unit_bits[u]) for u in layer.unit_names)
            out[layer.name] = per if layer.grouped else per[0]
        return out

    def to_units(self, bits: Mapping[str, Bits]) -> dict[str, int]:
        """{layer name: bits} -> {unit name: bits}."""
        self._check(bits)
        return {u: b for layer in self.layers for u, b in zip(layer.unit_names, layer.expand(bits[layer.name]))}

    def normalize(self, bits: Mapping[str, Bits | Sequence[int]]) -> dict[str, Bits]:
        """Canonical bits (ints, tuples for layers with structures, lists accepted), checked against the layers."""
        self._check(bits)
        return {layer.name: layer.normalize(bits[layer.name]) for layer in self.layers}

    def _sizes_tensor(self, layer: LayerInfo, device: torch.device) -> torch.Tensor:
        key = (layer.name, str(device))
        t = self._size_tensors.get(key)
        if t is None:
            sizes = layer.unit_sizes()
            t = torch.tensor(sizes if layer.grouped else sizes[0], dtype=torch.float32, device=device)
            self._size_tensors[key] = t
        return t

    # ---- expected size under the search's probabilities ----
    def expected_quantized_bits(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable expected size in bits of the quantized weights.

        Args:
            probs: {layer name: probabilities over that layer's candidates, shape (K,), or
                (num_groups, K) for a layer with structures}.

        Returns:
            scalar tensor, bits.
        """
        total = None
        for layer in self.layers:
            p = probs[layer.name]
            term = (p * self._sizes_tensor(layer, p.device)).sum()
            total = term if total is None else total + term
        if total is None:
            raise ValueError("no quantized layers: nothing to size")
        return total

    def summary(self, bits: Mapping[str, int]) -> dict[str, float | int]:
        """All totals of one assignment, for reports."""
        return {
            "float_model_bits": self.float_model_bits(),
            "model_bits": self.model_bits(bits),
            "float_quantized_bits": self.float_quantized_bits(),
            "quantized_bits": self.quantized_bits(bits),
            "float_rest_bits": self.float_rest_bits,
            "weight_compression": self.weight_compression(bits),
            "model_compression": self.model_compression(bits),
            "average_bits": self.average_bits(bits),
            "num_quantized_weights": self.num_quantized_weights,
            **({"quantized_param_share": self.num_quantized_weights / max(self.num_params, 1)}
               if self.num_params is not None else {}),
        }
