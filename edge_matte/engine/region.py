"""Subject-region inference: run the matting engine only where foreground can be.

With a plate, a pixel can only be foreground where the frame differs from the plate (someone is
there) or where the subject was a frame ago (a part of them that matches the plate's colour).
`RegionEngine` crops one rectangle around both, grown by a margin and aligned to the base
network's grid, runs the inner engine on the crop and pastes the result into an all-zero alpha
(foreground = the frame outside); a guard band inside the crop's edges, where convolutions saw
zero padding, is set to 0. When the box would cover most of the frame the whole frame runs.
How close the crop's alpha is to the whole frame's, measured: docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_matte.engine import MattingEngine
from edge_matte.engine.torch_engine import check_images, immutable
from edge_matte.frames import Matte
from edge_matte.model.refiner import PATCH

_LOG = logging.getLogger(__name__)

OUTPUT_STRIDE = 16  # base-network pixels per cell of the encoder's deepest features
_BLOCK = 8  # the plate difference is judged on 8x8 block means of |frame - plate|
# Last-frame alpha above this (visible in 8-bit output) keeps its place in the next region.
_ALPHA_ON = 1.0 / 255


@dataclass(frozen=True)
class Box:
    """A rectangle of frame pixels, bottom and right exclusive."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index an H x W (x C) array with this."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def moved(self, dy: int, dx: int) -> Box:
        return Box(self.top + dy, self.left + dx, self.bottom + dy, self.right + dx)

    def inset(self, by: int, height: int, width: int) -> Box:
        """Shrunk by `by` on every side that is not on the edge of a height x width frame."""
        return Box(
            self.top + (by if self.top > 0 else 0),
            self.left + (by if self.left > 0 else 0),
            self.bottom - (by if self.bottom < height else 0),
            self.right - (by if self.right < width else 0),
        )

    def union(self, other: Box | None) -> Box:
        if other is None:
            return self
        return Box(
            min(self.top, other.top),
            min(self.left, other.left),
            max(self.bottom, other.bottom),
            max(self.right, other.right),
        )


