"""The 4-bit codes of per-structure bitwidths (the ``group_bits`` tensor of a ``.mbits`` file)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..quant import VALID_BITS

__all__ = ["pack_group_bits", "unpack_group_bits"]


def pack_group_bits(bits: Sequence[int]) -> torch.Tensor:
    """The 4-bit codes of per-structure bitwidths, low nibble first.

    Args:
        bits: bitwidths, each in ``quant.VALID_BITS``, shape (G,).

    Returns:
        uint8 tensor, shape (ceil(G / 2),); an odd ``G`` leaves the last high nibble zero.

    Raises:
        ValueError: a bitwidth that is not supported.
    """
    bad = [b for b in bits if b not in VALID_BITS]
    if bad:
        raise ValueError(f"unsupported bitwidths {bad[:5]} in per-structure bits")
    codes = np.array([VALID_BITS.index(int(b)) for b in bits], dtype=np.uint8)  # (G,)
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    return torch.from_numpy((codes[0::2] | (codes[1::2] << 4)).astype(np.uint8))  # (ceil(G/2),)


def unpack_group_bits(data: torch.Tensor, count: int) -> tuple[int, ...]:
    """Inverse of :func:`pack_group_bits`: ``count`` bitwidths from ``ceil(count / 2)`` bytes.

    Raises:
        ValueError: a byte count that does not fit, a code above 9, or a non-zero padding nibble.
    """
    raw = data.detach().to("cpu").contiguous().numpy()
    if raw.dtype != np.uint8 or raw.shape != ((count + 1) // 2,):
        raise ValueError(f"{count} structure codes need {(count + 1) // 2} bytes, got {raw.size}")
    codes = np.stack([raw & 15, raw >> 4], axis=1).reshape(-1)  # (2 * ceil(count/2),), low nibble first
    if codes.size > count and codes[count] != 0:
        raise ValueError("the padding nibble after the last structure code is not zero")
    codes = codes[:count]
    if codes.size and int(codes.max()) >= len(VALID_BITS):
        raise ValueError(f"structure code {int(codes.max())} names no bitwidth (codes are 0..{len(VALID_BITS) - 1})")
    table = np.asarray(VALID_BITS, dtype=np.int64)
    return tuple(int(b) for b in table[codes])

