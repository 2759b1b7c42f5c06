"""OpenCV grabbers: file:// and rtsp:// through the FFmpeg backend, v4l2:// through V4L2.

A grabber reads one frame at a time from its device and knows how that device fails;
`opener.ThreadedSource` runs it in a reader thread. The pip OpenCV wheels have no GStreamer
backend, so network cameras use FFmpeg over TCP with open/read timeouts. `label` is the URI with
its credentials masked: it is the only form of the URI that reaches a message or a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..errors import SourceEnded, SourceError
from ..frames import SourceInfo

_LOG = logging.getLogger(__name__)

# FFmpeg demuxer options OpenCV reads at each open; TCP survives lossy links and NAT.
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_RTSP_OPTIONS = "rtsp_transport;tcp"
# A file ending this many frames (or 2 %) short of its header's count is truncated, not finished.
_TRUNCATION_SLACK = 2


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
    """A camera (V4L2 or RTSP): a failed read means the device or stream is gone."""

    pace_fps: float | None = None  # a live device paces itself

    def __init__(self, capture: cv2.VideoCapture, label: str, fallback_fps: float) -> None:
        self._capture = capture
        self._label = label
        self.info = _info(capture, label, fallback_fps)

    def grab(self) -> np.ndarray | None:
        ok, image = self._capture.read()
        if not ok or image is None:
            raise SourceError(f"{self._label} stopped delivering frames (disconnected or stalled)")
        return image

    def close(self) -> None:
        self._capture.release()


class FileGrabber:
    """A video file, read at its own frame rate; loops, ends, or reports truncation."""

    def __init__(
        self, open_capture: Callable[[], cv2.VideoCapture], label: str, loop: bool
    ) -> None:
        self._open = open_capture
        self._label = label
        self._loop = loop
        self._capture = open_capture()
        self._expected = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self._read = 0
        self.info = _info(self._capture, label, fallback_fps=30.0)
        self.pace_fps: float | None = self.info.fps

    def grab(self) -> np.ndarray | None:
        ok, image = self._capture.read()
        if ok and image is not None:
            self._read += 1
            return image
        self._check_complete()
        if not self._loop:
            raise SourceEnded(f"{self._label} ended after {self._read} frames")
        self._capture.release()
        self._capture = self._open()
        self._read = 0
        return self.grab()

    def _check_complete(self) -> None:
        """SourceError unless the file delivered (about) the frames its header promises."""
        if self._read == 0:
            raise SourceError(f"{self._label} has no decodable frames (corrupt or empty file)")
        missing = self._expected - self._read
        if missing > max(_TRUNCATION_SLACK, 0.02 * self._expected):
            raise SourceError(
                f"{self._label} broke off after {self._read} of {self._expected} frames "
                "(truncated or corrupt file)"
            )

    def close(self) -> None:
        self._capture.release()


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
    if not os.path.exists(device):
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
