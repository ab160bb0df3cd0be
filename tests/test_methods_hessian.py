import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbits.methods import allocate
from mixbits.sensitivity import hessian_sensitivity, hutchinson_traces
from mixbits.quant import quantize_hard

from ._method_helpers import tiny_context


def test_hutchinson_matches_the_exact_hessian_trace():
    # Reference equivalence: a linear softmax classifier, whose Hessian we form exactly.
    torch.manual_seed(0)
    lin = nn.Linear(3, 4)
    x, y = torch.randn(32, 3), torch.randint(0, 4, (32,))
    w = lin.weight

    def loss_of(weight):
        return F.cross_entropy(F.linear(x, weight, lin.bias), y)

    exact = torch.autograd.functional.hessian(loss_of, w.detach().clone())  # (4, 3, 4, 3)
    exact_trace = float(exact.reshape(12, 12).diagonal().sum())
    g = torch.Generator().manual_seed(0)
    est = hutchinson_traces(lin, {"w": w}, [(x, y)] * 2, batches=2, samples=300, generator=g)["w"]
    assert exact_trace > 0
    # 600 Rademacher probes: the estimate's relative std is about 1.5% here
    assert est == pytest.approx(exact_trace, rel=0.06)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # Loss sum_i c_i w_i^2 / 2 has Hessian diag(c): v^T H v = sum c_i for every Rademacher v.
    w = nn.Parameter(torch.randn(5))
    c = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    model = lambda x: (c * w * w).sum() / 2 + 0 * x.sum()  # noqa: E731
    est = hutchinson_traces(model, {"w": w}, [(torch.zeros(1), None)], batches=1, samples=3,
                            loss_fn=lambda out, _: out)["w"]
    assert est == pytest.approx(15.0, abs=1e-5)


@pytest.mark.parametrize("target", ["6x", "16x", "28x"])
def test_hessian_fits_the_budget_and_minimises_the_sensitivity(target):
    ctx, space = tiny_context(target)
    res = allocate("hessian", ctx)
    assert space.cost.quantized_bits(res.bits) <= ctx.budget_bits
    # the float weights are left as they were: the space is back in its searchable state
    assert space.fixed_bits() is None
    # exhaustive check that no assignment within the budget has a smaller summed sensitivity
    import itertools

    omega = res.info["sensitivity"]
    costs = space.cost.cost_table()
    names = list(costs)
    best = min(sum(omega[n][str(b)] for n, b in zip(names, combo))
               for combo in itertools.product(*[sorted(costs[n]) for n in names])
               if sum(costs[n][b] for n, b in zip(names, combo)) <= ctx.budget_bits)
    assert res.info["objective"] == pytest.approx(best, rel=1e-6, abs=1e-12)


def test_hessian_sensitivity_is_trace_per_weight_times_error():
    ctx, space = tiny_context("16x")
    weights = {layer.name: ctx.model.get_submodule(layer.name)._parameters["weight"] for layer in space.layers}
    omega = hessian_sensitivity(space, weights, {n: 2.0 for n in weights})
    w = weights["3"].detach()
    assert omega["3"][2] == pytest.approx(2.0 / w.numel() * float((quantize_hard(w, 2) - w).pow(2).sum()))
    assert omega["3"][32] == 0.0


def test_hessian_rejects_the_test_split():
    ctx, _ = tiny_context("16x", options={"split": "test"})
    with pytest.raises(ValueError, match="never the test split"):
        allocate("hessian", ctx)


def test_per_channel_traces_add_up_to_the_tensor_trace():
    """The same probes, reduced per output channel, sum to the whole tensor's estimate."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 4)
    x, y = torch.randn(16, 3), torch.randint(0, 4, (16,))
    whole = hutchinson_traces(lin, {"w": lin.weight}, [(x, y)], batches=1, samples=5,
                              generator=torch.Generator().manual_seed(3))["w"]
    per = hutchinson_traces(lin, {"w": lin.weight}, [(x, y)], batches=1, samples=5,
                            generator=torch.Generator().manual_seed(3), per_channel={"w": 0})["w"]
    assert per.shape == (4,)
    assert float(per.sum()) == pytest.approx(whole, rel=1e-6)  # float32 sums in another order


def test_hessian_allocates_per_structure_within_the_budget():
    ctx, space = tiny_context("16x", granularity="group:4")
    assert [layer.num_groups for layer in space.layers] == [2, 4, 1]  # Linear(16, 4): one group of 4 channels
    result = allocate("hessian", ctx)
    assert [type(result.bits[n]) for n in space.names] == [tuple, tuple, int]
    assert [len(result.bits[n]) for n in space.names[:2]] == [2, 4]
    assert space.cost.quantized_bits(result.bits) <= ctx.budget_bits
    assert result.info["units"] == space.cost.num_units == 7 and result.info["solve_seconds"] >= 0
    # one sensitivity row per structure, per-channel traces for the layers with structures
    assert set(result.info["sensitivity"]) == set(space.cost.cost_table())
    assert isinstance(result.info["traces"]["3"], float)  # by default a structure takes its layer's trace
    for per in result.info["sensitivity"].values():  # more bits never cost more sensitivity
        vals = [per[str(b)] for b in sorted(int(k) for k in per)]
        assert vals == sorted(vals, reverse=True)
    # structures of one layer then differ only by their quantization errors: same ratio of omega to error
    omega = result.info["sensitivity"]
    w = space.float_weight("3").detach()
    err = [(quantize_hard(w, 1)[4 * g:4 * g + 4] - w[4 * g:4 * g + 4]).pow(2).sum() for g in range(4)]
    ratios = [omega[f"3#{g}"]["1"] / float(err[g]) for g in range(4)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-6)


def test_structure_traces_option_takes_each_structures_own_trace():
    ctx, space = tiny_context("16x", granularity="group:4", options={"structure_traces": "structure"})
    result = allocate("hessian", ctx)
    assert len(result.info["traces"]["3"]) == 16 and isinstance(result.info["traces"]["5"], float)
    assert space.cost.quantized_bits(result.bits) <= ctx.budget_bits
    ctx.options = {"structure_traces": "channel"}
    with pytest.raises(ValueError, match="structure_traces must be 'structure' or 'layer'"):
        allocate("hessian", ctx)


@pytest.mark.parametrize("method", ["hessian", "random", "uniform", "search"])
def test_every_method_allocates_with_frozen_weights(method):
    from ._method_helpers import tiny_model

    model = tiny_model()
    for p in model.parameters():
        p.requires_grad_(False)
    model[5].requires_grad_(True)  # only the head trains, as on a frozen backbone
    options = {}  # uniform: the largest bits that fit
    ctx, space = tiny_context("16x", model=model, options=options)
    alloc = allocate(method, ctx)
    assert space.cost.quantized_bits(alloc.bits) <= ctx.budget_bits
    assert [p.requires_grad for p in model.parameters()] == [False, False, False, False, True, True]


def test_hessian_takes_any_loss():
    """A regression loss on the same model: the traces follow the loss given, and the bits fit the budget."""
    ctx, space = tiny_context("16x")
    calls = []

    def loss_fn(out, y):
        calls.append(out.shape)
        return (out - F.one_hot(y, 4).float()).pow(2).mean()

    alloc = allocate("hessian", dataclasses.replace(ctx, loss_fn=loss_fn))
    assert calls and calls[0] == (1, 4)  # the Fisher trace takes each example's loss alone
    assert space.cost.quantized_bits(alloc.bits) <= ctx.budget_bits
    ce = allocate("hessian", tiny_context("16x")[0])
    assert alloc.info["traces"] != ce.info["traces"]
