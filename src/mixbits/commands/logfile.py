"""The command line's log file: ``run.log`` in the run folder, INFO and up, appended across resumes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["LOG_NAME", "attach_log_file", "detach_log_file"]

LOG_NAME = "run.log"


def attach_log_file(folder: Path) -> logging.Handler:
    """Append the ``mixbits`` loggers' INFO records to ``folder/run.log``.

    The terminal keeps the level of ``--log-level``: stderr handlers without a level
    of their own get the root logger's level before the package logger is opened to INFO.
    """
    root = logging.getLogger()
    for h in root.handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr and h.level == logging.NOTSET:
            h.setLevel(root.level)
    pkg = logging.getLogger("mixbits")
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    handler = logging.FileHandler(Path(folder) / LOG_NAME, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg.addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("mixbits").removeHandler(handler)
        handler.close()
