"""Progress of offline jobs (`matte`, `plate build`): one line with rate and ETA, on a terminal only.

Redrawn with a carriage return at most every `interval_s`, so a long job costs a few hundred
writes, not one per frame; when stderr is a pipe or a log file (a service, CI, `2>log`) nothing
is drawn at all: a log must not fill with hundreds of `\r` updates on one line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """`[#####.....] 120/795 frames, 31.2 fps, ETA 0:22` on `stream`, if it is a terminal."""

    WIDTH = 24

    def __init__(
        self,
        total: int | None,
        unit: str = "frames",
        stream: TextIO | None = None,
        interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream or sys.stderr
        self._total = total if total and total > 0 else None
        self._unit = unit
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._drawn_at = float("-inf")
        self._done = 0
        self.enabled = _is_terminal(self._stream)

    def update(self, done: int) -> None:
        """`done` units finished so far."""
        self._done = done
        now = self._clock()
        if self.enabled and now - self._drawn_at >= self._interval_s:
            self._drawn_at = now
            self._draw(now)

    def close(self) -> None:
        """Draw the final figures and end the line (nothing when not on a terminal)."""
        if self.enabled:
            self._draw(self._clock())
            print(file=self._stream, flush=True)

    def line(self, now: float) -> str:
        """The progress line as it is drawn at time `now`."""
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        text = f"{self._done}"
        if self._total is not None:
            filled = int(self.WIDTH * min(self._done / self._total, 1.0))
            text = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self._done}/{self._total}"
        text += f" {self._unit}, {rate:.1f}/s"
        if self._total is not None and rate > 0:
            text += f", ETA {_clock_time(max(self._total - self._done, 0) / rate)}"
        return text

    def _draw(self, now: float) -> None:
        print(f"\r{self.line(now)}\x1b[K", end="", file=self._stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False


def _clock_time(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
