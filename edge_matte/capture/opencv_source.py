"""OpenCV grabbers: file:// and rtsp:// through the FFmpeg backend, v4l2:// through V4L2.

A grabber reads one frame at a time from its device and knows how that device fails;
`opener.ThreadedSource` runs it in a reader thread. The pip OpenCV wheels have no GStreamer
backend, so network cameras use FFmpeg over TCP with open/read timeouts. `label` is the URI with
its credentials masked: it is the only form of the URI that reaches a message or a log line.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_matte.errors import SourceEnded, SourceError
from edge_matte.frames import SourceInfo

_LOG = logging.getLogger(__name__)

# FFmpeg demuxer options OpenCV reads at each open; TCP survives lossy links and NAT.
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_RTSP_OPTIONS = "rtsp_transport;tcp"
# A file ending this many frames (or 2 %) short of its header's count and its header's duration
# is truncated, not finished.
_TRUNCATION_SLACK = 2
_MAX_GAP_S = 2.0  # a longer step between frame timestamps is a hole, not a frame to hold


def _info(capture: cv2.VideoCapture, label: str, fallback_fps: float) -> SourceInfo:
    """What the capture really delivers; implausible rates (0, RTP clock) become the fallback."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not 0 < fps <= 240:
        fps = fallback_fps
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return SourceInfo(uri=label, width=width, height=height, fps=float(fps))


def _checked(capture: cv2.VideoCapture, label: str, why: str) -> cv2.VideoCapture:
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"cannot open {label}: {why}")
    return capture


class LiveGrabber:
    """A camera (V4L2 or RTSP): a failed read means the device or stream is gone.

    Media time is the monotonic clock when the read returned: OpenCV's position of a network
    stream restarts or jumps with the camera, while the frames' spacing is what the plate needs.
    """

    pace_s: float | None = None  # a live device paces itself

    def __init__(self, capture: cv2.VideoCapture, label: str, fallback_fps: float) -> None:
        self._capture = capture
        self._label = label
        self.info = _info(capture, label, fallback_fps)
        self.media_s = 0.0

    def grab(self) -> np.ndarray | None:
        ok, image = self._capture.read()
        if not ok or image is None:
            raise SourceError(f"{self._label} stopped delivering frames (disconnected or stalled)")
        self.media_s = time.monotonic()
        return image

    def close(self) -> None:
        self._capture.release()


class FileGrabber:
    """A video file presented on its own timeline; loops, ends, or reports truncation.

    Headers lie: tree.avi's says 444 frames at 15 fps and the file holds 68 spread over the
    same 29.6 s. So the end of a file is judged by its frames' presentation times (`Timeline`),
    and each frame is due when its timestamp says (`pace_s`), not at the header's rate. Its
    media time (`media_s`) is the sum of those delays: the file's own timestamps, continued
    across loops and holes by the same rule, so it never goes back when the file starts again.
    """

    def __init__(
        self, open_capture: Callable[[], cv2.VideoCapture], label: str, loop: bool
    ) -> None:
        self._open = open_capture
        self._label = label
        self._loop = loop
        self._capture = open_capture()
        self.info = _info(self._capture, label, fallback_fps=30.0)
        self._timeline = Timeline(int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)), self.info.fps)
        self.pace_s: float | None = 0.0
        self.media_s = 0.0

    def grab(self) -> np.ndarray:
        ok, image = self._capture.read()
        if ok and image is not None:
            self.pace_s = self._timeline.add(self._capture.get(cv2.CAP_PROP_POS_MSEC))
            self.media_s += self.pace_s
            return image
        self._check_complete()
        if not self._loop:
            raise SourceEnded(f"{self._label} ended after {self._timeline.frames} frames")
        self._capture.release()
        self._capture = self._open()
        self._timeline.restart()
        return self.grab()

    def _check_complete(self) -> None:
        """SourceError unless the file's frames reached the end its header declares."""
        if self._timeline.frames == 0:
            raise SourceError(f"{self._label} has no decodable frames (corrupt or empty file)")
        short = self._timeline.shortfall()
        if short is not None:
            raise SourceError(f"{self._label} broke off after {short} (truncated or corrupt file)")

    def close(self) -> None:
        self._capture.release()


