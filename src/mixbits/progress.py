"""Progress bars of the training loops: one bar per epoch, live numbers, time left in the stage.

The loops hand the numbers; the bar decides when to draw them (at most a few
times a second), so a bar costs nothing measurable per step. Disabled bars (quiet
mode, ranks other than 0) are free.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

__all__ = ["StageProgress"]

_REFRESH_S = 0.25


def _format_seconds(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class StageProgress:
    """Progress of one stage (float training, search or fine-tuning) of ``epochs`` epochs.

    Args:
        desc: stage name shown on the bar.
        epochs: epochs of the stage.
        steps_per_epoch: steps of a full epoch (for the time left in the stage).
        enabled: draw bars (False: every method is a no-op).
        first_epoch: the epoch a resumed stage starts at (0-based).
    """

    def __init__(self, desc: str, epochs: int, steps_per_epoch: int, *, enabled: bool, first_epoch: int = 0) -> None:
        self.desc = desc
        self.epochs = epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.enabled = enabled
        self._steps_left = (epochs - first_epoch) * self.steps_per_epoch
        self._steps_done = 0
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._bar: Any = None

    def start_epoch(self, epoch: int, steps: int) -> None:
        """Open the bar of ``epoch`` (0-based) with ``steps`` steps."""
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=steps, desc=f"{self.desc} {epoch + 1}/{self.epochs}", leave=False,
                         dynamic_ncols=True, file=sys.stderr, mininterval=_REFRESH_S)

    def step(self, numbers: Callable[[], dict[str, str]] | None = None) -> None:
        """Count one step; ``numbers()`` (called only when the bar redraws) gives the live values."""
        self._steps_done += 1
        if self._bar is None:
            return
        now = time.perf_counter()
        if numbers is not None and now - self._last_draw >= _REFRESH_S:
            self._last_draw = now
            values = numbers()
            values["left"] = self.time_left()
            self._bar.set_postfix(values, refresh=False)
        self._bar.update(1)

    def time_left(self) -> str:
        """Estimated time to the end of the stage, from the pace so far."""
        if self._steps_done == 0:
            return "?"
        pace = (time.perf_counter() - self._start) / self._steps_done
        return _format_seconds(pace * max(0, self._steps_left - self._steps_done))

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
