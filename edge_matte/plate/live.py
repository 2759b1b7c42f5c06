"""The plate in use: captured pixels, the gain that maps them to today's light, and their alignment.

The engine gets `image()`: the plate scaled to the current per-channel gain, recomputed only when
the gain moves by more than ~0.2%. Grid copies of
the base (colour and luma) are kept alongside so the per-frame checks never touch full resolution.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from edge_matte.frames import PlateImage
from edge_matte.plate.align import translate, uncovered
from edge_matte.plate.drift import blend, gain_cells
from edge_matte.plate.grid import Grid, grey

_GAIN_STEPS = 512  # gain changes smaller than 1/512 reuse the cached corrected image


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


class LivePlate:
    """One plate and everything known about how it was made and how it was kept since.

    `gain` is the light now relative to the moment of capture. The float `base` is kept in the
    light of its last update (`base_gain`), so the slow update can blend raw frames into it
    without a full-resolution division; the engine's image applies the remaining ratio.
    """

    def __init__(
        self,
        image: np.ndarray,
        grid: Grid,
        method: str,
        known_fraction: float = 1.0,
        created: float | None = None,
    ) -> None:
        self.base: np.ndarray = image.astype(np.float32)
        self.method = method
        self.known_fraction = known_fraction
        self.created = time.time() if created is None else created
        self.gain = np.ones(3, np.float32)
        self.base_gain = np.ones(3, np.float32)
        self.shift = (0.0, 0.0)
        self.unknown: np.ndarray | None = None  # uint8 mask of pixels with no real data yet
        self.variability: np.ndarray | None = None  # uint8 per pixel: how much it moves when empty
        self._variability_small: tuple[np.ndarray, np.ndarray] | None = None  # (map, grid copy)
        self._grid = grid
        self._base_u8: np.ndarray | None = _frozen(image.copy())
        self._image: np.ndarray | None = None
        self._image_key: tuple[int, ...] = ()
        self._refresh_small()

    def _refresh_small(self) -> None:
        self.base_small = self._grid.shrink(self.base)
        self._small_changed()

    def _small_changed(self) -> None:
        self.luma = grey(self.base_small)
        self.trusted = gain_cells(self.base_small)  # cells usable for measuring the gain
        self._small: tuple[np.ndarray, np.ndarray] | None = None  # (light ratio, grid copy in it)

    def _ratio(self) -> np.ndarray:
        """Per-channel factor from the base's light to the current light."""
        return self.gain / self.base_gain

    def threshold(self, noise_threshold: float) -> float | np.ndarray:
        """Per-cell colour difference to the plate that counts as a change: the noise threshold,
        raised where the variability map says the background moves by itself (leaves, a screen),
        so the emptiness test and the slow update see a swaying branch as the room."""
        if self.variability is None:
            return noise_threshold
        if self._variability_small is None or self._variability_small[0] is not self.variability:
            pooled = cv2.dilate(self.variability, np.ones((self._grid.factor,) * 2, np.uint8))
            self._variability_small = (self.variability, self._grid.shrink(pooled))
        return np.maximum(
            np.float32(noise_threshold), self._variability_small[1].astype(np.float32)
        )

    def set_gain(self, measured: np.ndarray) -> None:
        """Take a gain measured against `base_small` (see `drift.measure_gain`)."""
        self.gain = (self.base_gain * measured).astype(np.float32)

    def image(self) -> np.ndarray:
        """The plate in the current light (read-only BGR uint8; a `PlateImage` with the
        variability map when one was measured)."""
        key = tuple(int(v) for v in np.round(self._ratio() * _GAIN_STEPS))
        if self._image is None or key != self._image_key:
            if self._base_u8 is None:
                self._base_u8 = _frozen(cv2.convertScaleAbs(self.base))
            if all(v == _GAIN_STEPS for v in key):
                self._image = self._base_u8
            else:
                matrix = np.diag(np.array(key, np.float32) / _GAIN_STEPS)
                self._image = _frozen(cv2.transform(self._base_u8, matrix))
            self._image_key = key
            if self.variability is not None:
                self._image = _frozen(PlateImage.of(self._image, self.variability))
        return self._image

    def small(self) -> np.ndarray:
        """The grid copy in the current light (float32 BGR)."""
        ratio = self._ratio()
        if self._small is None or not np.array_equal(self._small[0], ratio):
            self._small = (ratio, cv2.transform(self.base_small, np.diag(ratio)))
        return self._small[1]

    def update(
        self, frame: np.ndarray, small: np.ndarray, cells: np.ndarray, fill: np.ndarray, rate: float
    ) -> None:
        """Pull the plate towards the frame where uint8 grid mask `cells` is set.

        Pixels with no real data yet (uncovered by a realignment) take the frame's value outright
        where `fill` (background, possibly differing from the plate) is set.
        """
        ratio = self._ratio()
        if np.any(np.abs(ratio - 1.0) * _GAIN_STEPS >= 1.0):
            self.base = cv2.transform(self.base, np.diag(ratio))
            self.base_small = cv2.transform(self.base_small, np.diag(ratio))
            self.base_gain = self.gain.copy()
        blend(self.base, frame, self._grid.expand(cells), rate)
        if self.unknown is not None:
            known = self._grid.expand(fill)
            blend(self.base, frame, cv2.bitwise_and(self.unknown, known), 1.0)
            unset = cv2.compare(known, 0, cv2.CMP_EQ)  # type: ignore[call-overload]  # OpenCV takes a scalar; its stubs do not
            self.unknown = cv2.bitwise_and(self.unknown, unset)
            if not cv2.countNonZero(self.unknown):
                self.unknown = None
        blend(self.base_small, small, cells, rate)
        self._small_changed()
        self._changed()

    def _changed(self) -> None:
        self._base_u8 = None
        self._image = None

    def warp(self, dx: float, dy: float) -> None:
        """Move the plate by (dx, dy) pixels to follow the camera; the uncovered strip is unknown."""
        height, width = self.base.shape[:2]
        self.base = translate(self.base, dx, dy)
        exposed = uncovered(width, height, dx, dy)
        if self.unknown is not None:
            exposed = cv2.bitwise_or(translate(self.unknown, dx, dy), exposed)
        self.unknown = exposed if cv2.countNonZero(exposed) else None
        if self.variability is not None:
            self.variability = translate(self.variability, dx, dy)
        self.shift = (self.shift[0] + dx, self.shift[1] + dy)
        self._refresh_small()
        self._changed()
