"""Keeping a plate right while light changes: global gain, and a slow update of visible background.

Exposure and daylight mostly scale the whole room, so each frame the per-channel gain from the
captured plate to the frame is measured as the median ratio over background cells (robust to the
few cells a matte gets wrong) and applied to the plate the engine sees. What a global gain cannot
explain (a lamp switched on in one corner) is absorbed by a running average on background pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

_MIN_SAMPLES = 200
_MAX_SAMPLES = 4096
_DARK, _BRIGHT = 16.0, 240.0  # ratios of dark or near-clipped values are too noisy or biased
_CLIPPED = 249  # uint8 frame values above this may be clipped


def gain_cells(base_small: np.ndarray) -> np.ndarray:
    """uint8 mask of plate cells whose ratio to the frame is trustworthy (neither dark nor bright)."""
    return cv2.inRange(base_small, (_DARK,) * 3, (_BRIGHT,) * 3)


def measure_gain(
    small: np.ndarray, base_small: np.ndarray, usable: np.ndarray
) -> np.ndarray | None:
    """Per-channel gain (B, G, R) from the uncorrected plate to the frame, on grid images.

    `usable` marks cells known to be background whose plate value is trustworthy (see
    `gain_cells`); None when too few are left to trust a median.
    """
    unclipped = cv2.inRange(small, (0, 0, 0), (_CLIPPED,) * 3)
    index = np.flatnonzero(cv2.bitwise_and(usable, unclipped))
    if index.size < _MIN_SAMPLES:
        return None
    index = index[:: max(1, index.size // _MAX_SAMPLES)]
    ratio = small.reshape(-1, 3)[index].astype(np.float32) / base_small.reshape(-1, 3)[index]
    return np.median(ratio, axis=0).astype(np.float32)


def blend(base: np.ndarray, target: np.ndarray, mask: np.ndarray, rate: float) -> None:
    """In place: base += rate * (target - base) where uint8 `mask` is set (float32 images)."""
    cv2.accumulateWeighted(target, base, rate, mask=mask)


def rate_for(rate_per_frame: float, frames: float) -> float:
    """The rate that, applied once every `frames` frames (a fraction where frames were dropped),
    matches `rate_per_frame` applied each frame."""
    return 1.0 - (1.0 - rate_per_frame) ** frames
