"""Image folders and zips (split/class/image), the decode cache, and cifar10's root handling."""

from __future__ import annotations

import importlib.util
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from mixbits.data import load_dataset
from mixbits.data import imagefolder
from mixbits.data.imagefolder import looks_like_image_folder, read_image_folder

CLASSES = ("cat", "dog", "emu")


def _pixels(split: str, c: int, i: int) -> np.ndarray:
    rng = np.random.default_rng(100 * c + 10 * i + (split == "test"))
    return rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)  # (H, W, C)


def _make_folder(root, top: str = "", per_class=(2, 1)) -> None:
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(CLASSES):
            d = root / top / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_pixels(split, c, i)).save(d / f"{i:03d}.png")


def _zip_folder(folder, path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f.relative_to(folder).as_posix())


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXBITS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("as_zip,top", [(False, ""), (True, ""), (True, "mydata")])
def test_folder_and_zip_decode_exact_pixels_and_sorted_labels(tmp_path, as_zip, top):
    src = tmp_path / "src"
    _make_folder(src, top)
    path = src
    if as_zip:
        path = tmp_path / "data.zip"
        _zip_folder(src, path)
    d = read_image_folder(path)
    assert d["classes"] == list(CLASSES)
    assert d["train_x"].shape == (6, 3, 6, 5) and d["train_x"].dtype == torch.uint8
    assert d["train_y"].tolist() == [0, 0, 1, 1, 2, 2] and d["test_y"].tolist() == [0, 1, 2]
    assert np.array_equal(d["train_x"][3].permute(1, 2, 0).numpy(), _pixels("train", 1, 1))  # PNG is lossless
    assert looks_like_image_folder(path)


def test_decoded_tensors_are_cached_and_a_change_invalidates(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _make_folder(src)
    path = tmp_path / "data.zip"
    _zip_folder(src, path)
    first = read_image_folder(path)
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1
    monkeypatch.setattr(imagefolder, "_read", lambda *a: pytest.fail("decoded again despite the cache"))
    again = read_image_folder(path)
    assert torch.equal(first["train_x"], again["train_x"]) and again["classes"] == list(CLASSES)
    monkeypatch.undo()
    monkeypatch.setenv("MIXBITS_CACHE_DIR", str(tmp_path / "cache"))
    os.utime(path, ns=(1, 1))  # touched: a new modification time -> a new key, decoded again
    read_image_folder(path)
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 2


def test_imagefolder_name_gives_a_normalised_dataset(tmp_path):
    _make_folder(tmp_path / "src")
    d = load_dataset(f"imagefolder:{tmp_path / 'src'}")
    assert d.num_classes == 3 and d.input_shape == (3, 6, 5) and len(d.mean) == 3 and d.augment == "none"
    same = load_dataset("imagefolder", root=str(tmp_path / "src"))
    assert torch.equal(same.train_x, d.train_x) and same.mean == d.mean
    with pytest.raises(ValueError, match="needs --data-root"):
        load_dataset("imagefolder")


def test_grey_images_give_one_channel(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 7, np.uint8), mode="L").save(tmp_path / split / "a" / "0.png")
    d = read_image_folder(tmp_path, cache=False)
    assert d["train_x"].shape == (1, 1, 4, 4) and int(d["train_x"].max()) == 7


@pytest.mark.parametrize("case,message", [
    ("no_test", "found splits \\['train'\\]"),
    ("sizes", "resize the images to one size"),
    ("missing", "does not exist"),
])
def test_bad_folders_say_what_is_wrong(tmp_path, case, message):
    if case == "no_test":
        (tmp_path / "train" / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    if case == "sizes":
        _make_folder(tmp_path)
        Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "train" / "cat" / "zzz.png")
    path = tmp_path / "nothing" if case == "missing" else tmp_path
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_image_folder(path)


def test_cifar10_needs_a_root_and_checks_classes(tmp_path):
    with pytest.raises(ValueError, match="cifar10 needs --data-root"):
        load_dataset("cifar10")
    _make_folder(tmp_path / "src")
    with pytest.raises(ValueError, match="not CIFAR-10's .* use --data imagefolder:"):
        load_dataset("cifar10", root=str(tmp_path / "src"))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed here, so cifar10 would try to download")
def test_cifar10_download_without_torchvision_names_the_extra(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportError, match=r"pip install 'mixbits\[vision\]'"):
        load_dataset("cifar10", root=str(tmp_path / "empty"))
    # a folder that does not exist is most likely a typo: say so first, and what else would work
    with pytest.raises(FileNotFoundError, match=r"does not exist: give the folder or zip .* \(pip install 'mixbits\[vision\]'\)"):
        load_dataset("cifar10", root=str(tmp_path / "nonexistent"))
