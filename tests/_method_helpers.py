"""A tiny prepared model and its allocation context, shared by the method tests."""

from __future__ import annotations

import torch
from torch import nn

from mixbits.budget import budget_bits
from mixbits.data import TensorLoader
from mixbits.methods import AllocationContext
from mixbits.space import PrepareConfig, prepare_


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def tiny_context(target: str = "16x", *, seed: int = 0, options=None, pins=None, model=None, granularity="layer"):
    """(context, space) on random 6x6 images with 4 classes; no test split (methods must not use it)."""
    model = model or tiny_model()
    space = prepare_(model, PrepareConfig(pins=pins or {}, granularity=granularity))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    loader = TensorLoader(x, y, batch_size=16, shuffle=True)
    ctx = AllocationContext(model=model, space=space, loaders={"weights": loader, "held_out": loader},
                            budget_bits=budget_bits(target, space.cost), target=target, epochs=2, seed=seed,
                            device=torch.device("cpu"), options=options or {})
    return ctx, space

