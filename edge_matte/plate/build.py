"""Making a plate from an empty scene: the temporal median of a few frames.

`MedianCapture` keeps its frames sorted per pixel as they arrive (a bubble insertion with
`cv2.min`/`cv2.max`, a few ms per frame at 720p), so the median is ready the moment the last
frame comes in instead of costing a ~1 s `np.median` stall in the frame loop.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_MAX_STACK = 31  # frames kept for the median; longer captures are subsampled evenly


class MedianCapture:
    """Temporal median of `frames` consecutive frames (at most 31 of them combined)."""

    def __init__(self, frames: int) -> None:
        self.frames = max(1, frames)
        self._stride = math.ceil(self.frames / _MAX_STACK)
        self._stack: np.ndarray | None = None
        self._spare: np.ndarray | None = None
        self._kept = 0
        self._seen = 0

    @property
    def done(self) -> bool:
        return self._seen >= self.frames

    @property
    def seen(self) -> int:
        return self._seen

    def add(self, image: np.ndarray) -> None:
        """Take one BGR frame; every `stride`-th one is inserted into the per-pixel sorted stack."""
        if self._seen % self._stride == 0:
            self._insert(image)
        self._seen += 1

    def _insert(self, image: np.ndarray) -> None:
        if self._stack is None:
            depth = math.ceil(self.frames / self._stride)
            self._stack = np.empty((depth, *image.shape), np.uint8)
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
