"""The device's own screen: one view shown fullscreen through a GStreamer video sink.

The sink runs in a child process (`gst-launch-1.0 fdsrc ! rawvideoparse ! ... ! SINK`) fed raw
BGR frames over a pipe. An X server that goes away makes Xlib end the process holding the
connection, and a DRM sink whose connector is unplugged errors out: either way only the child
ends, and it is reopened with backoff while the daemon keeps serving RTSP. Frames reach the
display thread through a one-item slot, so a stalled or missing screen drops display frames
(counted) and never slows the pipeline. Rotation and fit to the screen's mode are done here
with OpenCV, so every sink shows the frame 1:1 whatever it can scale.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import subprocess
import tempfile
import threading
import time

import cv2
import numpy as np

from edge_matte.config.schema import DisplayConfig
from edge_matte.events import Emit, Event
from edge_matte.output.compose import cover
from edge_matte.output.display_sinks import (
    DisplayError,
    choose_sink,
    first_error,
    screen_size,
    sink_chain,
)
from edge_matte.slot import LatestSlot

_LOG = logging.getLogger(__name__)

_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_SETTLE_S = 1.0  # a child alive this long after its first frame has opened the screen
_STALL_S = 5.0  # a screen that takes no frame for this long is stalled: reopened
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 10.0
_POLL_S = 0.25
_PIPE_BYTES = 1 << 20  # the largest pipe an unprivileged process may ask for


def fit_frame(
    image: np.ndarray,
    size: tuple[int, int],
    rotate: int,
    fit: str,
    scratch: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """`image` rotated clockwise by `rotate` degrees, then scaled to `size` (width, height):
    `contain` letterboxes (black bars), `cover` fills and crops the centre, `stretch` fills.

    With `scratch` the result is written into arrays kept there and reused while the sizes stay
    the same (a fresh 1080p frame costs page faults: resizing into a kept one takes half the
    time); the result is then only valid until the next call.
    """
    if rotate:
        image = cv2.rotate(image, _ROTATIONS[rotate])
    width, height = size
    if fit == "cover":
        return cover(image, width, height)
    if fit == "stretch" or image.shape[:2] == (height, width):
        out = _scratch(scratch, "out", (height, width, 3))
        return cv2.resize(image, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
    src_h, src_w = image.shape[:2]
    scale = min(width / src_w, height / src_h)
    inner_w = min(width, max(1, round(src_w * scale)))
    inner_h = min(height, max(1, round(src_h * scale)))
    inner = _scratch(scratch, "inner", (inner_h, inner_w, 3))
    cv2.resize(image, (inner_w, inner_h), dst=inner, interpolation=cv2.INTER_LINEAR)
    canvas = _scratch(scratch, "canvas", (height, width, 3))
    x, y = (width - inner_w) // 2, (height - inner_h) // 2
    canvas[:y], canvas[y + inner_h :] = 0, 0
    canvas[:, :x], canvas[:, x + inner_w :] = 0, 0
    canvas[y : y + inner_h, x : x + inner_w] = inner
    return canvas


def _scratch(
    scratch: dict[str, np.ndarray] | None, name: str, shape: tuple[int, ...]
) -> np.ndarray:
    """A uint8 array of `shape`: kept in `scratch` under `name` and reused, or a new one."""
    if scratch is None:
        return np.empty(shape, np.uint8)
    array = scratch.get(name)
    if array is None or array.shape != shape:
        array = scratch[name] = np.empty(shape, np.uint8)
    return array


class Screen:
    """One open sink child process and the size it was opened at."""

    def __init__(self, sink: str, size: tuple[int, int], fps: float) -> None:
        self.sink, self.size = sink, size
        width, height = size
        # One read per frame (fdsrc reads 4 KiB at a time by default: ~1500 reads at 1080p).
        command = ["gst-launch-1.0", "-q", "fdsrc", "fd=0", f"blocksize={width * height * 3}"]
        command += ["!", "rawvideoparse", "format=bgr"]
        command += [f"width={width}", f"height={height}", f"framerate={round(fps)}/1", "!"]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the child's stderr until `close`)
        self.process = subprocess.Popen(
            [*command, *sink_chain(sink)],
            stdin=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # a terminal's Ctrl-C stops the daemon, which ends the child
        )
        if self.process.stdin is None:  # never with stdin=PIPE; keeps the type checker honest
            raise DisplayError("no pipe to the sink")
        self._fd = self.process.stdin.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(OSError):  # the default pipe works, with more wake-ups
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.first_frame: float | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def settled(self) -> bool:
        """Alive `_SETTLE_S` after taking its first frame: the sink has opened the screen."""
        first = self.first_frame
        return first is not None and time.monotonic() - first >= _SETTLE_S and self.alive()

    def write(self, data: memoryview, stop: threading.Event) -> bool:
        """Write one frame; False if the screen took none of it for `_STALL_S` or is gone."""
        deadline = time.monotonic() + _STALL_S
        while data and not stop.is_set():
            _, ready, _ = select.select([], [self._fd], [], _POLL_S)
            if not ready:
                if time.monotonic() > deadline or not self.alive():
                    return False
                continue
            try:
                data = data[os.write(self._fd, data) :]
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: the child has gone
                return False
            deadline = time.monotonic() + _STALL_S
        if self.first_frame is None:
            self.first_frame = time.monotonic()
        return True

    def reason(self) -> str:
        """Why the child ended, from its stderr."""
        self._stderr.seek(0)
        text = self._stderr.read(16384).decode(errors="replace")
        return first_error(text) or f"sink exited with {self.process.returncode}"

    def close(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):  # the pipe broke with the child
                self.process.stdin.close()
        self._stderr.close()


class Display:
    """Shows `config.output` on the local screen; feed it with `offer`, never blocking."""

    def __init__(self, config: DisplayConfig, emit: Emit, fps: float) -> None:
        self._config = config
        self._emit = emit
        self._fps = fps
        self._slot: LatestSlot[np.ndarray] = LatestSlot()
        self._scratch: dict[str, np.ndarray] = {}  # fit_frame's buffers (display thread only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shown = 0
        self.sink: str | None = None  # the sink open now
        self.reopens = 0

    @property
    def view(self) -> str:
        """Which view (composite, alpha, debug) the screen wants."""
        return self._config.output

    @property
    def dropped(self) -> int:
        """Frames offered but never shown (the screen was slower, stalled or missing)."""
        return self._slot.dropped

    def offer(self, image: np.ndarray, live: bool = True) -> None:
        """Hand over the newest frame of `view`; replaces one not yet shown (counted)."""
        del live  # the screen shows the no-signal card like any frame
        self._slot.put(image)

    def update(self, config: DisplayConfig) -> None:
        """Live change of output, rotate and fit (the next frame uses them)."""
        self._config = config

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge-matte-display", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._slot.close()
        if self._thread is not None:
            self._thread.join(_STALL_S)

    def stats(self) -> dict[str, object]:
        return {
            "sink": self.sink,
            "shown": self.shown,
            "dropped": self.dropped,
            "reopens": self.reopens,
        }

    def _run(self) -> None:
        """Open, show, and after a failure reopen with backoff; one event per outage."""
        delay, outage = _RETRY_MIN_S, False
        while not self._stop.is_set():
            shown = False
            try:
                screen = self._open()
            except DisplayError as err:
                reason: str | None = str(err)
            else:
                reason = self._show(screen, reopened=outage and self.reopens > 0)
                shown = self.sink is not None  # it had opened (announced) before failing
                self.sink = None
                screen.close()
                if reason is None or self._stop.is_set():  # stopping (the child may end first)
                    return
                if shown:
                    outage, delay = False, _RETRY_MIN_S  # a new outage starts from a short wait
                    self.reopens += 1
            if not outage:
                outage = True
                kind = "display.lost" if shown else "display.unavailable"
                self._emit(Event(kind, f"screen not available ({reason}); retrying"))
            else:
                _LOG.debug("display: still not available: %s", reason)
            self._stop.wait(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _open(self) -> Screen:
        env = os.environ
        try:
            sink = choose_sink(self._config.sink, env)
        except OSError as err:
            raise DisplayError(f"cannot run GStreamer: {err}") from err
        size = screen_size(sink, env)
        if size is None:
            size = self._fallback_size()
        try:
            return Screen(sink, size, self._fps)
        except OSError as err:
            raise DisplayError(f"cannot start {sink}: {err}") from err

    def _fallback_size(self) -> tuple[int, int]:
        """Without a readable mode: the size of the next frame, rotated."""
        image = self._slot.get(_STALL_S)
        if image is None:
            raise DisplayError("no frame to size the screen by")
        self._slot.put(image)
        height, width = image.shape[:2]
        return (height, width) if self._config.rotate in (90, 270) else (width, height)

    def _announce(self, screen: Screen, reopened: bool) -> None:
        """The screen shows frames: say so, once per opening."""
        self.sink = screen.sink
        size = "x".join(map(str, screen.size))
        self._emit(
            Event(
                "display.reopened" if reopened else "display.opened",
                f"showing {self.view} on {screen.sink} at {size}",
                {"sink": screen.sink, "size": list(screen.size)},
            )
        )

    def _show(self, screen: Screen, reopened: bool) -> str | None:
        """Feed `screen` until it fails (the reason) or the display stops (None)."""
        while not self._stop.is_set():
            if self.sink is None and screen.settled():
                self._announce(screen, reopened)
            if not screen.alive():
                return screen.reason()
            image = self._slot.get(_POLL_S)
            if image is None:
                continue
            config = self._config
            frame = fit_frame(image, screen.size, config.rotate, config.fit, self._scratch)
            if not screen.write(frame.data.cast("B"), self._stop):
                return "stalled" if screen.alive() else screen.reason()
            self.shown += 1
        return None
