"""The benchmark's frames: the synthetic room with one subject covering a set share of it.

Region inference costs in proportion to the subject's box, so its rows are measured at
COVERAGES of the frame; every other model row uses the 25% scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_matte.capture import scene as synth

SIZES = {"480p": (640, 480), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
COVERAGES = (0.10, 0.25, 0.50, 1.00)
NOISE_SIGMA = 2.0  # the synthetic camera's noise, 8-bit levels


@dataclass(frozen=True)
class Scene:
    """A camera frame, the empty room (its plate) and the subject's true alpha."""

    image: np.ndarray  # [H, W, 3] uint8 BGR
    plate: np.ndarray  # [H, W, 3] uint8 BGR
    alpha: np.ndarray  # [H, W] float32


def coverage_scene(width: int, height: int, coverage: float, seed: int = 0) -> Scene:
    """The room with one subject whose box covers `coverage` of the frame (0: nobody)."""
    room = synth.room(width, height, seed)
    canvas, alpha = room.astype(np.float32), np.zeros((height, width), np.float32)
    if coverage > 0:
        sprite = _subject_sized(height, width, coverage * width * height, seed)
        box_w, box_h = sprite.size
        synth.paste_over(canvas, alpha, sprite, (width - box_w) // 2, height - box_h)
    rng = np.random.default_rng(seed)
    canvas += rng.normal(0, NOISE_SIGMA, canvas.shape).astype(np.float32)
    return Scene(synth.to_uint8(canvas), synth.to_uint8(room), alpha)


def _subject_sized(height: int, width: int, area: float, seed: int) -> synth.Sprite:
    """The subject sprite cut to its alpha's box and stretched to about `area` pixels."""
    sprite = synth.subject(height, seed)
    rows = np.flatnonzero(sprite.alpha.max(axis=1) > 0)
    cols = np.flatnonzero(sprite.alpha.max(axis=0) > 0)
    cut = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    aspect = (cols[-1] + 1 - cols[0]) / (rows[-1] + 1 - rows[0])
    box_h = min(height, round(math.sqrt(area / aspect)))
    box_w = min(width, round(area / box_h))
    return synth.Sprite(
        cv2.resize(sprite.alpha[cut], (box_w, box_h), interpolation=cv2.INTER_AREA),
        cv2.resize(sprite.colour[cut], (box_w, box_h), interpolation=cv2.INTER_AREA),
    )
