"""Open a FrameSource for a URI: pick the backend, run it in a latest-frame reader thread.

Each device source gets one reader thread that keeps only the newest frame, so a consumer
slower than the camera never sees stale buffered frames (the skipped ones are counted in
`dropped`). Frames are resized to the configured size when the device delivers another;
`native` keeps what the device really delivers. URIs are logged only with credentials masked.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from edge_matte.capture import FrameSource
from edge_matte.capture.jetson_source import JetsonGrabber, jetson_utils_usable
from edge_matte.capture.opencv_source import open_file, open_rtsp, open_v4l2
from edge_matte.config.redact import mask_uri
from edge_matte.config.schema import SourceConfig
from edge_matte.errors import SourceError, SourceTimeout
from edge_matte.frames import Frame, SourceInfo

_LOG = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 2.0


class Grabber(Protocol):
    """One device read at a time; raises SourceEnded / SourceError, None means 'no frame yet'."""

    info: SourceInfo
    # Seconds after the previous frame the one just grabbed is due (files); None: the device
    # paces itself (cameras).
    pace_s: float | None
    # The media time of the frame just grabbed, seconds on the device's own clock (see Frame).
    media_s: float

    def grab(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class ThreadedSource:
    """A FrameSource reading a grabber in a background thread, keeping only the latest frame."""

    def __init__(self, grabber: Grabber, width: int, height: int) -> None:
        self.native = grabber.info
        self.info = SourceInfo(grabber.info.uri, width, height, grabber.info.fps)
        self.dropped = 0
        self._grabber = grabber
        self._size = (width, height)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._returned = -1
        self._error: SourceError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"reader {self.info.uri}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            self._read_until_stopped()
        except SourceError as err:
            self._fail(err)
        except Exception as err:  # supervision boundary: a backend bug must not kill silently
            _LOG.exception("reader for %s crashed", self.info.uri)
            self._fail(SourceError(f"{self.info.uri} reader crashed: {err}"))
        finally:
            self._grabber.close()

    def _read_until_stopped(self) -> None:
        index = 0
        due = time.monotonic()
        while not self._stop.is_set():
            image = self._grabber.grab()
            if image is None:
                continue
            if self._grabber.pace_s is not None:  # a file: hold the frame until it is due
                due = max(due + self._grabber.pace_s, time.monotonic() - 1.0)
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
            frame = Frame(self._resized(image), index, time.monotonic(), self._grabber.media_s)
            self._publish(frame)
            index += 1

    def _resized(self, image: np.ndarray) -> np.ndarray:
        if (image.shape[1], image.shape[0]) == self._size:
            return image
        return cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self._latest is not None and self._latest.index > self._returned:
                self.dropped += 1
            self._latest = frame
            self._cond.notify_all()

    def _fail(self, err: SourceError) -> None:
        with self._cond:
            self._error = err
            self._cond.notify_all()

    def read(self, timeout: float) -> Frame:
        """The newest frame not yet returned, waiting up to `timeout` seconds for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.index <= self._returned:
                if self._error is not None:
                    raise type(self._error)(str(self._error))
                if self._stop.is_set():
                    raise SourceError(f"{self.info.uri} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SourceTimeout(f"no frame from {self.info.uri} within {timeout:.2f} s")
                self._cond.wait(remaining)
            self._returned = self._latest.index
            return self._latest

    def close(self) -> None:
        """Stop the reader; it releases the device once its current read returns."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                _LOG.warning("reader for %s still blocked in a read; it exits after", self.info.uri)


def uri_path(uri: str) -> str:
    """The device or file path a v4l2:// or file:// URI opens (what follows `//`, unquoted).

    The one reading of such a URI: the remote check that confines file sources to the media
    directory must judge exactly the path the opener will open."""
    parts = urlsplit(uri)
    return unquote(parts.netloc + parts.path)


def _open_grabber(config: SourceConfig, label: str) -> Grabber:
    scheme = urlsplit(config.uri).scheme
    path = uri_path(config.uri)
    size = (config.width, config.height, config.fps)
    if scheme == "csi" or (scheme == "v4l2" and jetson_utils_usable()):
        return JetsonGrabber(config.uri, label, *size, flip=config.flip)
    if scheme == "v4l2":
        return open_v4l2(path, label, *size)
    if scheme == "file":
        return open_file(Path(path), label, config.loop)
    if scheme in ("rtsp", "rtsps"):
        return open_rtsp(config.uri, label, config.fps, config.timeout_s)
    raise SourceError(
        f"unsupported source {label}: use csi://, v4l2://, file://, rtsp:// or test://"
    )


def open_source(config: SourceConfig) -> FrameSource:
    """Open the source `config.uri` names; SourceError (with the URI masked) if it cannot."""
    if config.uri.startswith("test://"):
        from edge_matte.capture.synthetic import SyntheticSource, parse_uri

        return SyntheticSource(parse_uri(config.uri, config.width, config.height, config.fps))
    label = mask_uri(config.uri)
    grabber = _open_grabber(config, label)
    _LOG.info(
        "opened %s: %dx%d @ %.1f fps",
        label,
        grabber.info.width,
        grabber.info.height,
        grabber.info.fps,
    )
    return ThreadedSource(grabber, config.width, config.height)
