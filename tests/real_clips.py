"""The real clips Debian's opencv-doc ships (scripts/setup.sh installs it): paths, or a skip; `Clip`
plays decoded frames as a FrameSource.

`vtest.avi`: a fixed camera over a street, 768x576 MPEG-4, 10 fps, 795 frames. `tree.avi`:
moving leaves, 320x240 Cinepak whose header claims 444 frames at 15 fps while it holds 68 over
the same 29.6 s (a hand enters at frame 53). Tests that need them skip, saying why, elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_matte.errors import SourceEnded
from edge_matte.frames import Frame, SourceInfo

CLIP_DIR = Path("/usr/share/doc/opencv-doc/examples/data")


def clip_path(name: str) -> Path:
    """The path of clip `name` (e.g. "tree.avi"); pytest.skip when the clip is not installed."""
    path = CLIP_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} missing: the real clips come with opencv-doc, not installed here")
    return path


class Clip:
    """A FrameSource over decoded frames at the clip's real rate; with `keep` only every
    keep-th frame is delivered (a daemon dropping frames), stamped with its time in the clip."""

    def __init__(self, frames: list[np.ndarray], fps: float, keep: int = 1) -> None:
        self._frames = frames
        self._next = 0
        self._keep = keep
        height, width = frames[0].shape[:2]
        self.info = SourceInfo(uri="file://clip", width=width, height=height, fps=fps)

    def read(self, timeout: float) -> Frame:
        if self._next >= len(self._frames):
            raise SourceEnded("end of clip")
        index, self._next = self._next, self._next + self._keep
        media_time = index / self.info.fps
        return Frame(self._frames[index], index + 1, media_time, media_time)

    def close(self) -> None:
        """Nothing to release."""
