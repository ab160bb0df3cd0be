"""Torch math that turns one stored run (:class:`~mixbits.export.layer_runs.Run`) back into float values.

The same arithmetic as :func:`mixbits.quant.dequantize` on the codes of
:func:`mixbits.export.pack.unpack_codes`, in torch ops (no numpy round trip), so a packed
model computes bit for bit the weights :func:`mixbits.load` builds.
"""

from __future__ import annotations

import torch

from ..quant import HALF_BITS, INT_BITS, channels_back
from .layer_runs import LayerRuns, Run
from ..quant import level_offset
from .pack import code_offset

__all__ = ["unpack_values", "run_values", "layer_weight"]


def unpack_values(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Unsigned values of ``bits`` bits from the packed stream ``data`` (uint8, (ceil(count * bits / 8),)).

    Returns:
        int16 tensor, shape (count,).
    """
    if bits == 8:
        return data[:count].to(torch.int16)
    if 8 % bits == 0:  # 1, 2, 4: whole values per byte, lowest bits first
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=data.device)  # (per,)
        vals = (data[:, None] >> shifts[None, :]) & ((1 << bits) - 1)  # (nb, per)
        return vals.reshape(-1)[:count].to(torch.int16)
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)  # (8,)
    stream = ((data[:, None] >> shifts[None, :]) & 1).reshape(-1)[:count * bits]  # (count * bits,), LSB first
    weights = (1 << torch.arange(bits, dtype=torch.int16, device=data.device))  # (bits,)
    return (stream.reshape(count, bits).to(torch.int16) * weights).sum(1, dtype=torch.int16)  # (count,)


def run_values(run: Run) -> torch.Tensor:
    """The float32 values of one run, shape ``run.shape``."""
    if run.bits in INT_BITS:
        assert run.codes is not None and run.scales is not None  # set for every 1..8-bit run
        codes = unpack_values(run.codes, run.bits, run.numel) - code_offset(run.bits)  # (n,)
        codes = codes.reshape(run.shape)
        scale = run.scales.float().view((-1,) + (1,) * (len(run.shape) - 1))  # (c, 1, ...)
        if run.bits == 1:
            return (codes.float() * 2.0 - 1.0) * scale
        return (codes.float() + level_offset(run.bits)) * scale  # 2 bits: levels at the half-integers
    assert run.values is not None
    return run.values.float() if run.bits == HALF_BITS else run.values


def layer_weight(lr: LayerRuns) -> torch.Tensor:
    """The layer's float32 weight in the state-dict layout, as :func:`mixbits.load` builds it."""
    rec = lr.record
    if not lr.channels_first:
        return run_values(lr.runs[0])
    if len(lr.runs) == 1:
        return channels_back(run_values(lr.runs[0]), rec.channel_dim)
    wc = torch.empty(rec.codes_shape, dtype=torch.float32)  # (C, ...)
    for run in lr.runs:
        wc.index_copy_(0, torch.from_numpy(run.rows), run_values(run))
    return channels_back(wc, rec.channel_dim)
