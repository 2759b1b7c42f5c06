"""Is the scene empty? Evidence that does not depend on the plate being right.

The main evidence is stillness: frame differencing on the coarse grid against the frame a few
frames back (so slow movements register too, while a lighting ramp of a few percent per second
stays under the threshold). Thresholds come from the calibrated noise when a profile exists,
else from a live robust estimate: the median absolute frame difference over the cells that
changed at all. Compressed video repeats unchanged blocks, so most differences of an MPEG-4 or
H.264 stream are exactly 0 (62 % on `vtest.avi`) and a plain median collapses to the floor
while the noise is ~1 level on the grid (~1.8 at full resolution); a camera that repeats
nothing has (almost) no exact zeros, so leaving them out changes nothing there. OpenCV's HOG people
detector is an optional veto, run only at the moment a capture would start.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import cv2
import numpy as np

from edge_matte.config.profile import Profile
from edge_matte.plate.grid import Grid

_LOG = logging.getLogger(__name__)
_QUANTISATION = 0.29  # std of rounding the shrunken image to integers
_DEFAULT_SIGMA = 2.0  # full-resolution sensor noise assumed until measured
_MOVING_FRACTION = 0.0005  # cells that must change for a frame to count as motion
_ESTIMATE_EVERY = 8  # frames between live noise estimates
_REPEATED = (
    1e-3  # a grid-luma difference below this is a codec's repeated block, not a noise sample
)
_MIN_NOISE_SAMPLES = 64  # fewer changed cells than this (a static clip) leave the estimate alone
_MAD_TO_SIGMA = 1.4826  # median absolute deviation of a Gaussian -> its standard deviation
_NOISE_MEMORY = 0.1  # each estimate moves the running one by this share
_MIN_SIGMA, _MAX_SIGMA = 0.3, 20.0  # grid-luma noise bounds (levels)
_MOTION_SIGMAS = 5.0  # motion: a frame difference beyond 5 sigma of the difference of two frames
_MIN_MOTION = 3.0  # levels; never lower, whatever the noise estimate
_PLATE_SIGMAS, _MIN_PLATE = 6.0, 4.0  # a cell differs from the plate beyond 6 sigma, >= 4 levels
_EMPTY_SIGMAS, _MIN_EMPTY = 2.5, 1.5  # mean frame-to-plate difference of a scene that matches
_VETO_WIDTH = 640  # HOG runs on the frame scaled to at most this width
_VETO_WEIGHT = 0.5  # HOG detections weaker than this are ignored


class NoiseModel:
    """Noise of the grid's luma (std, 8-bit levels) and the thresholds derived from it."""

    def __init__(self, grid: Grid, profile: Profile | None = None) -> None:
        averaged = min(grid.factor, 4)  # the two-step shrink averages at most 4x4 pixels
        full_sigma = float(np.mean(profile.noise_sigma)) if profile else _DEFAULT_SIGMA
        self.sigma = math.hypot(full_sigma / averaged, _QUANTISATION)
        self._fixed = profile is not None
        self._empty = profile.empty_threshold if profile else None

    def observe(self, frame_difference: np.ndarray) -> None:
        """Refine the estimate from a frame-to-frame luma difference (skipped with a profile).

        The median of the changed cells is the noise even while someone moves, as long as they
        cover under half of them; exact zeros (blocks the codec repeated) are no evidence.
        """
        if self._fixed:
            return
        sample = frame_difference[::2, ::2]
        changed = sample[sample > _REPEATED]
        if changed.size < _MIN_NOISE_SAMPLES:
            return
        estimate = _MAD_TO_SIGMA * float(np.median(changed)) / math.sqrt(2.0)
        blended = (1.0 - _NOISE_MEMORY) * self.sigma + _NOISE_MEMORY * estimate
        self.sigma = min(max(blended, _MIN_SIGMA), _MAX_SIGMA)

    @property
    def motion_threshold(self) -> float:
        """Luma change between two frames that counts as motion in a cell."""
        return max(_MIN_MOTION, _MOTION_SIGMAS * math.sqrt(2.0) * self.sigma)

    @property
    def plate_threshold(self) -> float:
        """Colour difference to the plate that counts as a changed cell."""
        return max(_MIN_PLATE, _PLATE_SIGMAS * self.sigma)

    @property
    def empty_difference(self) -> float:
        """Mean frame-to-plate difference under which the scene matches the plate."""
        if self._empty is not None:
            return self._empty
        return max(_MIN_EMPTY, _EMPTY_SIGMAS * self.sigma)


class StillnessDetector:
    """Counts consecutive still frames and remembers whether the scene has ever changed."""

    def __init__(self, grid: Grid, noise: NoiseModel, fps: float) -> None:
        self._noise = noise
        self._history: deque[np.ndarray] = deque(maxlen=max(1, round(fps / 6)) + 1)
        self._min_cells = max(3, round(grid.cells * _MOVING_FRACTION))
        self._frames = 0
        self.moving = np.zeros(grid.size[::-1], np.uint8)
        self.still_frames = 0
        self.motion_seen = False

    def update(self, luma: np.ndarray) -> bool:
        """Feed one frame's grid luma; return True when it shows motion."""
        self._history.append(luma)
        self._frames += 1
        if len(self._history) < 2:
            return False
        difference = cv2.absdiff(luma, self._history[0])
        if self._frames % _ESTIMATE_EVERY == 0:
            self._noise.observe(difference)
        self.moving = (difference > self._noise.motion_threshold).astype(np.uint8)
        if cv2.countNonZero(self.moving) >= self._min_cells:
            self.still_frames = 0
            self.motion_seen = True
            return True
        self.still_frames += 1
        return False

    def restart(self) -> None:
        """Start counting stillness again (after a veto or an aborted capture)."""
        self.still_frames = 0


def coverage(alpha_small: np.ndarray) -> float:
    """Fraction of grid cells that are mostly foreground."""
    return float(np.count_nonzero(alpha_small > 0.5)) / alpha_small.size


class PersonVeto:
    """OpenCV's built-in HOG people detector, loaded on first use (it costs tens of ms per call).

    OpenCV 5 moved HOG out of the main package; without it the veto is off, with one warning.
    """

    def __init__(self) -> None:
        self._hog: Any = None  # a cv2.HOGDescriptor: OpenCV 5 and its type stubs have none
        self._missing = False

    @property
    def available(self) -> bool:
        return hasattr(cv2, "HOGDescriptor")

    def present(self, image: np.ndarray) -> bool:
        """True when a person is detected anywhere in the BGR frame."""
        if self._hog is None:
            if not self.available:
                if not self._missing:
                    _LOG.warning(
                        "person_veto: this OpenCV (%s) has no HOG detector; veto off",
                        cv2.__version__,
                    )
                    self._missing = True
                return False
            opencv: Any = cv2  # OpenCV 4's HOG, untyped (see above)
            self._hog = opencv.HOGDescriptor()
            self._hog.setSVMDetector(opencv.HOGDescriptor_getDefaultPeopleDetector())
        scale = min(1.0, _VETO_WIDTH / image.shape[1])
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        _, weights = self._hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        found = bool(len(weights)) and float(np.max(weights)) > _VETO_WEIGHT
        if found:
            _LOG.info(
                "person detector vetoed a plate capture (weight %.2f)", float(np.max(weights))
            )
        return found
