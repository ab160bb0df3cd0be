"""Bit packing of integer codes at exactly ``b`` bits each (1 <= b <= 8), as pure array math.

Layout: value ``i`` occupies bits ``i*b .. i*b + b - 1`` of the stream, least
significant bit first, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``
(the "little" bit order of ``numpy.packbits``). Values cross byte boundaries
freely; only the last byte is padded with zero bits, so ``n`` values take
``ceil(n * b / 8)`` bytes.

Signed quantizer codes (``-qmax..qmax``, ``-2..1`` at 2 bits, 0/1 for binary) are stored as
``code + offset``: ``qmax = 2**(b-1) - 1`` for 3..8 bits, 2 at 2 bits, 0 for binary.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["packed_nbytes", "pack_bits", "unpack_bits", "code_offset", "pack_codes", "unpack_codes"]

PACK_BITS = tuple(range(1, 9))
# Values handled per step: a multiple of 8, so every chunk starts on a byte boundary
# (8 values of b bits are exactly b bytes) and the (chunk, b) bit matrix stays small.
_CHUNK = 1 << 20


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in PACK_BITS:
        raise ValueError(f"packing needs a bitwidth in 1..8, got {bits!r}")
    return int(bits)


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take when packed."""
    return (int(count) * _check_bits(bits) + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned values below ``2**bits`` into bytes.

    Args:
        values: integers in ``0 .. 2**bits - 1``, any shape (flattened in C order).
        bits: 1..8.

    Returns:
        uint8 array, shape (ceil(n * bits / 8),).

    Raises:
        ValueError: a value out of range, or a bitwidth outside 1..8.
    """
    bits = _check_bits(bits)
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise ValueError(f"values to pack at {bits} bits must lie in 0..{(1 << bits) - 1}, "
                         f"got {flat.min()}..{flat.max()}")
    flat = flat.astype(np.uint8)
    if bits == 8:
        return flat.copy()
    shifts = np.arange(bits, dtype=np.uint8)  # (b,)
    out = []
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]  # (m,)
        stream = ((chunk[:, None] >> shifts[None, :]) & 1).reshape(-1)  # (m * b,), LSB of each value first
        out.append(np.packbits(stream, bitorder="little"))  # (ceil(m * b / 8),)
    if not out:
        return np.zeros(0, dtype=np.uint8)
    return np.concatenate(out)


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` values of ``bits`` bits.

    Args:
        data: uint8 array of exactly ``packed_nbytes(count, bits)`` bytes.
        bits: 1..8.
        count: number of values.

    Returns:
        uint8 array, shape (count,).

    Raises:
        ValueError: ``data`` of the wrong length or dtype.
    """
    bits = _check_bits(bits)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ValueError(f"packed data must be a 1-D uint8 array, got {data.dtype} of shape {data.shape}")
    need = packed_nbytes(count, bits)
    if data.size != need:
        raise ValueError(f"{count} values of {bits} bits need {need} packed bytes, got {data.size}")
    if bits == 8:
        return data.copy()
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint8)  # (b,)
    out = []
    for start in range(0, count, _CHUNK):
        m = min(_CHUNK, count - start)
        first = start * bits // 8  # byte-aligned: start is a multiple of 8
        chunk = data[first:first + packed_nbytes(m, bits)]
        stream = np.unpackbits(chunk, count=m * bits, bitorder="little").reshape(m, bits)  # (m, b)
        out.append((stream * weights[None, :]).sum(axis=1, dtype=np.uint16).astype(np.uint8))  # (m,)
    if not out:
        return np.zeros(0, dtype=np.uint8)
    return np.concatenate(out)


def code_offset(bits: int) -> int:
    """What is added to a signed code before packing: ``qmax = 2**(bits-1) - 1`` (0 for binary, 2 for the
    four 2-bit codes ``-2..1``)."""
    if _check_bits(bits) == 2:
        return 2
    return (1 << (bits - 1)) - 1


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack quantizer codes (as returned by :func:`mixbits.quant.weight_codes`) into bytes.

    Args:
        codes: integer tensor, any shape, values in ``-qmax..qmax`` (``-2..1`` at 2 bits, 0/1 for binary).
        bits: 1..8.

    Returns:
        uint8 tensor, shape (ceil(numel * bits / 8),), on the CPU.
    """
    values = codes.detach().to("cpu", torch.int32).reshape(-1).numpy() + code_offset(bits)  # (n,)
    return torch.from_numpy(pack_bits(values, bits))


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int16 codes of ``shape``.

    Raises:
        ValueError: wrong byte count, or a stored value that no quantizer code maps to.
    """
    count = 1
    for s in shape:
        count *= int(s)
    values = unpack_bits(packed.detach().to("cpu").contiguous().numpy(), bits, count).astype(np.int16)  # (n,)
    offset = code_offset(bits)
    largest = (1 << bits) - 1 if bits <= 2 else 2 * offset
    if values.size and int(values.max()) > largest:
        raise ValueError(f"stored {bits}-bit value {int(values.max())} is above the largest code {largest}")
    return torch.from_numpy(values - offset).reshape(tuple(int(s) for s in shape))
