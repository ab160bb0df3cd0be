"""The run folder: atomic, durable writes of JSON, text and checkpoints, and the folder's lock.

Every file is written to a temporary name in the same folder, fsynced, renamed
over the final name, and the folder fsynced, so a crash, a kill or a full disk
never leaves a half-written file under the final name and never destroys the
previous good one. A temporary file left by a killed writer is removed by the
next write of the same file. One process at a time writes a run folder: it holds
an exclusive lock on ``.lock`` in it (released by the kernel if the process dies).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

__all__ = ["atomic_write", "write_json", "write_text", "save_checkpoint", "load_checkpoint", "prepare_run_dir",
           "RunFolderBusyError", "RunLock", "claim_run_dir", "LOCK_NAME"]

LOCK_NAME = ".lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_dead_temporaries(path: Path) -> None:
    """Temporary files of ``path`` whose writing process is gone (killed mid-write)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` (which must flush and fsync), rename the temporary file to ``path``, fsync the folder."""
    path = Path(path)
    _remove_dead_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, w)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: str | Path, obj: dict) -> Path:
    """Save plain dicts, lists, numbers, strings and tensors (loadable with ``weights_only=True``)."""
    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, writer)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without executing pickled code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, expected a dict or a state_dict")
    return obj


def prepare_run_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check it is writable.

    Raises:
        ValueError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write the output folder {str(path)!r}: {exc.strerror or exc}. "
                         f"Choose another folder with --out.") from None
    return path


class RunFolderBusyError(ValueError):
    """Another process is writing the run folder."""


class RunLock:
    """An exclusive, non-blocking lock on ``folder/.lock`` (``flock``; released when the process dies)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None
        self.created_folder = False  # set by claim_run_dir: the folder did not exist before

    def acquire(self) -> "RunLock":
        """Raises: RunFolderBusyError: another process holds the lock."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; the --force check still applies
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunFolderBusyError(
                f"run folder {str(self.path.parent)!r} is in use by another mixbits process"
                f"{f' (pid {holder})' if holder.isdigit() else ''}: wait for it to finish, or choose another "
                f"--out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self, *, remove_empty_folder: bool = False) -> None:
        """Unlock; with ``remove_empty_folder``, also remove a folder the claim created if only the lock is in it."""
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        folder = self.path.parent
        if remove_empty_folder and self.created_folder and folder.is_dir() and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            self.path.unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:  # someone wrote into it meanwhile
                pass

    def __enter__(self) -> "RunLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim_run_dir(path: str | Path, *, markers: Iterable[str], outputs: Iterable[str] = (), force: bool = False,
                  resume: bool = False) -> RunLock:
    """Create the run folder, lock it, and refuse to overwrite a run already there.

    Args:
        path: the run folder.
        markers: files whose presence means the folder already holds a run (``settings.json``...).
        outputs: the files of a run, removed under ``force`` so the folder never mixes two runs.
        force: overwrite a run already in the folder.
        resume: the folder's own run continues (nothing is refused or removed).

    Returns:
        the held lock; release it when the run ends (the kernel does if the process dies).

    Raises:
        RunFolderBusyError: another process writes the folder.
        ValueError: the folder holds a run and neither ``force`` nor ``resume`` is set; an unwritable folder.
    """
    created = not Path(path).exists()
    path = prepare_run_dir(path)
    lock = RunLock(path).acquire()
    lock.created_folder = created
    try:
        found = [name for name in markers if (path / name).exists()]
        if found and not resume and not force:
            raise ValueError(f"{str(path)!r} already holds a run ({found[0]}): continue it with --resume {path}, "
                             f"overwrite it with --force, or choose another --out")
        if found and force and not resume:
            for name in outputs:
                (path / name).unlink(missing_ok=True)
        for stale in path.glob(".*.tmp"):  # we hold the lock: no one else is writing here
            stale.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock
