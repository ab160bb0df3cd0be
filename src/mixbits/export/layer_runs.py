"""The stored parts of every quantized weight of a ``.mbits`` file, without dequantizing them.

:func:`layer_runs` walks the blobs in the order :func:`~mixbits.export.fileformat.decode_state_dict`
does and hands each layer its *runs*: one per distinct bitwidth (a layer without structures has
one), with the channels of the run and the stored data of that run, still packed. The packed
ONNX graph, the QONNX graph and the packed PyTorch model are built from these, so each reproduces
the values of :func:`mixbits.load` from the same codes and scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..quant import HALF_BITS, INT_BITS
from .fileformat import BLOBS, LayerRecord, MbitsFile
from .pack import packed_nbytes

__all__ = ["Run", "LayerRuns", "layer_runs", "float_tensors"]


@dataclass(frozen=True)
class Run:
    """The channels of one layer stored at one bitwidth.

    Attributes:
        bits: 1..8, 16 or 32.
        rows: the run's output channels (indices along the channel dimension), ascending, shape (c,).
        shape: the run's shape, channels first: ``(c, *rest)``; for a layer without structures at 16 or
            32 bits, the state-dict shape (the file stores those in the state-dict layout).
        codes: 1..8 bits: the packed codes (:mod:`mixbits.export.pack`), uint8, shape (ceil(n * bits / 8),).
        scales: 1..8 bits: float16 scales, shape (c,).
        values: 16 bits: float16 values; 32 bits: float32 values; shape ``shape``.
    """

    bits: int
    rows: np.ndarray
    shape: tuple[int, ...]
    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class LayerRuns:
    """A quantized weight as stored: its record and its runs in file order (ascending bits).

    ``channels_first`` is False only for a layer without structures at 16 or 32 bits, whose one run
    is in the state-dict layout; otherwise the runs are channels first and
    :func:`mixbits.quant.channels_back` moves the assembled ``(C, ...)`` weight to the state-dict layout.
    """

    record: LayerRecord
    runs: tuple[Run, ...]

    @property
    def channels_first(self) -> bool:
        return self.record.grouped or self.record.bits in INT_BITS


def layer_runs(f: MbitsFile) -> list[LayerRuns]:
    """Every quantized layer's runs, in file order (views of the file's blobs, no copies)."""
    cursor = {name: 0 for name in BLOBS}

    def take(blob: str, count: int) -> torch.Tensor:
        start = cursor[blob]
        cursor[blob] = start + count
        return f.blobs[blob][start:start + count]

    out = []
    for rec in f.layers:
        runs = []
        rest = rec.codes_shape[1:]
        channel_bits = rec.channel_bits  # (C,)
        for b, c in rec.bits_channels.items():  # ascending, as written
            rows = np.flatnonzero(channel_bits == b)  # (c,)
            shape = (c,) + rest if rec.grouped or b in INT_BITS else rec.shape
            n = int(np.prod(shape, dtype=np.int64))
            if b in INT_BITS:
                runs.append(Run(b, rows, shape, codes=take("codes", packed_nbytes(n, b)), scales=take("scales", c)))
            elif b == HALF_BITS:
                runs.append(Run(b, rows, shape, values=take("half", n).reshape(shape)))
            else:
                runs.append(Run(b, rows, shape, values=take("float", n).reshape(shape)))
        out.append(LayerRuns(rec, tuple(runs)))
    return out


def float_tensors(f: MbitsFile) -> dict[str, torch.Tensor]:
    """The file's float32 tensors that are not quantized weights, by state-dict key (aliases included); views."""
    start = sum(r.numel for lr in layer_runs(f) for r in lr.runs if r.bits == 32)
    out = {}
    for frec in f.floats:
        t = f.blobs["float"][start:start + frec.numel].reshape(frec.shape)
        start += frec.numel
        for key in (frec.key,) + frec.aliases:
            out[key] = t
    return out
