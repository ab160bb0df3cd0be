"""Device-resident batches: whole-batch crop/flip equals the per-sample recipe, normalisation, seeding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixbits.data import TensorLoader
from mixbits.data.loader import crop_flip


def _per_sample_reference(x: torch.Tensor, seed: int, pad: int = 4) -> torch.Tensor:
    """One image at a time: zero-pad, crop at (dy, dx), flip; the same random draws as crop_flip."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    out = []
    for i in range(b):
        img = F.pad(x[i], (pad,) * 4)[:, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(img.flip(2) if flip[i] else img)
    return torch.stack(out)


def test_crop_flip_equals_the_per_sample_recipe_for_uint8_and_float():
    x = torch.randint(0, 256, (64, 3, 9, 7), dtype=torch.uint8)
    got = crop_flip(x, torch.Generator().manual_seed(5))
    assert got.dtype == torch.uint8 and torch.equal(got, _per_sample_reference(x, 5))
    got_f = crop_flip(x.float(), torch.Generator().manual_seed(5))
    assert torch.equal(got_f, got.float())


def test_loader_normalises_and_augments_whole_batches_reproducibly():
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(10)
    plain = TensorLoader(x, y, batch_size=4, mean=(0.5,), std=(0.25,))
    xb, yb = next(iter(plain))
    assert torch.allclose(xb, (x[:4].float() / 255 - 0.5) / 0.25) and yb.tolist() == [0, 1, 2, 3]
    assert len(plain) == 3 and len(TensorLoader(x, y, batch_size=4, drop_last=True)) == 2
    a = [b for b, _ in TensorLoader(x, y, batch_size=4, shuffle=True, augment="crop_flip", seed=3)]
    b = [b for b, _ in TensorLoader(x, y, batch_size=4, shuffle=True, augment="crop_flip", seed=3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert a[0].shape == (4, 3, 8, 8) and a[0].dtype == torch.float32


def test_a_sample_is_fixed_unaugmented_each_image_once_and_leaves_the_loader_as_it_was():
    """What held-out scores are measured on: the same images whatever the loader's seed, augmentation, drop_last
    or how far it was read; a uniform prefix (not the stored order, which may be sorted by class)."""
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)
    a = TensorLoader(x, y, batch_size=8, shuffle=True, augment="crop_flip", drop_last=True, mean=(0.5,),
                     std=(0.25,), seed=1)
    b = TensorLoader(x, y, batch_size=8, shuffle=True, augment="crop_flip", drop_last=True, mean=(0.5,),
                     std=(0.25,), seed=2)
    next(iter(b))
    before = b.generator.get_state()
    xs, ys = a.sample(20)
    assert torch.equal(xs, b.sample(20)[0]) and torch.equal(ys, b.sample(20)[1])
    assert torch.equal(b.generator.get_state(), before)  # the loader's own stream is untouched
    assert torch.allclose(xs, (x[ys].float() / 255 - 0.5) / 0.25)  # normalised, not cropped or flipped
    assert len(set(ys.tolist())) == 20 and ys.tolist() != list(range(20))  # each once, not the stored order
    assert torch.equal(a.sample(30)[1][:20], ys)  # a longer sample extends the shorter one
    assert sorted(a.sample(10 ** 6)[1].tolist()) == list(range(50))  # all 50, though drop_last reads 48
    with pytest.raises(ValueError, match="at least 1"):
        a.sample(0)
