"""The real CIFAR-10 zip (skipped with a reason when it is not on this machine).

Its path comes from $MIXBITS_CIFAR_ZIP, by default ../shared/data/cifar10-jpeg.zip
relative to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mixbits.data.cifar import CIFAR10_CLASSES
from mixbits.data.imagefolder import read_image_folder

ZIP = Path(os.environ.get("MIXBITS_CIFAR_ZIP", Path(__file__).resolve().parents[1] / "../shared/data/cifar10-jpeg.zip"))
needs_zip = pytest.mark.skipif(not ZIP.is_file(), reason=f"CIFAR-10 zip not found at {ZIP} (set MIXBITS_CIFAR_ZIP)")


@needs_zip
def test_zip_layout_classes_and_shapes_from_a_few_images():
    d = read_image_folder(ZIP, limit_per_class=2)
    assert tuple(d["classes"]) == CIFAR10_CLASSES
    assert d["train_x"].shape == (20, 3, 32, 32) and d["test_x"].shape == (20, 3, 32, 32)
    assert d["train_x"].dtype == torch.uint8 and d["train_y"].bincount().tolist() == [2] * 10
    assert 40 < d["train_x"].float().mean() < 200  # real photos, not blank


@needs_zip
@pytest.mark.slow
def test_whole_zip_loads_as_cifar10(tmp_path, monkeypatch):
    from mixbits.data import load_dataset

    d = load_dataset("cifar10", root=str(ZIP))
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.train_y.bincount().tolist() == [5000] * 10 and d.test_y.bincount().tolist() == [1000] * 10
    assert d.augment == "crop_flip"