class Timeline:
    """One pass over a file: frames read, their presentation times, and when each is due.

    Pacing rule: a frame is due its timestamp's distance after the previous frame. Where the
    timestamp is missing, goes backwards or jumps by more than `_MAX_GAP_S` (a hole in the
    recording, a broken stamp, the first frame of a loop), it is due one nominal interval (the
    header's rate when plausible, else 30 fps) after the previous one.

    Completeness rule: the file ended where it should when it delivered (about) the frames its
    header counts, or when its last frame's time reached (about) the header's duration, count /
    rate: a file whose header over-counts frames but whose timeline is whole is complete; one
    cut short ends early on both counts.
    """

    def __init__(self, declared_frames: int, fps: float) -> None:
        self.declared = declared_frames
        self.interval_s = 1.0 / fps
        self.frames = 0
        self._first = True  # the very first frame is due at once
        self._last_s: float | None = None
        self._end_s = 0.0  # latest frame time seen this pass (a decoder may stamp its last 0)

    def add(self, position_ms: float) -> float:
        """Record a frame at `position_ms`; seconds after the previous frame it is due."""
        stamp = position_ms / 1000.0 if math.isfinite(position_ms) else None
        delay = 0.0 if self._first else self.interval_s
        if (
            stamp is not None
            and self._last_s is not None
            and 0 < stamp - self._last_s <= _MAX_GAP_S
        ):
            delay = stamp - self._last_s
        if stamp is not None:
            self._last_s = stamp
            self._end_s = max(self._end_s, stamp)
        self.frames += 1
        self._first = False
        return delay

    def restart(self) -> None:
        """A new pass (a loop): counts restart; the next frame is due one interval later."""
        self.frames = 0
        self._last_s = None
        self._end_s = 0.0

    def shortfall(self) -> str | None:
        """Why this pass ended early, or None when it reached the declared end."""
        missing = self.declared - self.frames
        if missing <= max(_TRUNCATION_SLACK, 0.02 * self.declared):
            return None
        duration = self.declared * self.interval_s
        reached = self._end_s + self.interval_s
        if reached >= duration - max(_TRUNCATION_SLACK * self.interval_s, 0.02 * duration):
            return None
        return f"{self.frames} of {self.declared} frames, at {reached:.1f} s of {duration:.1f} s"


def open_file(path: Path, label: str, loop: bool) -> FileGrabber:
    """A file grabber; SourceError if the file is missing or FFmpeg cannot open it."""
    if not path.is_file():
        raise SourceError(f"cannot open {label}: no such file")

    def open_capture() -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        return _checked(capture, label, "not a video FFmpeg can read")

    return FileGrabber(open_capture, label, loop)


def open_v4l2(device: str, label: str, width: int, height: int, fps: float) -> LiveGrabber:
    """A V4L2 camera asked for MJPG at width x height @ fps; it may deliver something else."""
    if not Path(device).exists():
        raise SourceError(f"cannot open {label}: V4L2 device {device} does not exist")
    capture = _checked(cv2.VideoCapture(device, cv2.CAP_V4L2), label, "not a usable V4L2 camera")
    capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    capture.set(cv2.CAP_PROP_FPS, fps)
    grabber = LiveGrabber(capture, label, fallback_fps=fps)
    real = grabber.info
    _LOG.info(
        "%s: asked %dx%d@%.0f, delivers %dx%d@%.1f",
        label, width, height, fps, real.width, real.height, real.fps,
    )  # fmt: skip
    return grabber


def open_rtsp(uri: str, label: str, fps: float, timeout_s: float) -> LiveGrabber:
    """A network camera over RTSP/TCP; opening and each read give up after `timeout_s`."""
    os.environ.setdefault(_FFMPEG_OPTIONS_ENV, _RTSP_OPTIONS)
    millis = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, millis, cv2.CAP_PROP_READ_TIMEOUT_MSEC, millis]
    capture = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
    return LiveGrabber(_checked(capture, label, "unreachable, refused or not a stream"), label, fps)
