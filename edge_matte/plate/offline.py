"""`build_plate`: the live plate logic run over a recording, for `edge-matte plate build`.

Frames are fed to a `PlateKeeper` exactly as the daemon would (without a matte) until it has a
plate. If the recording ends first: a partly built per-pixel plate is returned with the unknown
part inpainted; a recording in which nothing ever moved is taken as the empty room (the installer
chose the clip, so the live rule against a still person in front of a fresh camera is relaxed).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np

from ..capture import FrameSource
from ..config import PlateConfig
from ..errors import MediaError, SourceEnded
from ..events import log_only
from ..profile import Profile
from .build import MedianCapture
from .keeper import PlateKeeper

_LOG = logging.getLogger(__name__)
_READ_TIMEOUT_S = 10.0


def build_plate(
    source: FrameSource, config: PlateConfig, max_frames: int, profile: Profile | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read up to `max_frames` frames and make a plate; return it with the keeper's status.

    The status holds `method` ("median" or "per-pixel"), `known_fraction`, `frames` read and a
    `note` on how the plate was made. Raise MediaError when the recording gives nothing usable.
    """
    info = source.info
    keeper = PlateKeeper(config, None, info.uri, log_only, profile, fps=info.fps)
    recent: deque[np.ndarray] = deque(maxlen=config.capture_frames)
    frames = 0
    while frames < max_frames and keeper.plate is None:
        try:
            frame = source.read(_READ_TIMEOUT_S)
        except SourceEnded:
            break
        frames += 1
        recent.append(frame.image)
        keeper.observe(frame, None)
    plate = keeper.plate
    status = keeper.status()
    status["frames"] = frames
    if plate is not None:
        status["note"] = f"{status['method']} plate after {frames} frames"
        return plate.copy(), status
    return _fallback(keeper, recent, status, frames)


def _fallback(
    keeper: PlateKeeper, recent: deque[np.ndarray], status: dict[str, Any], frames: int
) -> tuple[np.ndarray, dict[str, Any]]:
    if not recent:
        raise MediaError("the recording has no frames")
    if not keeper.motion_seen:
        median = MedianCapture(len(recent))
        for image in recent:
            median.add(image)
        status.update(
            method="median",
            known_fraction=1.0,
            note="nothing moved in the recording: taken as the empty room",
        )
        return median.median(), status
    partial = keeper.partial_plate()
    if partial is None:
        raise MediaError(
            f"no part of the background could be seen still in {frames} frames; record longer"
        )
    image, known = partial
    status.update(
        method="per-pixel",
        known_fraction=round(known, 4),
        note=f"recording ended with {known * 100:.1f}% of the background known; the rest is inpainted",
    )
    _LOG.warning("plate only %.1f%% known; the rest is inpainted", known * 100)
    return image, status
