"""The data set registry: offline data sets, subsets, statistics and a user's module:function."""

from __future__ import annotations

import pytest
import torch

from mixbits.data import DATASETS, TensorDataset, channel_stats, load_dataset, take_train_subset


def test_mnist5k_is_stratified_uint8_and_fixed():
    d = load_dataset("mnist5k")
    assert d.train_x.shape == (4000, 1, 28, 28) and d.test_x.shape == (1000, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.num_classes == 10 and d.augment == "none"
    assert d.test_y.bincount().tolist() == [100] * 10
    assert int(d.train_x.max()) == 255
    again = load_dataset("mnist5k")
    assert torch.equal(d.test_y, again.test_y) and torch.equal(d.test_x, again.test_x)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'nope'; known: .*cifar10.*digits.*mnist5k"):
        load_dataset("nope")
    assert {"cifar10", "digits", "mnist5k"} <= set(DATASETS.names())


def test_train_subset_is_seeded_and_leaves_test_alone():
    d = load_dataset("digits")
    a, b = take_train_subset(d, 100), take_train_subset(d, 100)
    assert len(a.train_y) == 100 and torch.equal(a.train_x, b.train_x)
    assert torch.equal(a.test_y, d.test_y)
    assert take_train_subset(d, len(d.train_y)) is d
    with pytest.raises(ValueError, match=r"train_subset must be in \[1, 1438\]"):
        take_train_subset(d, 10_000)


def test_channel_stats_of_uint8_scale_to_unit_range():
    x = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)
    x[:, 1] = 255
    x[:2, 0] = 255
    mean, std = channel_stats(x)
    assert mean == (0.5, 1.0)
    assert std[0] == pytest.approx(0.5075, abs=1e-3) and std[1] == 1.0  # a zero std becomes 1


def _write_module(tmp_path, name, text):
    (tmp_path / f"{name}.py").write_text(text)
    return name


def test_user_function_returning_datasets_of_pairs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "userdata_pairs", """
import numpy as np, torch
class Pairs(torch.utils.data.Dataset):
    def __init__(self, n): self.n = n
    def __len__(self): return self.n
    def __getitem__(self, i): return np.full((6, 6), i % 3, dtype=np.uint8), i % 3
def make(root=None):
    assert root == "somewhere"
    return Pairs(12), Pairs(6)
""")
    d = load_dataset("userdata_pairs:make", root="somewhere")
    assert d.train_x.shape == (12, 1, 6, 6) and d.train_x.dtype == torch.uint8
    assert d.num_classes == 3 and d.test_y.tolist() == [0, 1, 2, 0, 1, 2]
    assert d.name == "userdata_pairs:make"


def test_user_function_returning_tensor_pairs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "userdata_tensors", """
import torch
def make():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 4, 4, generator=g, dtype=torch.float64)
    return (x, torch.arange(20) % 4), torch.utils.data.TensorDataset(x[:8], torch.arange(8) % 4)
""")
    d = load_dataset("userdata_tensors:make")
    assert d.train_x.dtype == torch.float32 and d.test_x.shape == (8, 3, 4, 4) and d.num_classes == 4
    assert len(d.mean) == 3 and all(0.3 < m < 0.7 for m in d.mean)


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("userdata_bad:missing", "has no attribute 'missing'"),
    ("userdata_bad:single", "must return \\(train, test\\)"),
])
def test_user_function_errors_say_what_is_wrong(tmp_path, monkeypatch, spec, message):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "userdata_bad", "import torch\ndef single():\n    return torch.zeros(3)\n")
    with pytest.raises(ValueError, match=message):
        load_dataset(spec)


def test_user_function_may_return_a_tensor_dataset(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "userdata_ready", """
import torch
from mixbits.data import TensorDataset
def make():
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    return TensorDataset("mine", x, torch.arange(4) % 2, x, torch.arange(4) % 2, 2, (0.5,), (0.25,), "crop_flip")
""")
    d = load_dataset("userdata_ready:make")
    assert isinstance(d, TensorDataset) and d.name == "mine" and d.augment == "crop_flip"
