"""The records of a ``.mbits`` file: its quantized weights, its float tensors and the validated file in memory.

Pure data and arithmetic (how many elements of each blob a record takes); reading, validation
and writing live in :mod:`.reader`, :mod:`.validate` and :mod:`.writer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Union

import numpy as np
import torch

from ..granularity import Structures
from ..quant import HALF_BITS, INT_BITS
from .layout import BLOBS, BN_STATS
from .pack import packed_nbytes

__all__ = ["Bits", "LayerRecord", "FloatRecord", "MbitsFile", "weight_key", "numel", "is_int", "ITEM_BYTES",
           "run_elements", "expected_blob_sizes"]

Bits = Union[int, tuple[int, ...]]  # one layer's bits: an int, or one per structure


def weight_key(module_name: str) -> str:
    """State-dict key of a layer's weight (a bare ``weight`` for the root module)."""
    return f"{module_name}.weight" if module_name else "weight"


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LayerRecord(Structures):
    """One quantized weight as stored: its name(s), shape, bits and state-dict keys.

    Attributes:
        name, aliases, kind, shape: as :class:`mixbits.cost.LayerInfo`.
        bits: an int, or for a layer with structures one int per structure (a tuple). An int
            given for a layer with structures applies to every structure, and a sequence is
            made a tuple: the record always holds the canonical form.
        keys: state-dict keys; default :func:`weight_key` of the name and each alias.
        channel_dim: the dimension of ``shape`` with one scale per index.
        group_size: output channels per structure (runs along ``channel_dim``, the last one possibly
            shorter); 0 when the whole weight takes one bitwidth. Below the channel count, so a layer
            with structures has two or more.

    Raises:
        ValueError: a group size outside 0 or 1..channels-1, or per-structure bits of the wrong length.
    """

    name: str
    aliases: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    bits: Bits
    keys: tuple[str, ...] = ()
    channel_dim: int = 0
    group_size: int = 0

    def __post_init__(self) -> None:
        self.check_structures()
        bits = self.bits
        if is_int(bits):
            canonical: Bits = (int(bits),) * self.num_groups if self.grouped else int(bits)
        else:
            per = tuple(int(b) for b in bits)
            if len(per) != self.num_groups:
                raise ValueError(f"layer {self.name!r} has {self.num_groups} structure(s) but {len(per)} bits "
                                 f"were given")
            canonical = per if self.grouped else per[0]
        object.__setattr__(self, "bits", canonical)

    @property
    def codes_shape(self) -> tuple[int, ...]:
        """The shape the codes are stored in: ``shape`` with ``channel_dim`` moved first."""
        d = self.channel_dim
        return (self.shape[d],) + self.shape[:d] + self.shape[d + 1:]

    @property
    def group_bits(self) -> tuple[int, ...]:
        """The bits of every structure, shape (num_groups,) (one element for a layer without structures)."""
        return self.bits if isinstance(self.bits, tuple) else (self.bits,)

    @property
    def channel_bits(self) -> np.ndarray:
        """The bits of every output channel, shape (C,), int64."""
        return np.repeat(np.asarray(self.group_bits, dtype=np.int64), self.group_channels)

    @property
    def grouped(self) -> bool:
        """Whether the weight has bits per structure: a group size, which is below the channels (checked)."""
        return self.group_size != 0  # what Structures.grouped computes, without listing the structures

    @property
    def bits_channels(self) -> dict[int, int]:
        """{bits: output channels at those bits}, in ascending bits: the runs the file stores."""
        if not self.group_size:
            return {self.bits: self.num_channels}  # type: ignore[dict-item]
        counts: dict[int, int] = {}
        for b, c in zip(self.group_bits, self.group_channels):
            counts[b] = counts.get(b, 0) + c
        return dict(sorted(counts.items()))

    @property
    def index_bytes(self) -> int:
        """Bytes of this layer's 4-bit structure codes in ``group_bits`` (0 without structures)."""
        return (self.num_groups + 1) // 2 if self.grouped else 0

    @property
    def state_keys(self) -> tuple[str, ...]:
        return self.keys or tuple(weight_key(n) for n in (self.name,) + self.aliases)

    @property
    def default_keys(self) -> bool:
        return self.state_keys == tuple(weight_key(n) for n in (self.name,) + self.aliases)

    @cached_property
    def num_weights(self) -> int:
        """Weights of the layer (computed once: read often while a file is checked)."""
        return numel(self.shape)

    @property
    def weights_per_channel(self) -> int:
        return self.num_weights // self.num_channels if self.num_channels else 0

    @property
    def average_bits(self) -> float:
        """Code bits per weight (scales and structure codes not included): the weight-weighted mean bitwidth."""
        if not self.group_size:
            return float(self.bits)  # type: ignore[arg-type]
        per = self.weights_per_channel
        total = sum(b * c * per for b, c in self.bits_channels.items())
        return total / self.num_weights if self.num_weights else 0.0

    @property
    def stored_bytes(self) -> int:
        """Bytes this weight takes in the file: codes and scales or half/float values, and structure codes."""
        runs = [run_elements(self, b, c) for b, c in self.bits_channels.items()]  # codes, scales, half, float
        return sum(n * ITEM_BYTES[blob] for run in runs for blob, n in run.items()) + self.index_bytes


