"""Per-frame care of the plate in use: gain, drift, camera alignment and the slow update.

All of it works on the coarse grid except the slow update (every 4th frame, masked, in C) and a
confirmed camera shift (measured once at full resolution). Background cells are those the matte
calls background (alpha ~ 0, eroded by a cell) that are not moving; without a matte (the engine
was skipped because the scene matched the plate) every still cell is background.

Rates are per second of plate time (`clock`): alignment is checked `_ALIGN_PER_S` times a
second, and the slow update pulls as far per second as `update_rate` per nominal frame would,
however many frames were dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_matte.config.schema import PlateConfig
from edge_matte.frames import Frame
from edge_matte.plate.align import MIN_RESPONSE, Shift, ShiftEstimator
from edge_matte.plate.clock import periods
from edge_matte.plate.detect import NoiseModel
from edge_matte.plate.drift import measure_gain, rate_for
from edge_matte.plate.grid import Grid, colour_difference, grow
from edge_matte.plate.live import LivePlate

BACKGROUND_ALPHA = 0.02  # matte alpha under which a cell is background
_UPDATE_EVERY = 4  # frames between slow updates (the rate is scaled to the time they span)
_ALIGN_PER_S = 10.0  # alignment checks per second
_MIN_SHIFT_PX = 1.0  # smaller translations are left alone
_SHIFT_AGREE_PX = 1.0  # two checks this close confirm a shift
_MIN_DRIFT_CELLS = 0.01  # below this background fraction drift is the median over all cells


@dataclass
class View:
    """One frame on the grid, computed once per frame."""

    key: tuple[int, float]
    small: np.ndarray  # uint8 BGR grid image
    luma: np.ndarray  # float32
    cost_s: float = 0.0
    difference: np.ndarray | None = None  # per-cell colour difference to the plate
    changed: float = 1.0  # fraction of cells beyond the plate threshold

    @property
    def mean_difference(self) -> float:
        return math.inf if self.difference is None else float(self.difference.mean())


def compare(view: View, live: LivePlate | None, noise: NoiseModel) -> None:
    """Fill in the view's difference to the plate (in the plate's current light)."""
    if live is None:
        view.difference, view.changed = None, 1.0
    else:
        compare_to(view, live, noise)


def compare_to(view: View, live: LivePlate, noise: NoiseModel) -> np.ndarray:
    """`compare` with a plate: also return the difference it filled in."""
    difference = colour_difference(view.small, live.small())
    view.difference = difference
    view.changed = float(np.mean(difference > live.threshold(noise.plate_threshold)))
    return difference


def clear_cells(alpha: np.ndarray) -> np.ndarray:
    """uint8 grid mask of cells with alpha ~ 0."""
    return (alpha < BACKGROUND_ALPHA).astype(np.uint8)


def background_cells(moving: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """uint8 grid mask of cells that are background now: not moving and (per matte) alpha ~ 0."""
    still = 1 - grow(moving)
    if alpha is None:
        return still
    return still & cv2.erode(clear_cells(alpha), np.ones((3, 3), np.uint8))


class Upkeep:
    """Keeps one plate right frame by frame; reports a confirmed camera shift to the caller."""

    def __init__(self, grid: Grid, noise: NoiseModel, config: PlateConfig, fps: float) -> None:
        """`fps`: the nominal rate `update_rate` is given per frame of."""
        self._noise = noise
        self._config = config
        self._aligner = ShiftEstimator(grid)
        self._fps = fps
        self._pending: Shift | None = None
        self._frames = 0
        self._aligned_slot = -1  # the alignment period of the last check
        self._last_now: float | None = None
        self._unblended_s = 0.0  # plate seconds of frames since the last slow update
        self.drift = 0.0  # mean difference to the plate over background cells, 8-bit levels

    def reset(self) -> None:
        """Forget per-plate state (a new plate was installed)."""
        self._pending = None
        self._unblended_s = 0.0
        self.drift = 0.0

    def step(
        self,
        live: LivePlate,
        frame: Frame,
        view: View,
        alpha: np.ndarray | None,
        moving: np.ndarray,
        frozen: bool,
        now: float,
    ) -> Shift | None:
        """One frame of care at plate time `now`; return a confirmed camera shift (full
        resolution) when there is one."""
        self._frames += 1
        self._unblended_s += now - self._last_now if self._last_now is not None else 1 / self._fps
        self._last_now = now
        background = background_cells(moving, alpha)
        gain = measure_gain(view.small, live.base_small, cv2.bitwise_and(background, live.trusted))
        if gain is not None:
            live.set_gain(gain)
        difference = compare_to(view, live, self._noise)
        self._measure_drift(difference, background)
        if self._alignment_due(now) or self._pending is not None:
            moved = self._check_alignment(live, frame, view, alpha)
            if moved is not None or self._pending is not None:
                self._unblended_s = 0.0  # no slow update while the frame may not line up
                return moved
        if frozen or self._config.update_rate == 0:
            self._unblended_s = 0.0
        elif self._frames % _UPDATE_EVERY == 0:
            threshold = live.threshold(self._noise.plate_threshold)
            unchanged = (difference <= threshold).astype(np.uint8)
            rate = rate_for(self._config.update_rate, self._unblended_s * self._fps)
            self._unblended_s = 0.0
            live.update(frame.image, view.small, background & unchanged, background, rate)
        return None

    def _alignment_due(self, now: float) -> bool:
        """True on the first frame of each alignment period (`1 / _ALIGN_PER_S` s)."""
        slot = periods(now, 1.0 / _ALIGN_PER_S)
        due, self._aligned_slot = slot > self._aligned_slot, max(slot, self._aligned_slot)
        return due

    def _measure_drift(self, difference: np.ndarray, background: np.ndarray) -> None:
        cells = background.astype(bool)
        if cells.mean() > _MIN_DRIFT_CELLS:
            self.drift = float(difference[cells].mean())
        else:
            self.drift = float(np.median(difference))

    def _check_alignment(
        self, live: LivePlate, frame: Frame, view: View, alpha: np.ndarray | None
    ) -> Shift | None:
        """Two agreeing grid estimates confirm a shift, which is then measured at full resolution."""
        clear = None if alpha is None else clear_cells(alpha)
        shift = self._aligner.estimate(live.luma, view.luma, clear)
        if shift.response < MIN_RESPONSE or shift.length < _MIN_SHIFT_PX:
            self._pending = None
            return None
        pending, self._pending = self._pending, shift
        if (
            pending is None
            or math.hypot(shift.dx - pending.dx, shift.dy - pending.dy) > _SHIFT_AGREE_PX
        ):
            return None
        self._pending = None
        fine = self._aligner.refine(live.image(), frame.image, clear, shift)
        # The grid can be fooled where the matte calls a moving subject background; the
        # full-resolution measure has the last word, with the same floor.
        return fine if fine.length >= _MIN_SHIFT_PX else None
