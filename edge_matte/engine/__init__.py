"""Matting engines: (frame, plate) -> (alpha, foreground), all behind one interface.

Implementations: `torch_engine` (BackgroundMattingV2 in torch, CPU or CUDA), `trt` (torch2trt
FP16 engines on a Jetson) and `classic` (weight-free plate difference). `select` builds the best
available one and falls back along trt -> torch-cuda -> torch-cpu -> classic.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge_matte.frames import Matte


class MattingEngine(Protocol):
    """Turns a BGR uint8 frame and a BGR uint8 plate of the same size into a Matte."""

    @property
    def name(self) -> str:
        """What runs: "trt-fp16", "torch-cuda", "torch-cpu" or "classic" (a chooser's varies)."""
        ...

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        """Matte one frame; raise EngineError if the engine itself failed."""
        ...

    def close(self) -> None:
        """Release devices and buffers."""
        ...
