"""Image folders and zips laid out ``split/class/image`` decoded into uint8 tensors.

The layout (ImageFolder style, as in ``cifar10-jpeg.zip``)::

    train/<class>/<image>      test/<class>/<image>

``val``/``valid``/``validation`` are accepted for ``test``; one enclosing folder
(``cifar10/train/...``) is allowed. Labels are the indices of the sorted class
names of the training split. Images must share one size; they are decoded once
with Pillow and the tensors are cached on disk (:mod:`mixbits.data.cache`).
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .cache import cached, source_key
from .base import TensorDataset, channel_stats, register_dataset

__all__ = ["read_image_folder", "looks_like_image_folder", "image_folder_dataset", "IMAGE_EXTENSIONS"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_SPLITS = {"train": "train", "training": "train", "test": "test", "val": "test", "valid": "test",
           "validation": "test"}


def _entries(names: list[str]) -> list[tuple[str, str, str]]:
    """(split, class, name) for image paths ``[top/]split/class/file`` (POSIX, relative)."""
    files = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not PurePosixPath(n).name.startswith(".")]
    parts = [PurePosixPath(n).parts for n in files]
    tops = {p[0] for p in parts if len(p) == 4}
    strip = 1 if len(tops) == 1 and all(len(p) == 4 for p in parts) and next(iter(tops)).lower() not in _SPLITS else 0
    out = []
    for name, p in zip(files, parts):
        p = p[strip:]
        if len(p) == 3 and p[0].lower() in _SPLITS:
            out.append((_SPLITS[p[0].lower()], p[1], name))
    return out


def _list(path: Path) -> tuple[list[tuple[str, str, str]], zipfile.ZipFile | None]:
    if path.is_dir():
        names = [os.path.relpath(os.path.join(d, f), path).replace(os.sep, "/")
                 for d, _, fs in os.walk(path) for f in fs]
        return _entries(sorted(names)), None
    if zipfile.is_zipfile(path):
        z = zipfile.ZipFile(path)
        return _entries(sorted(z.namelist())), z
    raise ValueError(f"{str(path)!r} is neither a folder nor a zip file; expected split/class/image "
                     f"(e.g. train/cat/0001.jpg and test/cat/0001.jpg)")


def looks_like_image_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder or zip holding both a training and a test split of images."""
    p = Path(path)
    if not p.exists():
        return False
    try:
        entries, z = _list(p)
    except ValueError:
        return False
    if z is not None:
        z.close()
    return {s for s, _, _ in entries} == {"train", "test"}


def _decode(path: Path, z: zipfile.ZipFile | None, names: list[str]) -> np.ndarray:
    """Decode images into one array (N, H, W, C) uint8."""
    from PIL import Image

    out: np.ndarray | None = None
    mode = "RGB"
    for i, name in enumerate(names):
        data = z.read(name) if z is not None else (path / name).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            if out is None:
                mode = "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                w, h = img.size
                out = np.empty((len(names), h, w, 1 if mode == "L" else 3), dtype=np.uint8)
            if img.size != (out.shape[2], out.shape[1]):
                raise ValueError(f"image {name!r} is {img.size[0]}x{img.size[1]} but the first image is "
                                 f"{out.shape[2]}x{out.shape[1]}; resize the images to one size first")
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
            out[i] = arr.reshape(out.shape[1:])
    assert out is not None
    return out


def _read(path: Path, limit_per_class: int | None) -> dict:
    entries, z = _list(path)
    try:
        splits = {s for s, _, _ in entries}
        if splits != {"train", "test"}:
            raise ValueError(f"{str(path)!r} must hold train/<class>/<image> and test/<class>/<image> "
                             f"(val/ is accepted for test); found splits {sorted(splits) or 'none'}")
        classes = sorted({c for s, c, _ in entries if s == "train"})
        extra = sorted({c for s, c, _ in entries if s == "test"} - set(classes))
        if extra:
            raise ValueError(f"{str(path)!r}: test classes {extra} have no training images")
        index = {c: i for i, c in enumerate(classes)}
        result: dict = {"classes": classes}
        for split in ("train", "test"):
            chosen: list[tuple[str, int]] = []
            per_class: dict[str, int] = {}
            for s, c, name in entries:
                if s != split or (limit_per_class is not None and per_class.get(c, 0) >= limit_per_class):
                    continue
                per_class[c] = per_class.get(c, 0) + 1
                chosen.append((name, index[c]))
            log.info("decoding %d %s images of %s", len(chosen), split, path)
            arr = _decode(path, z, [n for n, _ in chosen])
            result[f"{split}_x"] = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
            result[f"{split}_y"] = torch.tensor([y for _, y in chosen], dtype=torch.int64)
        return result
    finally:
        if z is not None:
            z.close()


def read_image_folder(path: str | Path, *, limit_per_class: int | None = None, cache: bool = True) -> dict:
    """Decode a ``split/class/image`` folder or zip.

    Args:
        path: the folder or zip.
        limit_per_class: read only the first N images of each class per split (not cached).
        cache: cache the decoded tensors on disk and reuse them while the source is unchanged.

    Returns:
        dict with ``train_x``/``test_x`` (N, C, H, W) uint8 (C is 1 for grey images, else 3),
        ``train_y``/``test_y`` (N,) int64, and ``classes`` (sorted class names; label i is classes[i]).

    Raises:
        FileNotFoundError: no such path.
        ValueError: not a folder or zip of that layout, or images of different sizes.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"image folder or zip {str(path)!r} does not exist")
    if limit_per_class is not None or not cache:
        return _read(p, limit_per_class)
    return cached("imagefolder", source_key(p), lambda: _read(p, None))


def image_folder_dataset(path: str | Path, *, name: str | None = None, augment: str = "none") -> TensorDataset:
    """A :class:`~mixbits.data.TensorDataset` of a ``split/class/image`` folder or zip.

    Normalisation uses the per-channel mean and std of the training images.
    """
    d = read_image_folder(path)
    mean, std = channel_stats(d["train_x"])
    return TensorDataset(name or f"imagefolder:{path}", d["train_x"], d["train_y"], d["test_x"], d["test_y"],
                         len(d["classes"]), mean, std, augment, class_names=tuple(d["classes"]))


@register_dataset("imagefolder")
def imagefolder(root: str | None = None) -> TensorDataset:
    """``--data imagefolder --data-root PATH``, the same as ``--data imagefolder:PATH``."""
    if not root:
        raise ValueError("the imagefolder data set needs --data-root PATH (a folder or zip laid out split/class/image)")
    return image_folder_dataset(root, name="imagefolder")
