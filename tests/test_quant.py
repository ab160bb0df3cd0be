import pytest
import torch

from mixbits.quant import dequantize, fake_quantize, quantize_hard, weight_codes, weight_scale


def test_binary_is_sign_times_mean_abs_per_channel():
    w = torch.tensor([[0.5, -1.5, 1.0], [-0.2, -0.2, 0.4]])
    q = quantize_hard(w, 1)
    # scales: mean|w| = 1.0 and 0.26667 (rounded to float16)
    s1 = torch.tensor(0.26666).half().float()
    expected = torch.tensor([[1.0, -1.0, 1.0], [-s1, -s1, s1]])
    assert torch.allclose(q, expected, atol=1e-7)


@pytest.mark.parametrize("bits", range(2, 9))
def test_uniform_levels_and_error(bits):
    w = torch.randn(4, 3, 3, 3)
    codes, scale = weight_codes(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int16
    if bits == 2:  # four codes, all used by a Gaussian weight
        assert sorted(codes.unique().tolist()) == [-2, -1, 0, 1]
    else:
        assert int(codes.abs().max()) <= qmax
    # scales are exactly representable in float16
    assert torch.equal(scale.half().float(), scale)
    q = dequantize(codes, scale, bits)
    assert torch.equal(q, quantize_hard(w, bits))
    # more bits, smaller error (monotone)
    if bits > 2:
        assert (quantize_hard(w, bits) - w).pow(2).sum() < (quantize_hard(w, bits - 1) - w).pow(2).sum()


def test_scale_search_beats_max_scaling_at_low_bits():
    torch.manual_seed(1)
    w = torch.randn(8, 256)
    q = quantize_hard(w, 2)
    scale_max = w.abs().amax(1, keepdim=True) / 1
    q_max = (w / scale_max).round().clamp(-1, 1) * scale_max
    assert (q - w).pow(2).sum() < (q_max - w).pow(2).sum()


def test_half_and_float():
    w = torch.randn(5, 7) * 3
    assert torch.equal(quantize_hard(w, 16), w.half().float())
    assert torch.equal(quantize_hard(w, 32), w)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_straight_through_gradient_is_identity(bits):
    w = torch.randn(3, 4, requires_grad=True)
    g = torch.randn(3, 4)
    (fake_quantize(w, bits) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_invalid_bits():
    with pytest.raises(ValueError, match="unsupported bitwidth 9"):
        quantize_hard(torch.randn(2, 2), 9)
    with pytest.raises(ValueError, match="no scale"):
        weight_scale(torch.randn(2, 2), 16)


def test_zero_channel_does_not_produce_nan():
    w = torch.zeros(2, 5)
    for b in (1, 2, 4, 8):
        assert torch.isfinite(quantize_hard(w, b)).all()


def test_stacked_uniform_quantization_equals_the_reference():
    from mixbits.quant import best_clip, quantize_int_stack

    w = torch.randn(6, 4, 3, 3)
    bits = (2, 3, 4, 5, 6, 8)
    stack = quantize_int_stack(w, bits, best_clip(w, bits))
    for i, b in enumerate(bits):
        assert torch.equal(stack[i], quantize_hard(w, b)), b


def test_chunked_clip_search_equals_the_one_shot_grid(monkeypatch):
    import mixbits.quant as q

    torch.manual_seed(0)
    w = torch.randn(37, 5, 3)
    flat = w.reshape(37, -1)
    lo = torch.tensor([-2.0, -7.0, -127.0]).view(-1, 1, 1, 1)
    hi = torch.tensor([1.0, 7.0, 127.0]).view(-1, 1, 1, 1)
    off = torch.tensor([0.5, 0.0, 0.0]).view(-1, 1, 1, 1)
    top = torch.tensor([1.5, 7.0, 127.0])
    wmax = flat.abs().amax(1)
    scales = q._to_half_exact(wmax[None, :, None] * q._CLIP_GRID[None, None, :] / top[:, None, None])  # (B, C, G)
    qq = torch.minimum(torch.maximum((flat[None, :, None] / scales[..., None] - off).round(), lo), hi) + off
    ref = q._CLIP_GRID[((qq * scales[..., None] - flat[None, :, None]) ** 2).sum(3).argmin(2)]  # (B, C)
    monkeypatch.setattr(q, "_CHUNK_ELEMENTS", 3 * 15 * 4)  # four channels per chunk
    assert torch.equal(q.best_clip(w, (2, 4, 8)), ref)


def test_fixed_bits_quantize_once_per_weight_version(monkeypatch):
    from mixbits import mixture, space as sp

    calls = []
    real = mixture.quantize_hard
    monkeypatch.setattr(mixture, "quantize_hard", lambda w, b, d=0: calls.append(b) or real(w, b, d))
    m = torch.nn.Linear(8, 4)
    space = sp.prepare_(m)
    space.fix_({"": 4})
    x = torch.randn(2, 8)
    y = m(x)
    m(x)
    assert len(calls) == 1
    with torch.no_grad():
        m._parameters["weight"].mul_(2)  # an optimiser step bumps the version
    assert not torch.equal(m(x), y) and len(calls) == 2
