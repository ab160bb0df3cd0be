"""Training loops for any task: a custom loss, accuracy only where targets are class indices, frozen weights."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbits.data import TensorLoader
from mixbits.finetune import finetune_
from mixbits.space import prepare_
from mixbits.train import TrainConfig, correct_count, evaluate, evaluate_loss, fit


def test_correct_count_only_for_class_indices():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert correct_count(logits, torch.tensor([0, 1, 1])) == (2, 3)
    pixels = torch.zeros(2, 3, 4, 4)
    pixels[:, 1] = 1.0
    assert correct_count(pixels, torch.ones(2, 4, 4, dtype=torch.long)) == (32, 32)  # per pixel
    assert correct_count(torch.randn(3, 1), torch.randn(3, 1)) == (0, 0)  # regression
    assert correct_count(torch.randn(3, 5, 7), torch.randint(0, 5, (3, 4))) == (0, 0)  # shapes do not line up


def _regression(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, x[:, :2] * 2.0 - x[:, 2:4]  # (n, 2) float targets


def test_fit_and_finetune_with_a_regression_loss():
    torch.manual_seed(0)
    x, y = _regression()
    loader = TensorLoader(x, y, batch_size=8, shuffle=False)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    before = evaluate_loss(model, loader, F.mse_loss)
    history = fit(model, loader, TrainConfig(epochs=3, lr=0.05, amp=False), loss_fn=F.mse_loss)
    assert [h["train_accuracy"] for h in history] == [None, None, None]
    assert evaluate_loss(model, loader, F.mse_loss) < before
    with pytest.raises(ValueError, match="evaluate_loss"):
        evaluate(model, loader)
    space = prepare_(model)
    history = finetune_(model, space, {n: 8 for n in space.names}, loader, TrainConfig(epochs=1, lr=0.01, amp=False),
                        loss_fn=F.mse_loss)
    assert history[0]["train_accuracy"] is None and history[0]["loss"] > 0


def test_per_pixel_loss_reports_pixel_accuracy():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 5, 5)
    y = (x[:, 0] > 0).long()  # (8, 5, 5) pixel labels
    model = nn.Conv2d(1, 2, 3, padding=1)
    history = fit(model, TensorLoader(x, y, batch_size=4, shuffle=False), TrainConfig(epochs=1, lr=0.1, amp=False),
                  loss_fn=F.cross_entropy)
    assert 0.0 <= history[0]["train_accuracy"] <= 1.0
    assert 0.0 <= evaluate(model, [(x, y)]) <= 1.0


def test_finetune_leaves_frozen_weights_frozen_and_unchanged():
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].requires_grad_(False)  # a frozen backbone
    frozen = model[0].weight.detach().clone()
    head = model[2].weight.detach().clone()
    space = prepare_(model)
    finetune_(model, space, {"0": 4, "2": 4}, TensorLoader(x, y, batch_size=8, shuffle=False),
              TrainConfig(epochs=1, lr=0.1, amp=False))
    assert not model[0]._parameters["weight"].requires_grad
    assert torch.equal(model[0]._parameters["weight"].detach(), frozen)
    assert not torch.equal(model[2]._parameters["weight"].detach(), head)


def test_train_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_distill_loss_per_token_uses_the_class_dim_and_averages_positions():
    from mixbits.train import distill_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)  # (B, C, T)
    t = 2.0
    p = F.softmax(teacher / t, 1)
    manual = (p * (F.log_softmax(teacher / t, 1) - F.log_softmax(student / t, 1))).sum(1).mean() * t * t
    torch.testing.assert_close(distill_loss(student, teacher, t), manual)
    # the (N, C) case is the per-position mean of the same rows
    rows = [distill_loss(student[b, :, i][None], teacher[b, :, i][None], t) for b in range(3) for i in range(7)]
    torch.testing.assert_close(distill_loss(student, teacher, t), torch.stack(rows).mean())
    flat_s, flat_t = student.movedim(1, -1).reshape(-1, 5), teacher.movedim(1, -1).reshape(-1, 5)
    assert distill_loss(student, teacher, t) == distill_loss(flat_s, flat_t, t)
    manual_2d = (F.softmax(flat_t / t, 1) * (F.log_softmax(flat_t / t, 1) - F.log_softmax(flat_s / t, 1))).sum(1)
    torch.testing.assert_close(distill_loss(flat_s, flat_t, t), manual_2d.mean() * t * t)
