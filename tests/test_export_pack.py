"""Bit packing: exact sizes, a pinned layout, and round trips for every bitwidth and awkward lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbits.export import pack
from mixbits.export.pack import code_offset, pack_bits, pack_codes, packed_nbytes, unpack_bits, unpack_codes
from mixbits.quant import weight_codes


@st.composite
def bits_and_values(draw, max_len=300):
    bits = draw(st.integers(1, 8))
    n = draw(st.integers(0, max_len))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n))
    return bits, np.array(values, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(bits_and_values())
def test_round_trip_any_bits_any_length(case):
    bits, values = case
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8 and packed.size == (values.size * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(packed, bits, values.size), values)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 17, 63, 65, 1001])
def test_round_trip_every_bitwidth_extremes(bits, n):
    rng = np.random.default_rng(bits * 1000 + n)
    for values in (rng.integers(0, 1 << bits, n), np.full(n, (1 << bits) - 1), np.zeros(n, dtype=np.int64)):
        packed = pack_bits(values, bits)
        assert packed.size == packed_nbytes(n, bits)
        np.testing.assert_array_equal(unpack_bits(packed, bits, n), values)


def test_layout_is_lsb_first_across_byte_boundaries():
    # 1 bit: values 1,0,1,1 -> bits 0..3 of byte 0 = 0b1101.
    assert pack_bits(np.array([1, 0, 1, 1]), 1).tolist() == [0b1101]
    # 3 bits: 3 | 5 << 3 | 6 << 6 = 0b10_101_011 (low byte), the high bit of 6 spills into byte 1.
    assert pack_bits(np.array([3, 5, 6]), 3).tolist() == [0b10101011, 0b1]
    # 5 bits: 31 then 1 -> 0b001_11111, 0b00 -> [0x3F, 0x00].
    assert pack_bits(np.array([31, 1]), 5).tolist() == [0x3F, 0x00]
    assert packed_nbytes(10, 3) == 4 and packed_nbytes(8, 7) == 7 and packed_nbytes(0, 5) == 0


@pytest.mark.parametrize("bits", [1, 3, 7])
def test_chunked_packing_matches_one_chunk(bits, monkeypatch):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 1 << bits, 1003)
    whole = pack_bits(values, bits)
    monkeypatch.setattr(pack, "_CHUNK", 16)  # many chunks, each a multiple of 8 values
    np.testing.assert_array_equal(pack_bits(values, bits), whole)
    np.testing.assert_array_equal(unpack_bits(whole, bits, values.size), values)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 6), st.integers(1, 40))
def test_quantizer_codes_round_trip(bits, c_out, n_in):
    w = torch.randn(c_out, n_in, generator=torch.Generator().manual_seed(c_out * 100 + n_in))
    codes, _ = weight_codes(w, bits)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(codes.numel(), bits)
    assert torch.equal(unpack_codes(packed, bits, tuple(w.shape)), codes)


def test_code_offsets():
    assert [code_offset(b) for b in range(1, 9)] == [0, 2, 3, 7, 15, 31, 63, 127]


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="0..7"):
        pack_bits(np.array([8]), 3)
    with pytest.raises(ValueError, match="0..1"):
        pack_bits(np.array([-1]), 1)
    with pytest.raises(ValueError, match="1..8"):
        pack_bits(np.array([1]), 9)
    with pytest.raises(ValueError, match="need 4 packed bytes, got 3"):
        unpack_bits(np.zeros(3, dtype=np.uint8), 3, 10)
    with pytest.raises(ValueError, match="largest code 6"):  # 3-bit codes stop at 2 * qmax = 6
        unpack_codes(torch.tensor([0xFF], dtype=torch.uint8), 3, (2,))
