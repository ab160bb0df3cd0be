"""Decision's hard forward: the weight of ONE candidate, exactly the fixed forward's, with a gradient to the logits."""

from __future__ import annotations

import torch
from torch import nn

from mixbits.space import PrepareConfig, prepare_


def _prepared(granularity: str = "layer"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, prepare_(model, PrepareConfig(granularity=granularity))


def test_hard_forward_equals_the_fixed_forward_at_the_argmax_and_reaches_the_logits():
    model, space = _prepared()
    x = torch.randn(5, 6)
    with torch.no_grad():
        for i, d in enumerate(space.decision_list):
            d.logits.copy_(torch.arange(len(d.candidates), dtype=torch.float).roll(i + 2))
    bits = space.argmax_bits()
    for d in space.decision_list:
        d.hard = True
    out = model(x)
    out.sum().backward()
    assert all(d.logits.grad is not None and bool(d.logits.grad.abs().sum() > 0) for d in space.decision_list)
    for d in space.decision_list:
        d.hard = False
    space.fix_(bits)
    with torch.no_grad():
        assert torch.equal(out.detach(), model(x))


def test_hard_forward_with_structures_equals_the_fixed_forward():
    model, space = _prepared("group:4")
    x = torch.randn(5, 6)
    with torch.no_grad():
        for d in space.decision_list:
            d.logits.copy_(torch.randn(d.logits.shape, generator=torch.Generator().manual_seed(3)))
            d.hard = True
        out = model(x)
    bits = space.argmax_bits()
    for d in space.decision_list:
        d.hard = False
    space.fix_(bits)
    with torch.no_grad():
        assert torch.allclose(out, model(x), rtol=0, atol=1e-6)


def test_gumbel_hard_forward_draws_different_candidates():
    model, space = _prepared()
    space.set_gumbel_(True)
    d = space.decision_list[0]
    d.hard = True
    draws = {int(d.sample().argmax()) for _ in range(50)}
    assert len(draws) > 1  # uniform logits: the Gumbel-max draw varies
