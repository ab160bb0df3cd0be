"""The searches learn the right thing: a layer made clearly more sensitive gets more bits.

Two branches of the same shape (so every assignment costs the same for either) feed one head;
the output of branch ``hot`` is amplified 30x and that of ``cold`` damped 30x, so a
quantization error in ``hot`` costs ~900x more loss than the same error in ``cold``. At a
budget where the two cannot both keep many bits, the learned and black-box searches must give
``hot`` more bits than ``cold`` (decisions pinned, not floats).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixbits.budget import budget_bits
from mixbits.data import TensorLoader
from mixbits.methods import AllocationContext, allocate
from mixbits.space import PrepareConfig, prepare_


class TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hot = nn.Linear(16, 32, bias=False)
        self.cold = nn.Linear(16, 32, bias=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(30.0 * self.hot(x) + self.cold(x) / 30.0))


def _context(method_options: dict, seed: int = 0):
    torch.manual_seed(0)
    model = TwoBranch()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # the float model is right on every sample
    # the head stays in float: the decision is between the two branches only
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8), pins={"head": 8}))
    loader = TensorLoader(x, y, batch_size=64, shuffle=True, seed=seed)
    target = "6x"
    ctx = AllocationContext(model=model, space=space, loaders={"weights": loader, "held_out": loader, "full": loader},
                            budget_bits=budget_bits(target, space.cost), target=target, epochs=2, seed=seed,
                            device=torch.device("cpu"), options=method_options, post_training=True)
    return ctx


@pytest.mark.parametrize("method, options", [
    ("hardsearch", {"steps": 40, "batch": 64, "images": 256}),
    ("hardsearch", {"steps": 40, "batch": 64, "images": 256, "select": False}),
    ("evolution", {"evaluations": 30, "images": 256}),
    ("hessian", {}),
    ("fracbits", {"steps": 40, "batch": 64, "images": 256}),
    ("fracbits", {"steps": 40, "batch": 64, "images": 256, "init": "hessian", "select": False}),
    ("pairwise", {"images": 256}),
    ("pairwise", {"images": 256, "interactions": False}),
    ("exhaustive", {"images": 256}),
    ("refine", {"images": 256, "start": "uniform"}),
    ("probe", {"images": 256, "methods": ["hessian", "pairwise"], "method_options": {"pairwise": {"images": 256}}}),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_sensitive_layer_gets_more_bits(method, options, seed):
    ctx = _context(options, seed)
    bits = allocate(method, ctx).bits
    size = ctx.space.cost.quantized_bits(bits)
    assert size <= ctx.budget_bits
    assert bits["hot"] > bits["cold"], bits
