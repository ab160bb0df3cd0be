import pytest
import torch
from torch import nn

from mixbits.cost import weight_size_bits
from mixbits.space import prepare_


def test_weight_size_bits():
    assert weight_size_bits(100, 4, 1) == 100 + 4 * 16
    assert weight_size_bits(100, 4, 8) == 800 + 64
    assert weight_size_bits(100, 4, 16) == 1600
    assert weight_size_bits(100, 4, 32) == 3200


def _net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def test_sizes_pinned_numbers():
    space = prepare_(_net())
    cost = space.cost
    # conv 8*27=216 weights, linear 10*128=1280; float rest: conv bias 8, BN 8+8+8+8, linear bias 10
    assert cost.num_quantized_weights == 1496
    assert cost.float_rest_bits == (8 + 32 + 10) * 32
    bits = {"0": 1, "3": 4}
    assert cost.quantized_bits(bits) == (216 + 8 * 16) + (1280 * 4 + 10 * 16)
    assert cost.model_bits(bits) == cost.quantized_bits(bits) + 50 * 32
    assert cost.weight_compression(bits) == pytest.approx(1496 * 32 / cost.quantized_bits(bits))
    assert cost.model_compression(bits) == pytest.approx((1496 + 50) * 32 / cost.model_bits(bits))
    assert cost.average_bits(bits) == pytest.approx(cost.quantized_bits(bits) / 1496)


def test_float_model_size_equals_all_parameters_and_buffers():
    net = _net()
    n_float = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers() if b.is_floating_point())
    space = prepare_(net)
    assert space.cost.float_model_bits() == n_float * 32
    assert space.cost.model_bits({"0": 32, "3": 32}) == n_float * 32


def test_expected_size_matches_exact_at_one_hot_and_is_differentiable():
    space = prepare_(_net())
    for d, idx in zip(space.decision_list, (0, 2)):
        with torch.no_grad():
            d.logits.zero_()
            d.logits[idx] = 50.0
    exp = space.expected_quantized_bits()
    assert exp.item() == pytest.approx(space.cost.quantized_bits({"0": 1, "3": 4}), rel=1e-5)
    for d in space.decision_list:
        d.logits.data.zero_()
    exp = space.expected_quantized_bits()
    exp.backward()
    assert all(d.logits.grad is not None and d.logits.grad.abs().sum() > 0 for d in space.decision_list)


def test_assignment_must_name_every_layer():
    space = prepare_(_net())
    with pytest.raises(ValueError, match="missing"):
        space.cost.quantized_bits({"0": 1})
