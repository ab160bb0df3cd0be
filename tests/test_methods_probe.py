"""``probe``: candidates of several methods, each fine-tuned briefly, the best by held-out loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbits.budget import budget_bits
from mixbits.data import TensorLoader
from mixbits.methods import AllocationContext, allocate
from mixbits.methods.probe import probe_steps
from mixbits.space import PrepareConfig, prepare_
from mixbits.train import TrainConfig, fit


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 24)
        self.bn = nn.BatchNorm1d(24)
        self.b = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.bn(self.a(x))))


def _context(options: dict, *, post_training: bool = False, seed: int = 0):
    torch.manual_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(320, 12, generator=g)
    y = (x[:, :3].argmax(1)).long()
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8)))
    train = TensorLoader(x[:256], y[:256], batch_size=32, shuffle=True, seed=seed)
    held = TensorLoader(x[256:], y[256:], batch_size=32)
    ctx = AllocationContext(model=model, space=space, loaders={"weights": train, "full": train, "held_out": held},
                            budget_bits=budget_bits("12x", space.cost), target="12x", epochs=1, seed=seed,
                            device=torch.device("cpu"), options=options, post_training=post_training)
    return ctx, x, y


def test_default_steps_are_a_quarter_epoch_within_bounds():
    assert probe_steps(range(400)) == 64
    assert probe_steps(range(100)) == 25
    assert probe_steps(range(8)) == 8
    assert probe_steps(iter(range(3))) == 32  # no len


def test_it_returns_the_candidate_with_the_lowest_loss_after_the_probe():
    ctx, _, _ = _context({"methods": ["uniform", "hessian", "random"], "images": 64, "steps": 4})
    result = allocate("probe", ctx)
    cands = result.info["candidates"]
    assert result.info["steps"] == 4
    assert sum(len(c["methods"]) for c in cands) == 3
    best = min(cands, key=lambda c: c["held_out_loss"])
    assert result.bits == best["bits"]
    assert result.info["chosen"] == best["methods"]
    assert ctx.space.cost.quantized_bits(result.bits) <= ctx.budget_bits


def test_the_probe_fine_tunes_and_its_loss_is_reproduced_by_hand():
    ctx, x, y = _context({"methods": ["uniform", "hessian"], "images": 64, "steps": 4})
    float_state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    loader_state = ctx.loaders["weights"].state_dict()
    result = allocate("probe", ctx)
    first = result.info["candidates"][0]
    assert first["methods"] == ["uniform"] and len(result.info["candidates"]) == 2
    probed, uniform_bits = first["held_out_loss"], first["bits"]
    # the weights and the loader are as they were
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, float_state[k]), k
    assert torch.equal(ctx.loaders["weights"].state_dict()["generator"], loader_state["generator"])
    # by hand: the same four batches, the same recipe, BatchNorm re-estimated on them, loss on the held-out images
    batches = [b for _, b in zip(range(4), ctx.loaders["weights"])]
    ctx.space.fix_(uniform_bits)
    torch.manual_seed(ctx.seed)
    fit(ctx.model, batches, TrainConfig(epochs=1, lr=0.01), desc="probe")
    from mixbits.train import recalibrate_bn_
    recalibrate_bn_(ctx.model, batches, batches=4)
    ctx.model.eval()
    with torch.no_grad():
        by_hand = float(F.cross_entropy(ctx.model(x[256:]), y[256:]))
        ctx.model.load_state_dict(float_state)
        recalibrate_bn_(ctx.model, [(x[256:], None)], batches=1)
        ctx.model.eval()
        unprobed = float(F.cross_entropy(ctx.model(x[256:]), y[256:]))
    assert probed == pytest.approx(by_hand, rel=1e-5)
    assert abs(probed - unprobed) > 1e-3  # the probe did train


def test_post_training_ranks_on_the_float_weights_without_training():
    ctx, _, _ = _context({"methods": ["uniform", "hessian"], "images": 64, "steps": 4}, post_training=True)
    float_state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    result = allocate("probe", ctx)
    assert result.info["steps"] == 0
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, float_state[k]), k


def test_post_training_refines_the_winner_and_never_does_worse():
    options = {"methods": ["uniform", "hessian"], "images": 64}
    ctx, _, _ = _context(options, post_training=True)
    result = allocate("probe", ctx)
    ranked = min(result.info["candidates"], key=lambda c: c["held_out_loss"])
    balls = result.info["refined"]["balls"]
    assert balls[0]["bits"] == ctx.space.cost.to_units(ranked["bits"])
    assert balls[0]["loss"] == pytest.approx(ranked["held_out_loss"], rel=1e-5)  # the same score, two paths
    assert balls[-1]["bits"] == ctx.space.cost.to_units(result.bits)
    assert balls[-1]["loss"] <= balls[0]["loss"]
    assert ctx.space.cost.quantized_bits(result.bits) <= ctx.budget_bits
    # off: the ranked winner itself
    ctx, _, _ = _context({**options, "refine": False}, post_training=True)
    off = allocate("probe", ctx)
    assert off.bits == ranked["bits"] and off.info["refined"] is None
    # with fine-tuning (the probe measures after training) there is no refinement
    ctx, _, _ = _context({**options, "steps": 2})
    assert allocate("probe", ctx).info["refined"] is None


def test_the_refinement_takes_its_options():
    ctx, _, _ = _context({"methods": ["uniform", "hessian"], "images": 64, "refine": {"radius": 2, "rounds": 1}},
                         post_training=True)
    balls = allocate("probe", ctx).info["refined"]["balls"]
    assert balls[0]["radius"] <= 2 and len(balls) <= 2


def test_identical_answers_are_probed_once_and_one_answer_not_at_all():
    ctx, _, _ = _context({"methods": ["uniform", "uniform"], "images": 64, "steps": 2})
    result = allocate("probe", ctx)
    assert len(result.info["candidates"]) == 1
    assert result.info["chosen"] == ["uniform", "uniform"]
    assert result.info["steps"] == 0  # a single candidate needs no probe
    ctx, _, _ = _context({"methods": ["uniform", "hessian"], "images": 64, "steps": 2})
    result = allocate("probe", ctx)
    assert len(result.info["candidates"]) == 2 and result.info["steps"] == 2


def test_bits_per_structure_use_hessian_alone_by_default():
    torch.manual_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(320, 12, generator=g)
    y = (x[:, :3].argmax(1)).long()
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8), granularity="group:8"))
    loader = TensorLoader(x, y, batch_size=32, shuffle=True, seed=0)
    ctx = AllocationContext(model=model, space=space, loaders={"weights": loader, "full": loader, "held_out": loader},
                            budget_bits=budget_bits("12x", space.cost), target="12x", epochs=1, seed=0,
                            device=torch.device("cpu"), options={})
    result = allocate("probe", ctx)
    assert result.info["chosen"] == ["hessian"]
    assert result.bits == allocate("hessian", ctx).bits
    assert any(isinstance(b, tuple) for b in result.bits.values())
    with pytest.raises(ValueError, match="bits per structure"):  # asked for explicitly, evolution refuses
        allocate("probe", AllocationContext(**{**vars(ctx), "options": {"methods": ["hessian", "evolution"]}}))


def test_the_random_stream_is_left_as_it_was():
    ctx, _, _ = _context({"methods": ["uniform", "hessian"], "images": 64, "steps": 2})
    torch.manual_seed(123)
    allocate("probe", ctx)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("options, match", [
    ({"methods": "hessian"}, "non-empty list"),
    ({"methods": []}, "non-empty list"),
    ({"methods": ["probe"]}, "its own candidates"),
    ({"methods": ["nope"]}, "nope"),
    ({"methods": ["hessian"], "method_options": {"evolution": {}}}, "not among methods"),
    ({"steps": -1}, "steps must be"),
    ({"lr": 0}, "lr must be positive"),
    ({"images": 0}, "images must be"),
    ({"method_options": {"hessian": 3}}, "must map a method name"),
    ({"bogus": 1}, "unknown options"),
    ({"refine": "yes"}, "refine must be true, false or a dict"),
    ({"refine": {"start": "uniform"}}, "refine must be true, false or a dict"),
    ({"refine": {"radius": 0}}, "radius must be an integer >= 1"),
])
def test_bad_options_fail_before_any_work(options, match):
    ctx, _, _ = _context(options)
    with pytest.raises((ValueError, KeyError), match=match):
        allocate("probe", ctx)
