"""Jetson grabber: jetson-utils `videoSource` for csi:// (and v4l2:// on a Jetson).

jetson-utils exists only on Jetsons, so it is imported when a source is opened, never at import
time. Its import can fail in more ways than ImportError: built against the system NumPy 1.x, it
raises SystemError under NumPy 2; every failure means "unavailable" (`jetson_utils_usable`), so
v4l2:// falls back to OpenCV and csi:// says why it cannot open.

Copies: `Capture` returns a cudaImage from a ring buffer the camera will overwrite;
`cudaToNumpy` maps that same memory without copying (unified memory on Jetson), and the
RGB->BGR conversion writes the one copy we keep. Nothing else is copied.

Media time: each cudaImage carries `timestamp`, nanoseconds (jetson-utils' gstBufferManager
stores the GStreamer buffer's DTS or PTS, or its own monotonic clock when the buffer has
neither; 0 when its timestamp ring could not be read). A frame without a usable stamp takes
our monotonic clock at capture instead.

jetson-utils logs a warning for every capture timeout (gstCamera::Capture), four a second with
our 250 ms timeout while a camera stalls; it is opened with `--log-level=error`, and this module
says at most once per `STALL_LOG_S` that no frame is coming.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge_matte.errors import SourceError
from edge_matte.frames import SourceInfo

_LOG = logging.getLogger(__name__)

_CAPTURE_TIMEOUT_MS = 250  # short, so the reader thread notices a close request quickly
STALL_LOG_S = 10.0  # at most one "no frame" line this often while the camera stalls


def _import_jetson_utils(label: str) -> Any:
    try:
        import jetson_utils
    except Exception as err:  # SystemError (NumPy ABI), ImportError, AttributeError...: unusable
        raise SourceError(
            f"{label} needs jetson-utils, which exists only on a Jetson "
            f"(build dusty-nv/jetson-utils with its Python bindings): {type(err).__name__}: {err}"
        ) from err
    return jetson_utils


def jetson_utils_usable() -> bool:
    """Whether jetson-utils imports here (logged when it is installed but broken)."""
    try:
        _import_jetson_utils("jetson-utils")
    except SourceError as err:
        cause = err.__cause__
        if not isinstance(cause, ModuleNotFoundError):
            _LOG.warning(
                "jetson-utils unusable, using OpenCV for v4l2:// (%s: %s)",
                type(cause).__name__,
                cause,
            )
        return False
    return True


def jetson_argv(width: int, height: int, fps: float, flip: str | None) -> list[str]:
    """videoSource's command-line options (the names jetson-utils' videoOptions parses)."""
    argv = [
        f"--input-width={width}",
        f"--input-height={height}",
        f"--input-rate={fps:g}",
        "--log-level=error",  # no warning per capture timeout; errors still show
    ]
    if flip is not None:
        argv.append(f"--input-flip={flip}")
    return argv


class JetsonGrabber:
    """One jetson-utils videoSource; `grab` returns a BGR copy or None when no frame came."""

    pace_s: float | None = None  # the camera paces itself

    def __init__(
        self,
        uri: str,
        label: str,
        width: int,
        height: int,
        fps: float,
        flip: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._utils = _import_jetson_utils(label)
        self._label = label
        self._clock = clock
        argv = jetson_argv(width, height, fps, flip)
        try:
            self._source = self._utils.videoSource(uri, argv=argv)
        except Exception as err:  # jetson-utils raises bare Exception for every failure
            raise SourceError(f"cannot open {label}: {err}") from err
        self.info = SourceInfo(
            uri=label,
            width=self._source.GetWidth(),
            height=self._source.GetHeight(),
            fps=float(self._source.GetFrameRate()) or fps,
        )
        self._last_frame = self._last_report = clock()
        self.media_s = 0.0

    def grab(self) -> np.ndarray | None:
        try:
            image = self._source.Capture(format="rgb8", timeout=_CAPTURE_TIMEOUT_MS)
        except Exception as err:  # a capture error, not a timeout (that returns None)
            raise SourceError(f"{self._label} capture failed: {err}") from err
        if image is None:
            if not self._source.IsStreaming():
                raise SourceError(f"{self._label} stopped streaming")
            self._report_stall()
            return None
        self._last_frame = self._clock()
        self.media_s = _media_seconds(image, self._last_frame)
        self._utils.cudaDeviceSynchronize()
        rgb = self._utils.cudaToNumpy(image)  # a view of the ring buffer, no copy
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # the copy we keep

    def close(self) -> None:
        self._source.Close()

    def _report_stall(self) -> None:
        now = self._clock()
        if now - max(self._last_frame, self._last_report) >= STALL_LOG_S:
            _LOG.warning("no frame from %s for %.0f s", self._label, now - self._last_frame)
            self._last_report = now


def _media_seconds(image: Any, captured: float) -> float:
    """The frame's own timestamp in seconds, or `captured` (our clock) when it has none."""
    stamp = getattr(image, "timestamp", 0)  # nanoseconds; jetson-utils has had it since 2022
    return stamp / 1e9 if isinstance(stamp, int) and stamp > 0 else captured
