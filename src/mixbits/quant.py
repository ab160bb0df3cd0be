"""Weight quantizers as pure tensor functions.

Every quantizer works per output channel (dim 0 of a Conv/Linear weight) and has
two faces that always agree exactly:

* ``weight_codes`` / ``dequantize``: the integer codes and float16 scales that an
  exported file stores;
* ``fake_quantize``: the float weight the network computes with during search and
  fine-tuning, ``dequantize(weight_codes(w))`` with a straight-through gradient.

Bitwidths: 1 is binary (sign times the channel's mean |w|, as in BWN); 2 uses all
four levels of its codes, ``(c + 1/2) * scale`` for ``c`` in ``-2..1`` (the levels
``±scale/2, ±3 scale/2``: symmetric, no zero); 3..8 are symmetric uniform with levels
``-qmax..qmax`` (``qmax = 2**(b-1) - 1``). Every uniform quantizer (2..8) picks a
clipping scale per channel that minimises the squared error; 16 is IEEE half
precision; 32 leaves the weight unchanged.

A weight whose output channels lie on another dimension (a Hugging Face ``Conv1D``
stores (in, out): ``channel_dim=1``) is quantized as :func:`channels_first` of it,
and the result moved back with :func:`channels_back`: ``quantize_hard(w, b,
channel_dim=1)`` is ``quantize_hard(w.t().contiguous(), b).t()``.
"""

from __future__ import annotations

import torch

__all__ = [
    "FLOAT_BITS",
    "HALF_BITS",
    "INT_BITS",
    "SCALE_BITS",
    "channels_back",
    "channels_first",
    "check_bits",
    "dequantize",
    "fake_quantize",
    "quantize_hard",
    "quantize_int_stack",
    "best_clip",
    "weight_codes",
    "weight_scale",
]

INT_BITS = tuple(range(1, 9))  # bitwidths stored as integer codes plus a scale
HALF_BITS = 16
FLOAT_BITS = 32
SCALE_BITS = 16  # per-channel scales are stored as float16
VALID_BITS = INT_BITS + (HALF_BITS, FLOAT_BITS)

# Clipping ratios (fraction of the channel's max |w|) tried for uniform quantizers.
_CLIP_GRID = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
_MIN_SCALE = 2.0**-14  # smallest normal float16: keeps stored scales exact
_CHUNK_ELEMENTS = 1 << 22  # bound on the clip search's temporaries (16 MiB of float32 per tensor)


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a supported weight bitwidth.

    Raises:
        ValueError: if ``bits`` is not one of 1..8, 16 or 32.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VALID_BITS:
        raise ValueError(
            f"unsupported bitwidth {bits!r}: choose from 1..8 (integer codes), 16 (half) or 32 (float)"
        )
    return bits


