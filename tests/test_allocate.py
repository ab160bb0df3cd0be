"""mixbits.allocate: the default path in Python, any registered method, under a target."""

from __future__ import annotations

import pytest
import torch

import mixbits
from mixbits.data import TensorLoader
from mixbits.methods import METHODS
from mixbits.space import prepare_

from ._method_helpers import tiny_model


def _loaders():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    return TensorLoader(x, y, batch_size=16, shuffle=True, seed=2), TensorLoader(x, y, batch_size=16, seed=3)


def test_the_default_method_is_what_a_bare_call_runs():
    assert mixbits.DEFAULT_METHOD in METHODS
    model = tiny_model()
    space = prepare_(model)
    train, held = _loaders()
    bare = mixbits.allocate(model, space, train, held, target="16x")
    named = mixbits.allocate(model, space, train, held, target="16x", method=mixbits.DEFAULT_METHOD)
    assert bare.bits == named.bits and bare.info.keys() == named.info.keys()
    assert space.cost.quantized_bits(bare.bits) <= mixbits.budget_bits("16x", space.cost)
    assert bare.weight_epochs == 0.0


@pytest.mark.parametrize("method", ["hessian", "random", "uniform", "search"])
def test_every_method_meets_the_budget_and_repeats_for_a_seed(method):
    runs = []
    for _ in range(2):
        model = tiny_model()
        space = prepare_(model)
        train, held = _loaders()
        options = {"bits": 2} if method == "uniform" else None
        runs.append(mixbits.allocate(model, space, train, held, target="8x", method=method, seed=5, epochs=2,
                                     options=options))
        assert set(runs[-1].bits) == set(space.names)
        assert space.cost.quantized_bits(runs[-1].bits) <= mixbits.budget_bits("8x", space.cost)
    assert runs[0].bits == runs[1].bits


def test_bad_method_and_unreachable_target_fail_before_any_work():
    model = tiny_model()
    space = prepare_(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held = _loaders()
    with pytest.raises(ValueError, match="hessian"):  # the message lists the known methods
        mixbits.allocate(model, space, train, held, target="16x", method="hesian")
    with pytest.raises(ValueError, match="unreachable"):
        mixbits.allocate(model, space, train, held, target="40x", method="search")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_post_training_runs_its_own_default_and_changes_no_weight():
    model = tiny_model()
    space = prepare_(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held = _loaders()
    result = mixbits.allocate(model, space, train, held, target="16x", post_training=True, seed=0)
    assert space.cost.quantized_bits(result.bits) <= mixbits.budget_bits("16x", space.cost)
    assert result.weight_epochs == 0.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
