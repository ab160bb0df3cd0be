"""The empirical-Fisher trace (the default curvature estimate of ``hessian``) against hand computation."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbits.methods import allocate
from mixbits.sensitivity import PerExampleError, fisher_traces, sensitivity
from mixbits.settings import check_method_options
from mixbits.space import prepare_

from ._method_helpers import tiny_context


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _by_hand(model, tensors, batches, loss_fn=F.cross_entropy):
    """Mean over every example of each tensor's squared gradient of that example's loss (a batch of one)."""
    sums, n = [0.0] * len(tensors), 0
    for x, y in batches:
        for i in range(len(y)):
            grads = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), tensors)
            sums = [s + float(g.pow(2).sum()) for s, g in zip(sums, grads)]
            n += 1
    return [s / n for s in sums]


def test_fisher_trace_is_the_mean_squared_per_example_gradient():
    model = _net()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(3)]
    traces = fisher_traces(model, {"c": model[0].weight, "l": model[3].weight}, batches, batches=2)
    assert [traces["c"], traces["l"]] == pytest.approx(_by_hand(model, [model[0].weight, model[3].weight],
                                                               batches[:2]), rel=1e-5)
    # per output channel: one value per channel, summing to the tensor's trace
    per = fisher_traces(model, {"c": model[0].weight}, batches, batches=2, per_channel={"c": 0})["c"]
    assert per.shape == (4,) and float(per.sum()) == pytest.approx(traces["c"], rel=1e-6)


class _ItemNet(nn.Module):
    """A forward that reads a Python number from a tensor: torch.func cannot vmap it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h * (1.0 + 0.0 * h.abs().max().item()))


def test_a_model_torch_func_cannot_transform_gets_one_backward_per_example(caplog):
    model = _ItemNet()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g))]
    with caplog.at_level(logging.INFO, logger="mixbits.sensitivity"):
        traces = fisher_traces(model, {"a": model.a.weight, "b": model.b.weight}, batches, batches=1)
    assert "one backward per example" in caplog.text
    assert [traces["a"], traces["b"]] == pytest.approx(_by_hand(model, [model.a.weight, model.b.weight], batches),
                                                      rel=1e-5)


class _Tied(nn.Module):
    """Embedding and output head share one (V, d) weight; inputs come as a dict."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(9, 4)
        self.head = nn.Linear(4, 9, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, batch):
        return self.head(torch.tanh(self.emb(batch["tokens"]).mean(1)))


def test_a_tied_weight_gets_its_whole_gradient_under_both_names():
    model = _Tied()
    g = torch.Generator().manual_seed(3)
    x, y = {"tokens": torch.randint(0, 9, (5, 3), generator=g)}, torch.randint(0, 9, (5,), generator=g)
    traces = fisher_traces(model, {"emb": model.emb.weight, "head": model.head.weight}, [(x, y)], batches=1)
    sums = 0.0
    for i in range(5):
        (grad,) = torch.autograd.grad(F.cross_entropy(model({"tokens": x["tokens"][i:i + 1]}), y[i:i + 1]),
                                      [model.emb.weight])
        sums += float(grad.pow(2).sum()) / 5
    assert traces["emb"] == traces["head"] == pytest.approx(sums, rel=1e-5)


def test_targets_without_the_inputs_example_dimension_are_refused():
    model = nn.Sequential(nn.Embedding(11, 4), nn.Flatten(0, 1), nn.Linear(4, 11))
    batches = [(torch.randint(0, 11, (4, 6)), torch.randint(0, 11, (24,)))]  # per-token targets, flattened
    with pytest.raises(PerExampleError, match="got 4 input and 24 target rows"):
        fisher_traces(model, {"w": model[2].weight}, batches, batches=1)


def test_the_fisher_estimate_draws_no_random_probes():
    """Only the examples decide it: another seed gives the same traces; Hutchinson's probes differ by seed."""
    model = _net()
    space = prepare_(model)
    g = torch.Generator().manual_seed(4)
    data = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))]
    assert sensitivity(model, space, data, batches=1, seed=0)[1] == sensitivity(model, space, data, batches=1,
                                                                                  seed=1)[1]
    h0 = sensitivity(model, space, data, batches=1, samples=2, seed=0, estimator="hutchinson")[1]
    h1 = sensitivity(model, space, data, batches=1, samples=2, seed=1, estimator="hutchinson")[1]
    assert h0 != h1


def test_estimator_option_is_checked():
    ctx, _ = tiny_context("16x", options={"estimator": "exact"})
    with pytest.raises(ValueError, match="estimator must be 'fisher' or 'hutchinson'"):
        allocate("hessian", ctx)
    # before any work, from the settings check too
    with pytest.raises(ValueError, match="estimator = 'exact' for method 'hessian'.*choose one of 'fisher', "
                                         "'hutchinson'"):
        check_method_options({"estimator": "exact"}, ["hessian"], "mixbits.toml")
    check_method_options({"estimator": "hutchinson"}, ["hessian"], "mixbits.toml")


def test_both_estimators_allocate_within_the_budget():
    traces = {}
    for estimator in ("fisher", "hutchinson"):
        ctx, space = tiny_context("16x", options={"estimator": estimator})
        res = allocate("hessian", ctx)
        assert space.cost.quantized_bits(res.bits) <= ctx.budget_bits
        traces[estimator] = res.info["traces"]
    # a sum of squares is never negative; on this untrained net Hutchinson's estimate of the last layer's
    # (indefinite) Hessian is, and that layer would count as insensitive
    assert all(t > 0 for t in traces["fisher"].values())
    assert traces["hutchinson"]["5"] < 0


def test_a_module_registered_twice_keeps_its_parameters():
    """``self.again = self.shared`` and a tied weight: the per-example transform leaves every parameter the
    module's own object (a transformed tensor left in place broke ``model.to`` afterwards), and its traces
    equal one backward per example."""
    from mixbits.sensitivity import _per_example_loop

    from .test_space import Zoo

    model = Zoo().eval()
    space = prepare_(model)
    before = dict(model.named_parameters(remove_duplicate=False))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 2, 16, generator=g), torch.randint(0, 5, (6,), generator=g)
    weights = {layer.name: space.float_weight(layer.name) for layer in space.layers}
    traces = fisher_traces(model, weights, [(x, y)], batches=1)
    assert all(before[n] is p and isinstance(p, nn.Parameter)
               for n, p in model.named_parameters(remove_duplicate=False))
    model.to("cpu")
    loop = _per_example_loop(model, list(weights.values()), x, y, F.cross_entropy, [None] * len(weights))
    assert [traces[n] for n in weights] == pytest.approx([float(s) / 6 for s in loop], rel=1e-5)
