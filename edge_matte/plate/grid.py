"""The coarse grid every plate decision is made on: about 320 pixels wide, whatever the camera.

Stillness, coverage, gain, drift and alignment only need a few thousand samples, so the plate
keeper shrinks each frame once (about 0.2 ms at 720p) and reasons per cell; only capture, the
slow update and warping touch full-resolution pixels. Shrinking also averages sensor noise away,
which makes the thresholds tighter and phase correlation (which whitens the spectrum and would
otherwise lock onto noise) reliable.
"""

from __future__ import annotations

import cv2
import numpy as np

_TARGET_WIDTH = 320
_MIN_FACTOR = 2  # always average at least 2x2 pixels per cell


class Grid:
    """Maps a full-resolution frame of `width` x `height` to cells of `factor` x `factor` pixels."""

    def __init__(self, width: int, height: int) -> None:
        self.full = (int(width), int(height))
        self.factor = max(_MIN_FACTOR, round(width / _TARGET_WIDTH))
        self.size = (max(width // self.factor, 8), max(height // self.factor, 8))

    @property
    def cells(self) -> int:
        return self.size[0] * self.size[1]

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """Downscale an image or alpha map to the grid; a bilinear pre-step keeps large factors cheap."""
        width, height = self.size
        if self.factor >= 4:
            image = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)

    def expand(self, mask: np.ndarray) -> np.ndarray:
        """Nearest-neighbour upscale of a per-cell uint8 mask to full resolution."""
        return cv2.resize(mask, self.full, interpolation=cv2.INTER_NEAREST)


def grey(small_bgr: np.ndarray) -> np.ndarray:
    """float32 luma of a (small) BGR image."""
    return cv2.cvtColor(small_bgr.astype(np.float32), cv2.COLOR_BGR2GRAY)


_CHANNEL_MEAN = np.full((1, 3), 1.0 / 3.0, np.float32)


def colour_difference(small: np.ndarray, plate_small: np.ndarray) -> np.ndarray:
    """Per-cell mean absolute BGR difference, float32 in 8-bit levels."""
    return cv2.transform(cv2.absdiff(small.astype(np.float32), plate_small), _CHANNEL_MEAN)


def grow(mask: np.ndarray, cells: int = 1) -> np.ndarray:
    """Dilate a uint8 per-cell mask by `cells` in every direction."""
    kernel = np.ones((2 * cells + 1, 2 * cells + 1), np.uint8)
    return cv2.dilate(mask, kernel)
