"""Making a new plate while the keeper is capturing: a median when the scene allows, per-pixel meanwhile.

The median starts once the keeper judges the scene empty and is abandoned if motion returns
before its frames are in. A manual capture (`plate/capture`) is never abandoned and takes a
temporal estimate over `_MANUAL_S` seconds: the median of the samples where each pixel was
still, so people walking past do not become ghosts. While there is no plate at all, the
per-pixel estimator (`estimator`) runs whenever no median is being taken, so a scene that never
empties still gets a plate once `READY_KNOWN` of it is known; whichever finishes first wins.
The estimator is evaluated every `_ESTIMATE_EVERY_S`, or a tenth of the evidence's span once
that is longer (at most every `_MAX_EVERY_S`; all in plate time, see `clock`), about a second
of work at 576p with 64 samples: "inline" in the frame loop (deterministic, for tests),
"background" on a worker thread so the daemon's frame loop never stalls, or "final": never
while frames come (an offline build asks once, at the end).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_matte.plate.build import MedianCapture
from edge_matte.plate.clock import reached
from edge_matte.plate.estimator import MIN_SPAN_S, BackgroundEstimator, Estimate

_LOG = logging.getLogger(__name__)
Estimates = Literal["inline", "background", "final"]
READY_KNOWN = 0.9  # a per-pixel plate is installed once this much of it is known
_ESTIMATE_EVERY_S = 3.0  # seconds of frames between estimates while building...
_EVERY_SHARE = 0.1  # ...or this share of the evidence's span once that is longer...
_MAX_EVERY_S = 60.0  # ...up to this: an estimate costs a second, a plate that has settled less
_MANUAL_S = 3.0  # a manual capture estimates over at least this long


@dataclass(frozen=True)
class NewPlate:
    """A plate just made, and how."""

    image: np.ndarray
    method: str  # "median" or "per-pixel"
    known_fraction: float
    how: str  # for the event message
    variability: np.ndarray | None = None  # per pixel, uint8 levels; None when not measured


def from_estimate(estimate: Estimate, how: str) -> NewPlate:
    """A per-pixel plate from an estimate, saying how much of it is known."""
    known = estimate.known_fraction
    text = f"{how}, {known * 100:.1f}% known from {estimate.samples} samples"
    return NewPlate(estimate.plate, "per-pixel", known, text, estimate.variability)


class Evaluator:
    """Runs `estimate()` of one estimator now and then, in the frame loop or on a worker thread."""

    def __init__(self, estimator: BackgroundEstimator, mode: Estimates) -> None:
        self.estimator = estimator
        self._mode = mode
        self._last = 0.0  # the estimator's span at the last estimate
        self._worker: threading.Thread | None = None
        self._done: Estimate | None = None
        self.latest: Estimate | None = None

    def poll(self) -> Estimate | None:
        """A new estimate when one is ready (at most one per period)."""
        span = self.estimator.span_s
        if self._worker is not None and not self._worker.is_alive():
            self._worker, result, self._done = None, self._done, None
            return self._keep(result)
        if self._mode == "final" or self._worker is not None:
            return None
        every = min(max(_ESTIMATE_EVERY_S, _EVERY_SHARE * span), _MAX_EVERY_S)
        if not reached(span, MIN_SPAN_S) or not reached(span - self._last, every):
            return None
        self._last = span
        if self._mode == "inline":
            return self._keep(self.estimator.estimate())
        self._worker = threading.Thread(target=self._run, name="plate-estimate", daemon=True)
        self._worker.start()
        return None

    def _run(self) -> None:
        self._done = self.estimator.estimate()

    def _keep(self, estimate: Estimate | None) -> Estimate | None:
        if estimate is not None:
            self.latest = estimate
        return estimate


class PlateMaker:
    """Runs the median capture and the per-pixel estimator for one capturing period."""

    def __init__(self, capture_frames: int, fps: float, estimates: Estimates = "inline") -> None:
        """`fps`: the nominal rate; a median capture lasts `capture_frames` frames of it."""
        self._capture_frames = capture_frames
        self._interval = 1.0 / fps
        self._estimates = estimates
        self._median: MedianCapture | None = None
        self._manual: Callable[[], BackgroundEstimator] | BackgroundEstimator | None = None
        self._builder: Evaluator | None = None

    def request(self, estimator: Callable[[], BackgroundEstimator]) -> None:
        """Estimate from the next few seconds whatever the scene does (manual capture); the
        estimator is made on the next frame (the frame size may not be known yet)."""
        self._median = None
        self._manual = estimator

    def build(self, estimator: BackgroundEstimator) -> None:
        """Also build per pixel (there is no plate to fall back on)."""
        if self._builder is None:
            self._builder = Evaluator(estimator, self._estimates)

    @property
    def building(self) -> Evaluator | None:
        return self._builder

    def step(
        self,
        image: np.ndarray,
        small: np.ndarray,
        moving: np.ndarray,
        now: float,
        motion: bool,
        automatic: bool,
        empty: Callable[[], bool],
    ) -> NewPlate | None:
        """One frame at plate time `now`: `moving` grid mask, `motion` this frame; `empty()` is
        asked only when needed."""
        if self._manual is not None:
            return self._take_manual(self._manual, image, small, moving, now)
        if self._median is not None and motion:
            _LOG.info("motion during plate capture: waiting for stillness again")
            self._median = None
        if self._median is None and automatic and empty():
            self._median = MedianCapture(self._capture_frames, self._interval)
        if self._median is not None:  # the scene is empty: the per-pixel builder can pause
            return self._take(self._median, image, now)
        if self._builder is not None and automatic:
            return self._build(self._builder, image, small, moving, now)
        return None

    def _take(self, median: MedianCapture, image: np.ndarray, now: float) -> NewPlate | None:
        median.add(image, now)
        if not median.done:
            return None
        return NewPlate(median.median(), "median", 1.0, f"median of {median.seen} frames")

    def _take_manual(
        self,
        manual: Callable[[], BackgroundEstimator] | BackgroundEstimator,
        image: np.ndarray,
        small: np.ndarray,
        moving: np.ndarray,
        now: float,
    ) -> NewPlate | None:
        estimator = manual if isinstance(manual, BackgroundEstimator) else manual()
        self._manual = estimator
        estimator.add(image, small, moving, now)
        if estimator.frames < self._capture_frames or not reached(estimator.span_s, _MANUAL_S):
            return None
        self._manual = None
        estimate = estimator.estimate()
        plate = from_estimate(estimate, f"manual, still samples of {estimator.frames} frames")
        return NewPlate(plate.image, "median", plate.known_fraction, plate.how, plate.variability)

    def _build(
        self,
        builder: Evaluator,
        image: np.ndarray,
        small: np.ndarray,
        moving: np.ndarray,
        now: float,
    ) -> NewPlate | None:
        builder.estimator.add(image, small, moving, now)
        estimate = builder.poll()
        if estimate is None or estimate.known_fraction < READY_KNOWN:
            return None
        return from_estimate(estimate, "per-pixel from a busy scene")
