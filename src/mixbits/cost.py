"""The one cost model: exact and expected sizes in bits, compressions, average bits.

Everything that needs a size calls this module: the search penalty (expected
size, differentiable), the budget solver (exact cost table), the report and the
exporter's check. Units are in the names: ``*_bits`` are bits, ``*_kib`` kibibytes.

Sizes count what a deployed file must hold:

* a quantized layer at 1..8 bits: ``n * b`` code bits plus one float16 scale per
  output channel (``LayerInfo.num_channels``); at 16 bits ``n * 16``; at 32 bits ``n * 32``;
* everything else (biases, norms and their running statistics, layers kept in
  float): 32 bits per element.

A ``.mbits`` file adds its header and at most 7 bits of padding per 1..8-bit layer
(``file_overhead_bits`` bounds both); size targets bound the file, header included.

Weight compression (the figure papers quote) is the float32 size of the
quantized layers' weights over their quantized size, scales included; whole-model
compression divides the whole float model by the whole quantized model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .quant import FLOAT_BITS, INT_BITS, SCALE_BITS, check_bits

__all__ = ["LayerInfo", "CostModel", "weight_size_bits"]


def weight_size_bits(num_weights: int, num_channels: int, bits: int) -> int:
    """Exact stored size in bits of ``num_weights`` weights over ``num_channels`` output channels."""
    check_bits(bits)
    if bits in INT_BITS:
        return num_weights * bits + num_channels * SCALE_BITS
    return num_weights * bits


@dataclass(frozen=True)
class LayerInfo:
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
    """

    name: str
    aliases: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    candidates: tuple[int, ...]
    pinned: bool = False
    keys: tuple[str, ...] = ()
    channel_dim: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.channel_dim < len(self.shape):
            raise ValueError(f"layer {self.name!r}: channel_dim {self.channel_dim} is not a dimension of shape "
                             f"{self.shape}")

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
    def num_channels(self) -> int:
        """Output channels: one float16 scale each at 1..8 bits."""
        return self.shape[self.channel_dim]

    def size_bits(self, bits: int) -> int:
        """Exact size in bits of this layer's weight at ``bits``."""
        return weight_size_bits(self.num_weights, self.num_channels, bits)


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
        return sum(self._by_name[n].size_bits(int(b)) for n, b in bits.items())

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
        return sum(min(layer.size_bits(b) for b in layer.candidates) for layer in self.layers)

    def max_quantized_bits(self) -> int:
        return sum(max(layer.size_bits(b) for b in layer.candidates) for layer in self.layers)

    def cost_table(self) -> dict[str, dict[int, int]]:
        """{layer name: {candidate bits: exact size in bits}}."""
        return {layer.name: {b: layer.size_bits(b) for b in layer.candidates} for layer in self.layers}

    # ---- expected size under the search's probabilities ----
    def expected_quantized_bits(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable expected size in bits of the quantized weights.

        Args:
            probs: {layer name: probabilities over that layer's candidates, shape (K,)}.

        Returns:
            scalar tensor, bits.
        """
        total = None
        for layer in self.layers:
            p = probs[layer.name]
            sizes = torch.tensor([float(layer.size_bits(b)) for b in layer.candidates], device=p.device)
            term = (p * sizes).sum()
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
