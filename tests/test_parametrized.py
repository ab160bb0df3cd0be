"""weight_norm / spectral_norm weights are folded into plain parameters, quantized, exported and loaded."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbits import export_model, load
from mixbits.parametrized import fold_parametrizations_
from mixbits.space import prepare_


class Vocoder(nn.Module):
    def __init__(self, old_style: bool = True):
        super().__init__()
        self.c1 = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 6, 3))
        self.c2 = nn.utils.parametrizations.spectral_norm(nn.Conv1d(6, 4, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.c3 = nn.utils.weight_norm(nn.Conv1d(4, 3, 1)) if old_style else nn.Conv1d(4, 3, 1)

    def forward(self, x):  # (N, 2, T) -> (N, 3)
        return self.c3(F.relu(self.c2(F.relu(self.c1(x))))).mean(-1)


def test_fold_keeps_the_forward_and_gives_plain_keys():
    torch.manual_seed(0)
    m = Vocoder().eval()
    x = torch.randn(4, 2, 12)
    ref = m(x)
    folded = fold_parametrizations_(m)
    assert folded == ["c1.weight", "c2.weight", "c3.weight"]
    assert torch.equal(m(x), ref)
    assert {"c1.weight", "c2.weight", "c3.weight"} <= set(m.state_dict())
    assert not any("parametrizations" in k or k.endswith(("_g", "_v", "_orig")) for k in m.state_dict())


def test_parametrized_convs_are_quantized_and_load_into_a_fresh_parametrized_model(tmp_path):
    torch.manual_seed(0)
    m = Vocoder()
    space = prepare_(m)
    assert space.names == ["c1", "c2", "c3"]
    assert space.cost.num_quantized_weights == 2 * 6 * 3 + 6 * 4 * 3 + 4 * 3
    space.fix_({"c1": 4, "c2": 2, "c3": 8})
    x = torch.randn(4, 2, 12)
    out = m.eval()(x)
    export_model(m, space, tmp_path / "v.mbits")
    loaded = load(tmp_path / "v.mbits", Vocoder())  # still parametrized: folded by load
    assert torch.equal(loaded(x), out)


def test_frozen_parametrized_weight_stays_frozen():
    m = Vocoder(old_style=False)
    for p in m.c1.parameters():
        p.requires_grad_(False)
    fold_parametrizations_(m)
    assert isinstance(m.c1._parameters["weight"], nn.Parameter) and not m.c1.weight.requires_grad
    assert m.c2.weight.requires_grad
