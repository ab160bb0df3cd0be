import numpy as np
import pytest
import torch
from torch import nn

from mixbits.quant import quantize_hard
from mixbits.space import PrepareConfig, float_weight, prepare_, unprepare_


class Zoo(nn.Module):
    """Conv1d, depthwise and grouped Conv2d, a Linear used twice and a tied weight."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.gc = nn.Conv2d(8, 16, 1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.shared = nn.Linear(16, 16)
        self.again = self.shared  # the same module under a second name
        self.head = nn.Linear(16, 16, bias=False)
        self.tied = nn.Linear(16, 16, bias=True)
        self.tied.weight = self.head.weight  # a weight tied between two modules
        self.out = nn.Linear(16, 5)

    def forward(self, x):  # x: (B, 2, 16)
        h = self.c1(x)  # (B, 8, 16)
        h = h.view(h.shape[0], 8, 4, 4)
        h = torch.relu(self.bn(self.gc(self.dw(h))))  # (B, 16, 4, 4)
        h = h.mean((2, 3))  # (B, 16)
        h = torch.relu(self.shared(h))
        h = torch.relu(self.again(h))
        h = torch.relu(self.tied(self.head(h)))
        return self.out(h)


def test_zoo_layers_are_found_once_each():
    m = Zoo()
    space = prepare_(m)
    assert space.names == ["c1", "dw", "gc", "shared", "head", "out"]
    info = {layer.name: layer for layer in space.layers}
    assert info["shared"].aliases == ("again",)
    assert info["head"].aliases == ("tied",)
    assert info["dw"].shape == (8, 1, 3, 3)
    assert info["gc"].shape == (16, 2, 1, 1)
    # the tied weight is counted once; the tied module's own bias is a float extra
    n = 8 * 2 * 3 + 8 * 9 + 16 * 2 + 256 + 256 + 80
    assert space.cost.num_quantized_weights == n
    assert [f[0] for f in space.float_layers] == ["bn"]


def test_state_dict_keys_unchanged_and_float_checkpoint_loads():
    m = Zoo()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    prepare_(m)
    assert list(m.state_dict()) == list(sd)
    m.load_state_dict(sd)  # strict: float checkpoints load unchanged
    assert torch.equal(float_weight(m.c1), sd["c1.weight"])


def test_fixed_bits_compute_with_quantized_weights():
    m = Zoo().eval()
    x = torch.randn(3, 2, 16)
    space = prepare_(m)
    bits = {"c1": 1, "dw": 2, "gc": 4, "shared": 8, "head": 16, "out": 32}
    space.fix_(bits)
    assert torch.equal(m.c1.weight, quantize_hard(float_weight(m.c1), 1))
    assert torch.equal(m.tied.weight, m.head.weight)
    y = m(x)
    ref = Zoo().eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for name, b in bits.items():
            getattr(ref, name).weight.copy_(quantize_hard(getattr(ref, name).weight, b))
    assert torch.allclose(y, ref(x), atol=1e-6)


def test_all_float_equals_original_and_unprepare_restores():
    m = Zoo().eval()
    x = torch.randn(3, 2, 16)
    y0 = m(x)
    space = prepare_(m)
    space.fix_({n: 32 for n in space.names})
    assert torch.equal(m(x), y0)
    unprepare_(m)
    assert type(m.c1) is nn.Conv1d
    assert torch.equal(m(x), y0)
    prepare_(m)  # can be prepared again


def test_mixed_forward_gives_logit_gradients_for_every_layer():
    m = Zoo()
    space = prepare_(m)
    m(torch.randn(4, 2, 16)).pow(2).mean().backward()
    for d in space.decision_list:
        assert d.logits.grad is not None and torch.isfinite(d.logits.grad).all()
        assert d.logits.grad.abs().sum() > 0


def test_include_exclude_and_pins():
    m = Zoo()
    space = prepare_(m, PrepareConfig(exclude=("c1",), pins={"out": 8, "g*": 4}, candidates=(1, 2)))
    info = {layer.name: layer for layer in space.layers}
    assert "c1" not in info
    assert ("c1", "Conv1d", 56, "excluded") in space.float_layers
    assert info["out"].pinned and info["out"].candidates == (8,)
    assert info["gc"].candidates == (4,)
    assert info["dw"].candidates == (1, 2)
    assert space.decision("out").fixed_bits == 8


@pytest.mark.parametrize("kw,match", [
    ({"pins": {"nope": 8}}, "matches no quantizable layer"),
    ({"exclude": ("missing*",)}, "matches no quantizable layer"),
    ({"candidates": (3, 9)}, "unsupported bitwidth 9"),
    ({"candidates": ()}, "candidates is empty"),
    ({"pins": {"out": 7.5}}, "unsupported bitwidth 7.5"),
])
def test_bad_prepare_config(kw, match):
    with pytest.raises(ValueError, match=match):
        prepare_(Zoo(), PrepareConfig(**kw))


def test_nothing_to_quantize_and_double_prepare():
    with pytest.raises(ValueError, match="nothing to quantize"):
        prepare_(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    m = Zoo()
    prepare_(m)
    with pytest.raises(ValueError, match="already prepared"):
        prepare_(m)


def test_lazy_layer_must_be_initialised():
    with pytest.raises(ValueError, match="lazy"):
        prepare_(nn.Sequential(nn.LazyLinear(4)))


def test_projection_meets_budget_exactly():
    space = prepare_(Zoo())
    for d in space.decision_list:
        d.logits.data.normal_()
    lo, hi = space.cost.min_quantized_bits(), space.cost.max_quantized_bits()
    for frac in (0.01, 0.3, 0.9):
        budget = int(lo + frac * (hi - lo))
        for t in (1.0, 0.1):
            space.set_temperature_(t)
            space.project_(budget)
            assert space.expected_quantized_bits().item() == pytest.approx(budget, rel=1e-6)


def test_price_solve_never_overspends_and_stops_at_its_limits():
    from mixbits.price import size_and_slope, solve_price

    rng = np.random.default_rng(0)
    a = rng.normal(0, 4, size=(300, 6))  # logits of 300 units
    c = np.sort(rng.uniform(0.0005, 0.02, size=(300, 6)), axis=1)  # sizes in budget units, ascending
    nu = solve_price(a, c)
    size, slope = size_and_slope(a, c, nu)
    assert size <= 1.0 and size == pytest.approx(1.0, abs=1e-9) and slope < 0
    # a budget every assignment fits, and one none fits: the price stops at its limits
    assert solve_price(a, c * 1e-3) == -1e6
    assert solve_price(a, c * 1e3) == 1e6


@pytest.mark.parametrize("cands", [(1, 2, 4, 8, 16, 32), (1, 3, 5), (2, 4), (16, 32), (1,), (1, 32)])
def test_mixed_weight_equals_probability_weighted_quantizers(cands):
    m = nn.Conv2d(4, 6, 3)
    space = prepare_(m, PrepareConfig(candidates=cands))
    d = space.decision_list[0]
    if d.fixed_bits is not None:
        assert torch.equal(m.weight, quantize_hard(float_weight(m), cands[0]))
        return
    d.logits.data.normal_()
    w = float_weight(m)
    p = d.probs().detach()
    ref = sum(pk * quantize_hard(w, b) for pk, b in zip(p, cands))
    assert torch.allclose(m.weight, ref, atol=1e-6)
