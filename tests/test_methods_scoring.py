import pytest
import torch
import torch.nn.functional as F

from mixbits.methods.scoring import HeldOutScorer

from ._method_helpers import tiny_context


def test_the_scorer_uses_the_runs_own_loss():
    """A regression loss: the held-out score is the mean of that loss, not a cross-entropy of the targets."""
    ctx, space = tiny_context("8x")
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 1, 6, 6, generator=g), torch.randn(40, 4, generator=g)
    bits = {n: 8 for n in space.names}
    scorer = HeldOutScorer(ctx.model, space, [(x[:32], y[:32]), (x[32:], y[32:])], images=40, bn_images=0,
                           loss_fn=F.mse_loss)
    got = scorer.loss(bits)
    space.fix_(bits)
    with torch.no_grad():
        want = F.mse_loss(ctx.model(x), y).item()
    space.unfix_()
    assert got == pytest.approx(want, rel=1e-5)


def test_a_subset_scores_its_first_images_with_batchnorm_from_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 4))
    ctx, space = tiny_context("8x", model=model)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 1, 6, 6, generator=g), torch.randint(0, 4, (96,), generator=g)
    bits = {n: 2 for n in space.names}
    full = HeldOutScorer(ctx.model, space, [(x, y)], images=96, bn_images=96)
    sub = full.subset(40)
    alone = HeldOutScorer(ctx.model, space, [(x[:40], y[:40])], images=40, bn_images=40)
    assert sub.loss(bits) == pytest.approx(alone.loss(bits), rel=1e-6)
    assert sub.loss(bits) != pytest.approx(full.loss(bits), rel=1e-3)  # other images, other statistics
    assert (sub.evaluations, full.evaluations) == (1, 1)  # caches and counts of their own
    assert len(full.subset(500).y) == 96


def test_a_held_out_score_does_not_depend_on_the_loaders_seed_augmentation_or_position():
    """The same assignment scores the same on an augmented, shuffled held-out loader of any seed, read or not:
    the scorer takes the loader's fixed sample (before, each gather drew other crops, flips and order)."""
    from mixbits.data import TensorLoader

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 4))
    ctx, space = tiny_context("8x", model=model)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(0, 256, (90, 3, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 4, (90,), generator=g)
    bits = {n: 2 for n in space.names}
    losses = []
    for seed, read in ((0, 0), (5, 3)):
        loader = TensorLoader(x, y, batch_size=16, shuffle=True, augment="crop_flip", drop_last=True, seed=seed)
        for _, _ in zip(range(read), loader):
            pass
        scorer = HeldOutScorer(ctx.model, space, loader, images=64, bn_images=32)
        losses.append(scorer.loss(bits))
        assert len(scorer.y) == 64
    assert losses[0] == losses[1]
    listed = HeldOutScorer(ctx.model, space, [TensorLoader(x, y, batch_size=90).sample(64)], images=64, bn_images=32)
    assert listed.loss(bits) == pytest.approx(losses[0], rel=1e-6)  # a list of batches is read as given
