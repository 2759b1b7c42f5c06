"""Making a new plate while the keeper is capturing: a median when the scene allows, per-pixel meanwhile.

The median starts once the keeper judges the scene empty (or at once when asked by hand) and is
abandoned if motion returns before its frames are in (a manual capture is never abandoned). While
there is no plate at all, the per-pixel builder runs whenever no median is being taken, so a scene
that never empties still gets a plate; whichever finishes first wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .build import MedianCapture, PixelBuilder

_LOG = logging.getLogger(__name__)
_READY_KNOWN = 0.98  # a per-pixel plate is used once this much is known
_KNOWN_CHECK_EVERY = 10  # frames between known-fraction checks


@dataclass(frozen=True)
class NewPlate:
    """A plate just made, and how."""

    image: np.ndarray
    method: str  # "median" or "per-pixel"
    known_fraction: float
    how: str  # for the event message


class PlateMaker:
    """Runs the median capture and the per-pixel builder for one capturing period."""

    def __init__(self, capture_frames: int) -> None:
        self._capture_frames = capture_frames
        self._median: MedianCapture | None = None
        self._manual = False
        self._builder: PixelBuilder | None = None
        self._frames = 0

    def request(self) -> None:
        """Capture the next frames whatever the scene does (manual capture)."""
        self._median = MedianCapture(self._capture_frames)
        self._manual = True

    def build(self, builder: PixelBuilder) -> None:
        """Also build per pixel (there is no plate to fall back on)."""
        if self._builder is None:
            self._builder = builder

    @property
    def building(self) -> PixelBuilder | None:
        return self._builder

    def step(
        self,
        image: np.ndarray,
        small: np.ndarray,
        moving: np.ndarray,
        motion: bool,
        automatic: bool,
        empty: Callable[[], bool],
    ) -> NewPlate | None:
        """One frame: `moving` grid mask, `motion` this frame; `empty()` is asked only when needed."""
        self._frames += 1
        if self._median is not None and motion and not self._manual:
            _LOG.info("motion during plate capture: waiting for stillness again")
            self._median = None
        if self._median is None and automatic and empty():
            self._median = MedianCapture(self._capture_frames)
        if self._median is not None:  # the scene is empty: the per-pixel builder can pause
            return self._take(image)
        if self._builder is not None and automatic:
            return self._build(image, small, moving)
        return None

    def _take(self, image: np.ndarray) -> NewPlate | None:
        self._median.add(image)
        if not self._median.done:
            return None
        how = f"median of {self._median.seen} frames" + (" (manual)" if self._manual else "")
        return NewPlate(self._median.median(), "median", 1.0, how)

    def _build(self, image: np.ndarray, small: np.ndarray, moving: np.ndarray) -> NewPlate | None:
        self._builder.add(image, small, moving)
        if self._frames % _KNOWN_CHECK_EVERY or self._builder.known_fraction < _READY_KNOWN:
            return None
        plate, known = self._builder.plate()
        how = f"per-pixel from a busy scene, {known * 100:.1f}% known, the rest inpainted"
        return NewPlate(plate, "per-pixel", known, how)