def alignment(backbone_scale: float) -> int:
    """Frame pixels between crop corners that keep the base network's grid (64 at scale 1/4).

    Exact for scales 1/n; for other scales the resize itself samples differently per crop size.
    """
    pixels = math.ceil(OUTPUT_STRIDE / backbone_scale - 1e-9)
    return -(-pixels // PATCH) * PATCH


def difference_box(image: np.ndarray, plate: np.ndarray, threshold: float) -> Box | None:
    """Box around the 8x8 blocks whose mean |frame - plate| exceeds `threshold` in any channel.

    Block means keep it cheap (about a millisecond at 720p) and ignore single noisy pixels,
    while a mean of absolute differences still sees texture that changed.
    """
    height, width = image.shape[:2]
    size = (max(width // _BLOCK, 1), max(height // _BLOCK, 1))
    blocks = cv2.resize(cv2.absdiff(image, plate), size, interpolation=cv2.INTER_AREA)
    mask = blocks.max(axis=2) > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    sy, sx = height / size[1], width / size[0]
    return Box(
        math.floor(rows[0] * sy),
        math.floor(cols[0] * sx),
        min(math.ceil((rows[-1] + 1) * sy), height),
        min(math.ceil((cols[-1] + 1) * sx), width),
    )


def alpha_box(alpha: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Box | None:
    """Box around alpha above 1/255, in frame pixels (`offset`: where `alpha` sits in the frame)."""
    on = alpha > _ALPHA_ON
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if rows.size == 0:
        return None
    top, left = offset
    return Box(
        top + int(rows[0]), left + int(cols[0]), top + int(rows[-1]) + 1, left + int(cols[-1]) + 1
    )


def expand(box: Box, margin: int, align: int, min_size: int, height: int, width: int) -> Box:
    """Grow `box` by `margin`, to at least `min_size` a side, then outward to the `align` grid."""
    top, bottom = _span(box.top, box.bottom, margin, align, min_size, height)
    left, right = _span(box.left, box.right, margin, align, min_size, width)
    return Box(top, left, bottom, right)


def _span(
    start: int, end: int, margin: int, align: int, min_size: int, limit: int
) -> tuple[int, int]:
    start, end = max(start - margin, 0), min(end + margin, limit)
    short = min(min_size, limit) - (end - start)
    if short > 0:  # grow both ways, shifting what does not fit at one edge to the other
        start = max(start - short // 2, 0)
        end = min(start + min(min_size, limit), limit)
        start = min(start, end - min(min_size, limit))
    return start // align * align, min(-(-end // align) * align, limit)


class RegionEngine:
    """A MattingEngine that runs `inner` on the subject's region only (see module docstring).

    Args:
        inner: the engine doing the matting (any MattingEngine that takes any frame size;
            not the fixed-shape TensorRT engine).
        backbone_scale: the inner model's, for the crop alignment.
        threshold: block-mean |frame - plate| (8-bit levels) that counts as changed.
        margin: frame pixels of context added around the changed area and the last alpha
            (the outer 4 / backbone_scale of it are the zeroed guard band).
        min_size: smallest crop side in frame pixels (raised to one alignment step).
        max_fraction: a region covering more of the frame than this runs the whole frame.

    Stateful: it remembers where the last alpha was. `reset` forgets it (new plate, scene cut).
    Weights that put alpha on unchanged background (random weights do) therefore grow the region
    by up to `margin` a frame until it is the whole frame.
    """

    def __init__(
        self,
        inner: MattingEngine,
        backbone_scale: float,
        threshold: float = 8.0,
        margin: int = 32,
        min_size: int = 256,
        max_fraction: float = 0.6,
    ) -> None:
        if threshold < 0 or margin < 0 or min_size < 1 or not 0 < max_fraction <= 1:
            raise ValueError(
                f"region settings out of range: threshold {threshold}, margin {margin}, "
                f"min_size {min_size}, max_fraction {max_fraction}"
            )
        self.inner = inner
        self.name = f"{inner.name}+region"
        self.align = alignment(backbone_scale)
        self.guard = round(4 / backbone_scale)
        self.threshold = threshold
        self.margin = margin
        self.min_size = max(min_size, self.align)
        self.max_fraction = max_fraction
        self._last: Box | None = None
        self._shape: tuple[int, ...] | None = None
        self._plate_crop: tuple[np.ndarray, Box, np.ndarray] | None = None  # plate, box, crop

    def region(self, image: np.ndarray, plate: np.ndarray) -> Box | None:
        """The crop `matte` would run on; None when nothing in the frame can be foreground."""
        if image.shape != self._shape:
            self._last, self._shape = None, image.shape
        changed = difference_box(image, plate, self.threshold)
        found = changed.union(self._last) if changed is not None else self._last
        if found is None:
            return None
        height, width = image.shape[:2]
        box = expand(found, self.margin, self.align, self.min_size, height, width)
        if box.area > self.max_fraction * height * width:
            return Box(0, 0, height, width)
        return box

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        """Matte one BGR uint8 frame against its plate, running the inner engine on the region."""
        check_images(image, plate)
        box = self.region(image, plate)
        height, width = image.shape[:2]
        if box is not None and box.area == height * width:
            matte = self.inner.matte(image, plate)
            self._last = alpha_box(matte.alpha)
            return dataclasses.replace(matte, engine=self.name)
        alpha = np.zeros((height, width), np.float32)
        foreground = image.copy()  # outside the kept box alpha is 0 and the foreground the frame
        self._last = None
        if box is not None:
            inner = self.inner.matte(image[box.slices], self._crop_of(plate, box))
            keep = box.inset(self.guard, height, width)
            kept = keep.moved(-box.top, -box.left).slices
            alpha[keep.slices] = inner.alpha[kept]
            foreground[keep.slices] = inner.foreground[kept]
            self._last = alpha_box(alpha[keep.slices], (keep.top, keep.left))
        _LOG.debug("region %s of %dx%d", box, width, height)
        return Matte(alpha=alpha, foreground=foreground, engine=self.name)

    def _crop_of(self, plate: np.ndarray, box: Box) -> np.ndarray:
        """The plate under `box`. An immutable plate's crop is kept as an immutable copy while
        the box stays put, so an inner engine that converts an unchanged immutable plate only
        once (TorchEngine) does not convert it every frame; a writable plate is cut anew."""
        if not immutable(plate):
            return plate[box.slices]
        kept = self._plate_crop
        if kept is None or kept[0] is not plate or kept[1] != box:
            crop = plate[box.slices].copy()
            crop.flags.writeable = False
            self._plate_crop = kept = (plate, box, crop)
        return kept[2]

    def reset(self) -> None:
        """Forget where the last alpha was: the next region comes from the plate difference."""
        self._last = None

    def close(self) -> None:
        self._plate_crop = None
        self.inner.close()
