import pytest
import torch

from mixbits.methods import allocate
from mixbits.methods.hessian import layer_sensitivity
from mixbits.search import init_logits_from_hessian_

from ._method_helpers import tiny_context


def test_hessian_init_orders_logits_like_the_sensitivity():
    ctx, space = tiny_context("16x")
    omega, _ = layer_sensitivity(ctx, {})
    init_logits_from_hessian_(ctx.model, space, ctx.loaders["held_out"], 10.0)
    for layer, d in space.items():
        logits = d.logits.detach()
        assert float(logits.max()) <= 0.0 and float(logits.min()) >= -10.0
        if len(set(omega[layer.name].values())) < len(layer.candidates):
            continue  # a layer whose trace estimate is 0 is indifferent
        # fewer bits, more quantization error, more negative logit
        order = sorted(layer.candidates, key=lambda b: omega[layer.name][b])
        assert [layer.candidates[i] for i in torch.argsort(-logits).tolist()] == order
    assert min(float(d.logits.min()) for d in space.decision_list) == pytest.approx(-10.0)


@pytest.mark.parametrize("init", ["uniform", "hessian"])
def test_search_method_with_each_init_fits_the_budget(init):
    ctx, space = tiny_context("16x", options={"init": init})
    result = allocate("search", ctx)
    assert space.cost.quantized_bits(result.bits) <= ctx.budget_bits
    assert result.info["init"] == init


def test_unknown_init_is_an_error():
    ctx, _ = tiny_context("16x", options={"init": "magic"})
    with pytest.raises(ValueError, match="unknown init 'magic'; known: hessian, uniform"):
        allocate("search", ctx)
