"""A FrameSource that survives its camera: notices the loss, reopens with backoff, recovers.

jetson-utils' RTSP input never reconnects by itself (jetson-utils #148, #43); a kiosk must.
The consumer keeps calling `read`; while the camera is away it gets SourceTimeout promptly
(never a hang), sees `connected` False and shows a no-signal frame. Opening can block (an RTSP
open waits for its timeout), so reopening runs in a background thread, one attempt at a time.
Nothing is opened until `start`: whoever listens to its events subscribes first.
Only SourceEnded (a file without `loop`) is passed through: the end of a file is not a fault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_matte.capture import FrameSource
from edge_matte.config.redact import mask_uri
from edge_matte.config.schema import SourceConfig
from edge_matte.errors import SourceEnded, SourceError, SourceTimeout
from edge_matte.events import Emit, Event
from edge_matte.frames import Frame, SourceInfo

_LOG = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 2.0


class ResilientSource:
    """Wraps `opener()`'s source; emits source.lost / source.recovered and reopens with backoff.

    Hard errors (stream broken, device gone) count as lost at once; a silent source counts as
    lost after `config.timeout_s` without a frame. Retry delays double from `reconnect_min_s` to
    `reconnect_max_s` and reset once frames flow again. `reconnects` counts recoveries.
    """

    def __init__(self, opener: Callable[[], FrameSource], config: SourceConfig, emit: Emit) -> None:
        self._opener = opener
        self._config = config
        self._emit = emit
        self._label = mask_uri(config.uri)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._source: FrameSource | None = None
        self._opened_info: SourceInfo | None = None
        self._last_frame_at = time.monotonic()
        self._delay = config.reconnect_min_s
        self._lost = False  # source.lost emitted and not yet answered by source.recovered
        self._thread: threading.Thread | None = None
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Open the camera in the background (its events go to `emit` from now on); once only."""
        if self._thread is not None:
            raise RuntimeError(f"{self._label} is already started")
        self._start_reopening(stale=None)

    @property
    def info(self) -> SourceInfo:
        """The open source's info, else what was asked for (the no-signal frame's size)."""
        if self._opened_info is not None:
            return self._opened_info
        return SourceInfo(self._label, self._config.width, self._config.height, self._config.fps)

    def read(self, timeout: float) -> Frame:
        """The next frame; SourceTimeout while none comes (or the camera is away) within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            source = self._wait_for_source(deadline, timeout)
            lost_at = self._last_frame_at + self._config.timeout_s
            try:
                frame = source.read(max(0.0, min(deadline, lost_at) - time.monotonic()))
            except SourceEnded:
                raise
            except SourceTimeout:
                if time.monotonic() >= lost_at:
                    self._lose(source, f"no frame for {self._config.timeout_s:g} s")
                if time.monotonic() >= deadline:
                    raise SourceTimeout(self._no_frame_message(timeout)) from None
                continue
            except SourceError as err:
                self._lose(source, str(err))
                raise SourceTimeout(self._no_frame_message(timeout)) from err
            self._on_frame()
            return frame

    def _wait_for_source(self, deadline: float, timeout: float) -> FrameSource:
        with self._cond:
            while self._source is None:
                if self._stop.is_set():
                    raise SourceError(f"{self._label} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SourceTimeout(self._no_frame_message(timeout))
                self._cond.wait(remaining)
            return self._source

    def _no_frame_message(self, timeout: float) -> str:
        if self.connected:
            return f"no frame from {self._label} within {timeout:.2f} s"
        return f"no signal: {self.problem()}; reconnecting"

    def problem(self) -> str:
        """What keeps the camera away, naming it once (most capture errors already name it)."""
        if self.last_error is None:
            return f"{self._label}: opening"
        if self._label in self.last_error:
            return self.last_error
        return f"{self._label}: {self.last_error}"

    def _on_frame(self) -> None:
        self._last_frame_at = time.monotonic()
        if self.connected:
            return
        self.connected = True
        self._delay = self._config.reconnect_min_s
        if not self._lost:  # the first frames ever: listeners (MQTT state) learn of it too
            self._emit(
                Event("source.connected", f"{self._label} is delivering frames", self._data())
            )
            return
        self._lost = False
        self.reconnects += 1
        self._emit(
            Event("source.recovered", f"{self._label} is delivering frames again", self._data())
        )

    def _lose(self, source: FrameSource, reason: str) -> None:
        """Drop `source` (once), tell the operator (once per outage), close and reopen it aside."""
        with self._cond:
            if self._source is not source:
                return
            self._source = None
        self.connected = False
        self._report_lost(reason)
        self._start_reopening(stale=source)

    def _report_lost(self, reason: str) -> None:
        self.last_error = reason
        # The first failure of an outage is a warning; its retries are routine (journald -p warning
        # would otherwise get a line every reconnect_max_s for as long as the camera is away).
        _LOG.log(
            logging.INFO if self._lost else logging.WARNING,
            "source %s lost: %s",
            self._label,
            reason,
        )
        if not self._lost:
            self._lost = True
            self._emit(Event("source.lost", f"camera lost: {self.problem()}", self._data()))

    def _data(self) -> dict[str, object]:
        return {"uri": self._label, "error": self.last_error, "reconnects": self.reconnects}

    def _start_reopening(self, stale: FrameSource | None) -> None:
        self._thread = threading.Thread(
            target=self._reopen, args=(stale,), name=f"reopen {self._label}", daemon=True
        )
        self._thread.start()

    def _reopen(self, stale: FrameSource | None) -> None:
        """Close the lost source (may block on a stalled read), then open with doubling delays."""
        wait = 0.0
        if stale is not None:
            stale.close()
            wait = self._next_delay()
        while not self._stop.wait(wait):
            try:
                source = self._opener()
            except SourceError as err:
                self._report_lost(str(err))
            except Exception as err:  # supervision boundary: keep retrying, but say why
                _LOG.exception("opening %s failed unexpectedly", self._label)
                self._report_lost(f"{type(err).__name__}: {err}")
            else:
                self._hand_over(source)
                return
            wait = self._next_delay()

    def _next_delay(self) -> float:
        """This retry's delay; the next one doubles, up to reconnect_max_s."""
        delay = self._delay
        self._delay = min(delay * 2, self._config.reconnect_max_s)
        return delay

    def _hand_over(self, source: FrameSource) -> None:
        with self._cond:
            if self._stop.is_set():
                source.close()
                return
            self._source = source
            self._opened_info = source.info
            self._last_frame_at = time.monotonic()
            self._cond.notify_all()
        _LOG.info("source %s opened", self._label)

    def close(self) -> None:
        """Stop reopening and close the source; safe to call twice."""
        self._stop.set()
        with self._cond:
            source, self._source = self._source, None
            self._cond.notify_all()
        if source is not None:
            source.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT_S)
