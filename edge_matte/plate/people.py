"""Where people are in a frame: OpenCV's HOG pedestrian detector, a few times a second.

Motion alone cannot tell someone who stands still from the room: after a while they are as still
as the wall behind them. A people detector can. HOG with OpenCV's bundled linear SVMs is the
detector every OpenCV 4 wheel carries (no weights to download); OpenCV 5 moved it out of the main
module, so where it is missing this evidence is off (`available` says why) and the plate works
from motion alone.

* **Which model.** The Daimler detector (48x96 window) finds people from about 100 px tall at
  the working width; the default one (64x128) misses the 70-90 px passers-by of a street camera
  (`vtest.avi`: it covers a group standing for 10 s in 8 of 20 checks, Daimler in 19).
* **Cheap enough.** Frames are scaled to at most `WORK_WIDTH` pixels wide (a person closer than
  about 6 m to a 720p camera is still 100 px tall there), which bounds a call (50-100 ms here)
  whatever the camera; `PeopleWatch` runs it at most `HZ` times a second, on a worker thread in
  the daemon, so the frame loop never waits for it.
* **Boxes grown a little.** HOG's window already leaves a margin round the person (about a
  quarter of its width on each side); each side is grown by another tenth of the width and a
  twentieth of the height, for an arm or a bag. Wider boxes only take more still background out
  of the evidence (see `estimator`).
* **Only confident detections.** Weaker ones fire again and again on the same static things (a
  tripod, a doorway), which would hold those pixels unknown for ever.
"""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np

from edge_matte.plate.grid import Grid

_LOG = logging.getLogger(__name__)
WORK_WIDTH = 768  # frames are scaled down to at most this width before detection
_WINDOW = (48, 96)  # the Daimler detector's window
_MIN_WEIGHT = 1.5  # weaker detections are ignored (on vtest.avi 1 in 80 is wrong, at 0.5 2 in 5)
_GROW = (0.1, 0.05)  # each side grown by this share of the box's width, height
HZ = 1.0  # at most this many detections a second
_MAX_HOLD_S = 3.0  # a detection stands for the frames after it until a newer one, at most this long


def missing_reason() -> str | None:
    """Why this OpenCV has no HOG people detector, or None when it has one."""
    if hasattr(cv2, "HOGDescriptor") and hasattr(cv2, "HOGDescriptor_getDaimlerPeopleDetector"):
        return None
    return f"this OpenCV ({cv2.__version__}) has no HOG people detector (OpenCV 5 moved it out)"


class PeopleDetector:
    """Boxes around the people in a BGR frame (full-resolution pixel coordinates, grown)."""

    def __init__(self) -> None:
        if missing_reason() is not None:
            raise RuntimeError(missing_reason())
        self._hog = cv2.HOGDescriptor(_WINDOW, (16, 16), (8, 8), (8, 8), 9)
        daimler = cv2.HOGDescriptor_getDaimlerPeopleDetector()  # type: ignore[attr-defined]  # in OpenCV 4, not in its stubs
        self._hog.setSVMDetector(daimler)

    def boxes(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(x0, y0, x1, y1) of each person found, grown and clipped to the frame."""
        height, width = image.shape[:2]
        scale = min(1.0, WORK_WIDTH / width)
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found, weights = self._hog.detectMultiScale(
            image, winStride=(8, 8), padding=(8, 8), scale=1.05
        )
        boxes = []
        for (x, y, w, h), weight in zip(found, np.ravel(weights), strict=True):
            if weight < _MIN_WEIGHT:
                continue
            grow_x, grow_y = _GROW[0] * w, _GROW[1] * h
            x0, y0 = max(0, int((x - grow_x) / scale)), max(0, int((y - grow_y) / scale))
            x1 = min(width, int(np.ceil((x + w + grow_x) / scale)))
            y1 = min(height, int(np.ceil((y + h + grow_y) / scale)))
            boxes.append((x0, y0, x1, y1))
        return boxes


def grid_mask(boxes: list[tuple[int, int, int, int]], grid: Grid) -> np.ndarray:
    """uint8 grid mask (1 = a person) of every cell a box touches."""
    mask = np.zeros(grid.size[::-1], np.uint8)
    for x0, y0, x1, y1 in boxes:
        cells = (x0 // grid.factor, y0 // grid.factor, -(-x1 // grid.factor), -(-y1 // grid.factor))
        mask[cells[1] : cells[3], cells[0] : cells[2]] = 1
    return mask


class PeopleWatch:
    """Runs the detector on some of the frames offered, at most `HZ` times a second of frames.

    `threaded`: on a worker thread (the daemon: the frame loop never waits; a result arrives a
    few frames late and names the frame it was found on), else at once (offline builds, tests:
    deterministic). `take()` hands over each finished detection once.
    """

    def __init__(self, grid: Grid, fps: float, threaded: bool) -> None:
        self._detector = PeopleDetector()  # one each: two watches may detect at once
        self._grid = grid
        self._every = max(1, round(fps / HZ))
        self.hold = max(1, round(_MAX_HOLD_S * fps))  # frames a detection stands for, at most
        self._threaded = threaded
        self._next = 0
        self._worker: threading.Thread | None = None
        self._found: tuple[int, np.ndarray] | None = None
        self.calls = 0
        self.seconds = 0.0  # time spent detecting, for the cost per call

    def offer(self, index: int, image: np.ndarray) -> None:
        """Frame number `index`: detect on it when due and no detection is running."""
        busy = self._worker is not None and self._worker.is_alive()
        if index < self._next or busy or self._found is not None:
            return
        self._next = index + self._every
        if not self._threaded:
            self._detect(index, image)
            return
        self._worker = threading.Thread(
            target=self._detect, args=(index, image.copy()), name="plate-people", daemon=True
        )
        self._worker.start()

    def take(self) -> tuple[int, np.ndarray] | None:
        """The latest finished detection (frame number, uint8 grid mask), once; else None."""
        found, self._found = self._found, None
        return found

    def _detect(self, index: int, image: np.ndarray) -> None:
        started = time.perf_counter()
        mask = grid_mask(self._detector.boxes(image), self._grid)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self._found = (index, mask)
