"""On-disk cache of decoded data sets: uint8 tensors keyed by the source's identity.

Decoding 60,000 JPEGs takes seconds to minutes; the decoded tensors load in well
under a second. A cache entry is a ``torch.save`` file of plain tensors and
strings (loadable with ``weights_only=True``), named by a hash of the source's
absolute path, size and modification time, so a changed source is decoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from ..runfiles import atomic_write

__all__ = ["cache_dir", "source_key", "cached"]

log = logging.getLogger(__name__)

#: Bump when the layout of cached entries changes, so stale entries are ignored.
CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where decoded data sets are cached: ``$MIXBITS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mixbits``, else ``~/.cache/mixbits``."""
    env = os.environ.get("MIXBITS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mixbits"


def source_key(path: str | Path, tag: str = "") -> str:
    """A short hash of a file's or folder's identity (absolute path, sizes, modification times).

    A folder's identity covers every file below it, so adding or replacing an image changes the key.
    """
    p = Path(path).resolve()
    h = hashlib.sha256(f"v{CACHE_VERSION}|{tag}|{p}".encode())
    if p.is_dir():
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"|{os.path.relpath(os.path.join(dirpath, name), p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = p.stat()
        h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def cached(name: str, key: str, build: Callable[[], dict]) -> dict:
    """Return the cached dict for (name, key), or ``build()`` it and cache it.

    The dict must hold only tensors, numbers, strings and lists of them. A cache
    folder that cannot be written only costs a warning: the data is still returned.
    """
    path = cache_dir() / f"{name}-{key}.pt"
    if path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            log.info("loaded decoded %s from cache %s", name, path)
            return obj
        except Exception as exc:  # a truncated or foreign file: decode again
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
    obj = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
        log.info("cached decoded %s in %s", name, path)
    except OSError as exc:
        log.warning("could not cache decoded %s in %s: %s", name, path, exc)
    return obj