def channels_first(w: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """``w`` with its output-channel dimension moved to dim 0 (contiguous; ``w`` itself when it is 0)."""
    return w if channel_dim == 0 else w.movedim(channel_dim, 0).contiguous()


def channels_back(w: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`channels_first`: dim 0 moved back to ``channel_dim`` (a view)."""
    return w if channel_dim == 0 else w.movedim(0, channel_dim)


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _code_range(bits: int) -> tuple[int, int, float]:
    """(lowest code, highest code, half-step offset) of the uniform quantizer at ``bits`` in 2..8.

    A code ``c`` stands for ``(c + offset) * scale``: 2 bits use four codes with levels at
    the half-integers, wider quantizers the symmetric integers ``-qmax..qmax``.
    """
    if bits == 2:
        return -2, 1, 0.5
    q = _qmax(bits)
    return -q, q, 0.0


def level_offset(bits: int) -> float:
    """What a 2..8-bit code ``c`` adds before the scale: ``(c + offset) * scale``; 0.5 at 2 bits, else 0."""
    return _code_range(bits)[2]


def level_top(bits: int) -> float:
    """The largest |level| of the 2..8-bit quantizer, in units of the scale: ``qmax``, or 3/2 at 2 bits."""
    return _top(bits)


def _top(bits: int) -> float:
    """The largest level of the uniform quantizer at ``bits``, in units of its scale."""
    lo, hi, off = _code_range(bits)
    return hi + off


def _level_tensors(bits: tuple[int, ...], like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(lo, hi, offset, top) of several uniform bitwidths, each of shape (B,)."""
    rows = [_code_range(b) + (_top(b),) for b in bits]
    return tuple(torch.tensor(col, dtype=like.dtype, device=like.device) for col in zip(*rows))


def _round_codes(x: torch.Tensor, lo, hi, off) -> torch.Tensor:
    """The code nearest to ``x`` (in units of the scale): ``clamp(round(x - off), lo, hi)``."""
    return torch.minimum(torch.maximum((x - off).round(), lo), hi)


def _to_half_exact(scale: torch.Tensor) -> torch.Tensor:
    """Round a positive scale to a float16 value (kept in the input dtype)."""
    return scale.clamp(min=_MIN_SCALE, max=60000.0).half().to(scale.dtype)


@torch.no_grad()
def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale of the ``bits``-bit quantizer, exactly representable in float16.

    Args:
        w: weight, shape (C_out, ...).
        bits: an integer bitwidth in 1..8.

    Returns:
        scale, shape (C_out,), dtype of ``w``.
    """
    check_bits(bits)
    if bits not in INT_BITS:
        raise ValueError(f"bitwidth {bits} has no scale: only 1..8-bit codes are scaled")
    flat = w.detach().reshape(w.shape[0], -1)  # (C, n)
    if bits == 1:
        return _to_half_exact(flat.abs().mean(dim=1))
    clip = best_clip(w, (bits,))[0]  # (C,)
    wmax = flat.abs().amax(dim=1).clamp(min=_MIN_SCALE)  # (C,)
    return _to_half_exact(wmax * clip / _top(bits))


@torch.no_grad()
def weight_codes(w: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-channel scale of ``w`` at ``bits`` in 1..8.

    Binary codes are 0 (negative) and 1 (non-negative); 2-bit codes are ``-2..1``
    (levels ``(c + 1/2) * scale``); wider uniform codes the signed levels ``-qmax..qmax``.

    Args:
        w: weight, shape (C_out, ...).
        bits: integer bitwidth 1..8.
        scale: optional precomputed scale, shape (C_out,).

    Returns:
        (codes int16 with the shape of ``w``, scale of shape (C_out,)).
    """
    if scale is None:
        scale = weight_scale(w, bits)
    view = (-1,) + (1,) * (w.dim() - 1)
    if bits == 1:
        codes = (w >= 0).to(torch.int16)
    else:
        lo, hi, off = _code_range(bits)
        codes = (w / scale.view(view) - off).round().clamp(lo, hi).to(torch.int16)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Float weight from integer codes (shape (C_out, ...)) and scales (shape (C_out,))."""
    view = (-1,) + (1,) * (codes.dim() - 1)
    scale = scale.float().view(view)
    if bits == 1:
        return (codes.float() * 2.0 - 1.0) * scale
    return (codes.float() + _code_range(bits)[2]) * scale


def quantize_hard(w: torch.Tensor, bits: int, channel_dim: int = 0) -> torch.Tensor:
    """The quantized weight, without gradient (what an exported file reproduces).

    Args:
        w: weight whose output channels lie along ``channel_dim``.
        bits: any supported bitwidth.
        channel_dim: the dimension with one scale per index (0 but for Hugging Face Conv1D).
    """
    check_bits(bits)
    if bits == FLOAT_BITS:
        return w.detach()
    if bits == HALF_BITS:
        return w.detach().half().to(w.dtype)
    codes, scale = weight_codes(channels_first(w, channel_dim), bits)
    return channels_back(dequantize(codes, scale, bits).to(w.dtype), channel_dim)


@torch.no_grad()
def best_clip(w: torch.Tensor, bits: tuple[int, ...]) -> torch.Tensor:
    """Per-channel clipping ratios that :func:`weight_scale` picks, for several uniform bitwidths at once.

    Args:
        w: weight, shape (C_out, ...).
        bits: uniform bitwidths, each in 2..8.

    Returns:
        clip ratios, shape (len(bits), C_out), values from the clipping grid.
    """
    flat = w.detach().reshape(w.shape[0], -1)  # (C, n)
    lo, hi, off, top = (t.view(-1, 1, 1) for t in _level_tensors(bits, w))  # (B, 1, 1) each
    wmax = flat.abs().amax(dim=1).clamp(min=_MIN_SCALE)  # (C,)
    grid = _CLIP_GRID.to(device=w.device, dtype=w.dtype)  # (G,)
    # Channels in chunks, one clipping ratio at a time: temporaries of (B, c, n) <= _CHUNK_ELEMENTS elements
    # instead of one (B, C, G, n) tensor.
    step = max(1, _CHUNK_ELEMENTS // (len(bits) * max(flat.shape[1], 1)))
    out = []
    for first in range(0, flat.shape[0], step):
        f, m = flat[first:first + step], wmax[first:first + step]  # (c, n), (c,)
        scales = _to_half_exact(m[None, :, None] * grid[None, None, :] / top)  # (B, c, G)
        err = torch.zeros(scales.shape, dtype=w.dtype, device=w.device)  # (B, c, G)
        for g in range(len(grid)):
            s = scales[:, :, g, None]  # (B, c, 1)
            q = _round_codes(f[None] / s, lo, hi, off) + off
            err[:, :, g] = (q * s - f[None]).pow(2).sum(dim=2)
        out.append(grid[err.argmin(dim=2)])  # (B, c)
    return torch.cat(out, dim=1)  # (B, C)


def quantize_int_stack(w: torch.Tensor, bits: tuple[int, ...], clip: torch.Tensor) -> torch.Tensor:
    """Quantize ``w`` to several uniform bitwidths at once with given clipping ratios, no gradient.

    With ``clip = best_clip(w, bits)`` the result equals ``quantize_hard(w, b)`` for each ``b``
    exactly; the search refreshes ``clip`` only now and then, because the ratios move slowly
    while the weights train and the grid search is the costly part.

    Args:
        w: weight, shape (C_out, ...).
        bits: uniform bitwidths, each in 2..8.
        clip: clipping ratios, shape (len(bits), C_out).

    Returns:
        quantized weights, shape (len(bits), *w.shape).
    """
    w = w.detach()
    flat = w.reshape(1, w.shape[0], -1)  # (1, C, n)
    lo, hi, off, top = (t.view(-1, 1, 1) for t in _level_tensors(bits, w))  # (B, 1, 1) each
    wmax = flat.abs().amax(dim=2, keepdim=True).clamp(min=_MIN_SCALE)  # (1, C, 1)
    scale = _to_half_exact(wmax * clip[..., None] / top)  # (B, C, 1)
    q = (_round_codes(flat / scale, lo, hi, off) + off) * scale  # (B, C, n)
    return q.reshape((len(bits),) + tuple(w.shape))


def fake_quantize(w: torch.Tensor, bits: int, channel_dim: int = 0) -> torch.Tensor:
    """Quantize ``w`` to ``bits`` with a straight-through gradient (identity backward)."""
    if bits == FLOAT_BITS:
        return w
    return w + (quantize_hard(w, bits, channel_dim) - w).detach()
