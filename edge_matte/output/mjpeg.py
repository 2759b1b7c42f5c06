"""Latest frame in, latest JPEG out: one encoder thread for every browser viewer.

The pipeline's output stage only swaps a reference (`offer`); the encoder thread turns the newest
frame into a JPEG at most `fps` times a second, and only while someone waits for one, so the
cost is one encode per frame for all viewers together and nothing when nobody watches.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

_IDLE_WAIT_S = 0.5


class JpegFeed:
    """Shares the newest JPEG of the newest frame among any number of readers."""

    def __init__(self, fps: float, quality: int) -> None:
        self._period = 1.0 / fps
        self._quality = quality
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_seq = 0  # frames offered so far
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0  # JPEGs encoded so far
        self._encoded_frame = 0  # the frame number the latest JPEG shows
        self._demand = 0  # readers waiting for a JPEG now
        self._closed = False
        self._thread: threading.Thread | None = None
        self.live_at: float | None = None  # monotonic time of the last real camera frame

    @property
    def encoded(self) -> int:
        return self._jpeg_seq

    @property
    def closed(self) -> bool:
        return self._closed

    def configure(self, fps: float, quality: int) -> None:
        """Live change of rate and quality (from the next frame on)."""
        self._period, self._quality = 1.0 / fps, quality

    def offer(self, image: np.ndarray, live: bool) -> None:
        """The newest frame (not copied: the pipeline never writes to a frame it handed on)."""
        with self._cond:
            self._frame = image
            self._frame_seq += 1
            if live:
                self.live_at = time.monotonic()
            if self._demand:
                self._cond.notify_all()

    def wait_next(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """A JPEG newer than number `after`: (its number, bytes), or None on timeout or close."""
        with self._cond:
            self._demand += 1
            self._cond.notify_all()
            try:
                ready = self._cond.wait_for(
                    lambda: self._closed or (self._jpeg_seq > after and self._jpeg is not None),
                    timeout,
                )
            finally:
                self._demand -= 1
            if not ready or self._closed or self._jpeg is None:
                return None
            return self._jpeg_seq, self._jpeg

    def current(self, timeout: float) -> bytes | None:
        """A JPEG of the newest frame (encoded now if the latest JPEG is older)."""
        with self._cond:
            fresh = self._jpeg is not None and self._encoded_frame == self._frame_seq
            if fresh:
                return self._jpeg
            after = self._jpeg_seq
        got = self.wait_next(after, timeout)
        return None if got is None else got[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge-matte-jpeg", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._closed or (self._demand > 0 and self._frame_seq > self._encoded_frame)
                    ),
                    _IDLE_WAIT_S,
                )
                if self._closed:
                    return
                if (
                    not self._demand
                    or self._frame is None
                    or self._frame_seq == self._encoded_frame
                ):
                    continue
                frame, number = self._frame, self._frame_seq
            started = time.monotonic()
            ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
            with self._cond:
                if ok:
                    self._jpeg, self._encoded_frame = data.tobytes(), number
                    self._jpeg_seq += 1
                    self._cond.notify_all()
            # At most `fps` encodes a second, however fast frames come or viewers ask.
            rest = self._period - (time.monotonic() - started)
            if rest > 0:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, rest)
