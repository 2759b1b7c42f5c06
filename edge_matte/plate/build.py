"""Making a plate from an empty scene: the temporal median of a few frames.

The capture lasts `frames` nominal intervals of plate time (see `clock`) and combines at most one
frame per interval: at the nominal rate that is `frames` consecutive frames, as the setting
says; when frames are dropped it still lasts as long (fitting the empty moment it was started
in) and combines those that came; a source faster than its nominal rate adds no more frames.

`MedianCapture` keeps its frames sorted per pixel as they arrive (a bubble insertion with
`cv2.min`/`cv2.max`, a few ms per frame at 720p), so the median is ready the moment the last
frame comes in instead of costing a ~1 s `np.median` stall in the frame loop.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_matte.plate.clock import periods, reached

_MAX_STACK = 31  # frames kept for the median; longer captures are subsampled evenly


class MedianCapture:
    """Temporal median over `frames` intervals of `interval_s` plate seconds (at most one frame
    per interval combined, 31 in all)."""

    def __init__(self, frames: int, interval_s: float) -> None:
        self.frames = max(1, frames)
        self._interval = interval_s
        self._stride = math.ceil(self.frames / _MAX_STACK)
        self._depth = math.ceil(self.frames / self._stride)
        self._stack: np.ndarray | None = None
        self._spare: np.ndarray | None = None
        self._kept = 0
        self._seen = 0
        self._start: float | None = None
        self._elapsed = 0.0
        self._slot = -1  # the stack slot of the last frame inserted

    @property
    def done(self) -> bool:
        return reached(self._elapsed, self.frames * self._interval)

    @property
    def seen(self) -> int:
        return self._seen

    def add(self, image: np.ndarray, now: float) -> None:
        """Take one BGR frame at plate time `now`; the first of each `stride` intervals is
        inserted into the per-pixel sorted stack."""
        if self._start is None:
            self._start = now - self._interval  # the first frame stands for one interval
        self._elapsed = now - self._start
        slot = (periods(self._elapsed, self._interval) - 1) // self._stride
        if slot > self._slot and self._kept < self._depth:
            self._slot = slot
            self._insert(image)
        self._seen += 1

    def _insert(self, image: np.ndarray) -> None:
        if self._stack is None:
            self._stack = np.empty((self._depth, *image.shape), np.uint8)
            self._spare = np.empty_like(image)
        value, spare = image.copy(), self._spare
        for row in self._stack[: self._kept]:
            cv2.max(row, value, dst=spare)  # the larger value moves on up the stack
            cv2.min(row, value, dst=row)
            value, spare = spare, value
        self._stack[self._kept] = value
        self._spare = spare
        self._kept += 1

    def median(self) -> np.ndarray:
        """The per-pixel median of the frames kept so far (the mean of the middle two when even)."""
        if self._stack is None:
            raise ValueError("median of no frames")
        middle = self._kept // 2
        if self._kept % 2:
            return self._stack[middle].copy()
        return cv2.addWeighted(self._stack[middle - 1], 0.5, self._stack[middle], 0.5, 0.0)