ITEM_BYTES = {"codes": 1, "scales": 2, "half": 2, "float": 4, "group_bits": 1}


def run_elements(rec: LayerRecord, bits: int, channels: int) -> dict[str, int]:
    """Elements of each blob that ``channels`` output channels of ``rec`` at ``bits`` take (one run)."""
    n = channels * rec.weights_per_channel
    if bits in INT_BITS:
        return {"codes": packed_nbytes(n, bits), "scales": channels, "half": 0, "float": 0}
    if bits == HALF_BITS:
        return {"codes": 0, "scales": 0, "half": n, "float": 0}
    return {"codes": 0, "scales": 0, "half": 0, "float": n}



@dataclass(frozen=True)
class FloatRecord:
    """A tensor kept in float32: its state-dict key, shape and the other keys that share it.

    Attributes:
        key, shape, aliases: as stored.
        infinite: whether the tensor may hold +-inf (a buffer such as an attention mask; listed in the
            manifest's ``float_infinite``). NaN is never stored, nor infinities elsewhere.
    """

    key: str
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()
    infinite: bool = False

    @property
    def bn_stat(self) -> bool:
        """Whether this is a BatchNorm running mean or variance (by its key): finite, the variance >= 0."""
        return self.key.rpartition(".")[2] in BN_STATS

    @property
    def numel(self) -> int:
        return numel(self.shape)


@dataclass(frozen=True)
class MbitsFile:
    """A validated ``.mbits`` file in memory.

    Attributes:
        path: where it was read from.
        manifest: the parsed JSON manifest.
        layers: the quantized weights, in file order (per-structure bits decoded from ``group_bits``).
        floats: the float32 tensors, in file order.
        blobs: {"codes" | "scales" | "half" | "float" | "group_bits": 1-D tensor}.
        file_bytes: size on disk.
        header_bytes: safetensors header (length prefix, tensor table, manifest).
    """

    path: str
    manifest: dict[str, Any]
    layers: tuple[LayerRecord, ...]
    floats: tuple[FloatRecord, ...]
    blobs: dict[str, torch.Tensor]
    file_bytes: int
    header_bytes: int


def expected_blob_sizes(layers: tuple[LayerRecord, ...], floats: tuple[FloatRecord, ...]) -> dict[str, int]:
    """Number of elements of each blob implied by the records."""
    sizes = {name: 0 for name in BLOBS}
    for layer in layers:
        if not layer.group_size:  # one run: the common case, without the per-run tables
            b, n = layer.bits, layer.num_weights
            if b in INT_BITS:
                sizes["codes"] += packed_nbytes(n, b)  # type: ignore[arg-type]
                sizes["scales"] += layer.num_channels
            else:
                sizes["half" if b == HALF_BITS else "float"] += n
            continue
        for b, c in layer.bits_channels.items():
            for blob, n in run_elements(layer, b, c).items():
                sizes[blob] += n
        sizes["group_bits"] += layer.index_bytes
    sizes["float"] += sum(f.numel for f in floats)
    return sizes

