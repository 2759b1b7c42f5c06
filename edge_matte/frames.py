"""The data that flows through the pipeline: frames in, mattes out.

Images are NumPy arrays in OpenCV's convention (BGR, uint8, HxWx3) at the pipeline boundary;
alpha is float32 HxW in [0, 1]. Engines convert to their own tensors internally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One captured frame and what is known about it."""

    image: np.ndarray  # [H, W, 3] uint8 BGR
    index: int  # sequence number from the source, monotonic
    time: float  # time.monotonic() when captured; used for latency
    # Seconds on the source's own clock (the file's timestamps, the camera's, the synthetic
    # scene's): what the plate measures its spans in, whatever frames were dropped on the way.
    media_time: float
    truth_alpha: np.ndarray | None = None  # [H, W] float32, only from the synthetic scene
    truth_background: np.ndarray | None = None  # [H, W, 3] uint8 BGR, only from the synthetic scene

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


@dataclass
class Matte:
    """What an engine returns for one frame."""

    alpha: np.ndarray  # [H, W] float32 in [0, 1]
    foreground: (
        np.ndarray
    )  # [H, W, 3] uint8 BGR, the subject's colour with background spill removed
    engine: str  # which engine produced it, e.g. "torch-cpu", "classic"


@dataclass(frozen=True)
class SourceInfo:
    """What a source really delivers (may differ from what was asked)."""

    uri: str
    width: int
    height: int
    fps: float


class PlateImage(np.ndarray):
    """A plate (BGR uint8) carrying its per-pixel variability: how much each pixel moves when the
    scene is empty (uint8 levels, HxW), or None. Engines that can use it read `variability`;
    to every other consumer it is the plain image. Arrays derived from it (crops, copies) do not
    carry the map, so a map always has the size of the image that holds it."""

    variability: np.ndarray | None

    @classmethod
    def of(cls, image: np.ndarray, variability: np.ndarray | None) -> PlateImage:
        plate = image.view(cls)
        plate.variability = variability
        return plate

    def __array_finalize__(self, obj: object) -> None:
        self.variability = None
