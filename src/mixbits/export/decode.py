"""Decoding a validated ``.mbits`` file into float tensors keyed by state-dict key."""

from __future__ import annotations

import torch

from ..quant import FLOAT_BITS, HALF_BITS, INT_BITS, channels_back, dequantize, level_offset, level_top
from .layout import BLOBS, SCALE_RANGE, corrupt, short_repr
from .pack import packed_nbytes, unpack_codes
from .records import LayerRecord, MbitsFile, numel

__all__ = ["decode_state_dict"]


def decode_state_dict(f: MbitsFile) -> dict[str, torch.Tensor]:
    """The float tensors of the file, keyed by state-dict key (shared tensors under every key).

    Quantized weights are dequantized exactly as the fake-quantized model computes them (a
    layer with structures: each channel at its structure's bits, one vectorised step per
    distinct bitwidth); 16-bit weights come back as float32 values of their float16 numbers.

    Raises:
        MbitsFormatError: a stored code that no quantizer produces, or a 2..8-bit channel whose codes do not
            reach its bitwidth's largest code although its scale is not at a clamp (codes that do not belong to
            their scales: a forged or reinterpreted run).
    """
    cursor = {name: 0 for name in BLOBS}

    def take(blob: str, count: int) -> torch.Tensor:
        start = cursor[blob]
        cursor[blob] = start + count
        return f.blobs[blob][start:start + count]

    def values(rec: LayerRecord, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
        """One run of ``shape[0]`` channels at ``bits``, channels first, float32."""
        n = numel(shape)
        if bits in INT_BITS:
            try:
                codes = unpack_codes(take("codes", packed_nbytes(n, bits)), bits, shape)
            except ValueError as exc:
                raise corrupt(f.path, f"layer {short_repr(rec.name)}: {str(exc)[:100]}") from None
            scales = take("scales", shape[0])  # (c,)
            _check_channel_codes(codes, scales, bits, rec, f.path)
            return dequantize(codes, scales, bits)  # (c, ...)
        if bits == HALF_BITS:
            return take("half", n).float().reshape(shape)
        return take("float", n).clone().reshape(shape)  # FLOAT_BITS, the only bitwidth left after parse_records

    out: dict[str, torch.Tensor] = {}
    for rec in f.layers:
        if not rec.grouped:
            if rec.bits in (HALF_BITS, FLOAT_BITS):  # stored in the state-dict layout
                w = values(rec, rec.bits, rec.shape)
            else:
                w = channels_back(values(rec, rec.bits, rec.codes_shape), rec.channel_dim).contiguous()
        else:
            rest = rec.codes_shape[1:]
            wc = torch.empty(rec.codes_shape, dtype=torch.float32)  # (C, ...)
            channel_bits = torch.from_numpy(rec.channel_bits)  # (C,)
            for b, c in rec.bits_channels.items():  # ascending, as written
                rows = (channel_bits == b).nonzero().flatten()  # (c,), channel order
                wc.index_copy_(0, rows, values(rec, b, (c,) + rest))
            w = channels_back(wc, rec.channel_dim).contiguous()  # the state-dict layout
        for key in rec.state_keys:
            out[key] = w
    for frec in f.floats:
        t = take("float", frec.numel).clone().reshape(frec.shape)
        for key in (frec.key,) + frec.aliases:
            out[key] = t
    return out


def _check_channel_codes(codes: torch.Tensor, scales: torch.Tensor, bits: int, rec: LayerRecord, path: str) -> None:
    """Raise unless every 2..8-bit channel's largest |code| is ``qmax`` (within one), as ``weight_codes`` makes it.

    ``weight_scale`` is the channel's clipped max |w| over ``qmax`` (clip <= 1), so its largest weight
    rounds to ``qmax`` or is clamped there; only a scale clamped at :data:`SCALE_RANGE` (an all-zero or
    tiny channel) escapes. One less is allowed for weights of a lower precision than float32.

    Args:
        codes: int16 codes, shape (c, ...); scales: float16, shape (c,).
    """
    if bits == 1 or codes.numel() == 0:
        return
    top = level_top(bits)  # the largest |level|: qmax, or 3/2 for the four 2-bit levels (c + 1/2)
    reach = (codes.reshape(codes.shape[0], -1).float() + level_offset(bits)).abs().amax(dim=1)  # (c,)
    lo, hi = SCALE_RANGE
    free = (scales.float() > lo) & (scales.float() < hi)  # (c,) scales not at a clamp
    # at 2 bits the largest weight always lands on the outer level (its scale is max |w| * clip / (3/2))
    short = free & (reach < (top if bits == 2 else max(top - 1, 1)))
    if bool(short.any()):
        i = int(short.nonzero()[0, 0])
        raise corrupt(path, f"layer {short_repr(rec.name)}: a {bits}-bit channel's levels reach only "
                            f"{float(reach[i]):g} of {top:g}: its codes do not belong to their scale")
