"""Plate time: the seconds every span of the plate is measured in, from the frames' media time.

Spans (stillness before a capture, the 10 s a per-pixel plate needs, the hold after motion,
half a second of drift before a plate is stale...) used to be frame counts at the nominal rate,
so a daemon that dropped frames under load took two or three times longer in wall time, and a
camera faster than its nominal rate made them too short. They are now the frames' own media
time (`Frame.media_time`: the file's timestamps, the camera's clock, the synthetic scene's).

Each frame advances plate time by its step from the previous frame, with one rule for steps that
are no evidence of time passing in view: the first frame, and a step that is not positive (a
file started again, a camera reopened with a new clock) or longer than `MAX_STEP_S` (the camera
was lost and came back, a hole in a recording), count one nominal interval. So plate time never
goes back and never leaps: after an outage the spans resume where they were, and the frame after
it is compared with the one before (a scene that changed meanwhile shows as motion).
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np

MAX_STEP_S = 2.0  # a longer step between two frames is an outage or a hole, not time seen
_TOLERANCE_S = 1e-6  # sums of frame steps carry rounding: a span this close counts as reached


@overload
def reached(span_s: float, needed_s: float) -> bool: ...
@overload
def reached(span_s: np.ndarray, needed_s: float) -> np.ndarray: ...
def reached(span_s: float | np.ndarray, needed_s: float) -> bool | np.ndarray:
    """Whether `span_s` of plate time (or each of an array's) is at least `needed_s` (within
    the rounding of sums)."""
    return span_s >= needed_s - _TOLERANCE_S


def periods(span_s: float, period_s: float) -> int:
    """Whole periods of `period_s` in `span_s` (a span a rounding short of k periods has k): the
    slot a frame falls in, for work done at most once per period (sampling, checks)."""
    return math.floor(span_s / period_s + _TOLERANCE_S)


class PlateClock:
    """Plate time (seconds) advanced by each frame's media time; `step` is the last advance."""

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps  # the nominal interval: the step of a frame with no usable one
        self.now = 0.0
        self.step = 0.0
        self._last: float | None = None

    def tick(self, media_time: float) -> float:
        """Advance to the frame stamped `media_time` (seconds); return plate time now."""
        step = self.interval
        if self._last is not None and 0.0 < media_time - self._last <= MAX_STEP_S:
            step = media_time - self._last
        if math.isfinite(media_time):
            self._last = media_time
        self.step = step
        self.now += step
        return self.now
