"""The real clips Debian's opencv-doc ships (scripts/setup.sh installs it): paths, or a skip.

`vtest.avi`: a fixed camera over a street, 768x576 MPEG-4, 10 fps, 795 frames. `tree.avi`:
moving leaves, 320x240 Cinepak whose header claims 444 frames at 15 fps while it holds 68 over
the same 29.6 s (a hand enters at frame 53). Tests that need them skip, saying why, elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CLIP_DIR = Path("/usr/share/doc/opencv-doc/examples/data")


def clip_path(name: str) -> Path:
    """The path of clip `name` (e.g. "tree.avi"); pytest.skip when the clip is not installed."""
    path = CLIP_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} missing: the real clips come with opencv-doc, not installed here")
    return path
