"""`build_plate`: the live plate logic run over a recording, for `edge-matte plate build`.

Frames are fed to a `PlateKeeper` exactly as the daemon would (without a matte). A median plate
(the scene was empty for a while) ends the build at once; otherwise the per-pixel estimator sees
every frame up to `max_frames` (or the end of the recording) and the plate is its estimate from
all of them, with the share of the frame it knows. A recording in which nothing ever moved is
taken as the empty room (the installer chose the clip, so the live rule against a still person
in front of a fresh camera is relaxed).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np

from edge_matte.capture import FrameSource
from edge_matte.config.profile import Profile
from edge_matte.config.schema import PlateConfig
from edge_matte.errors import MediaError, SourceEnded
from edge_matte.events import log_only
from edge_matte.plate.build import MedianCapture
from edge_matte.plate.keeper import PlateKeeper
from edge_matte.plate.maker import READY_KNOWN

_LOG = logging.getLogger(__name__)
_READ_TIMEOUT_S = 10.0


def build_plate(
    source: FrameSource, config: PlateConfig, max_frames: int, profile: Profile | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read up to `max_frames` frames and make a plate; return it with the keeper's status.

    The status holds `method` ("median" or "per-pixel"), `known_fraction`, `frames` read, a
    `note` on how the plate was made and `variability` (the per-pixel map, or None). Raise
    MediaError when the recording gives nothing usable.
    """
    info = source.info
    keeper = PlateKeeper(config, None, info.uri, log_only, profile, fps=info.fps, estimates="final")
    recent: deque[np.ndarray] = deque(maxlen=config.capture_frames)
    frames = 0
    while frames < max_frames and keeper.status()["method"] != "median":
        try:
            frame = source.read(_READ_TIMEOUT_S)
        except SourceEnded:
            break
        frames += 1
        recent.append(frame.image)
        keeper.observe(frame, None)
    plate = keeper.plate
    status = keeper.status()
    status.update(frames=frames, variability=None)
    if plate is not None and status["method"] == "median":
        status["note"] = f"median plate after {frames} frames"
        return plate.copy(), status
    return _fallback(keeper, recent, status, frames)


def _fallback(
    keeper: PlateKeeper, recent: deque[np.ndarray], status: dict[str, Any], frames: int
) -> tuple[np.ndarray, dict[str, Any]]:
    if not recent:
        raise MediaError("the recording has no frames")
    if not keeper.motion_seen:
        median = MedianCapture(len(recent), 1.0)  # every recent frame: one interval each
        for index, image in enumerate(recent, 1):
            median.add(image, float(index))
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
    known = partial.known_fraction
    status.update(
        method="per-pixel",
        known_fraction=round(known, 4),
        variability=partial.variability,
        note=f"per-pixel plate from {frames} frames, {known * 100:.1f}% of the background known "
        "(the rest is the median of all frames)",
    )
    if known < READY_KNOWN:
        _LOG.warning("plate only %.1f%% known (< %.0f%%)", known * 100, READY_KNOWN * 100)
    return partial.image, status
