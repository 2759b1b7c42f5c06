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

import ctypes
import fcntl
import logging
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from .compose import cover
from .config import DisplayConfig
from .errors import ConfigError, EdgeMatteError
from .events import Emit, Event
from .slot import LatestSlot

_LOG = logging.getLogger(__name__)

X_SINKS = ("xvimagesink", "ximagesink")  # under X: XVideo scales in hardware, plain X does not
JETSON_DESKTOP_SINKS = ("nv3dsink", "nveglglessink")
JETSON_RELEASE = Path("/etc/nv_tegra_release")
DRM_ROOT = Path("/sys/class/drm")
# NVIDIA's window sinks take NVMM buffers: nvvidconv copies the frame into one.
_NVMM = "videoconvert ! video/x-raw,format=I420 ! nvvidconv ! video/x-raw(memory:NVMM),format=I420"
_CONVERT = {"nv3dsink": _NVMM, "nveglglessink": _NVMM}
_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}

_PROBE_TIMEOUT_S = 10.0
_SETTLE_S = 1.0  # a child alive this long after its first frame has opened the screen
_STALL_S = 5.0  # a screen that takes no frame for this long is stalled: reopened
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 10.0
_POLL_S = 0.25
_PIPE_BYTES = 1 << 20  # the largest pipe an unprivileged process may ask for


class DisplayError(EdgeMatteError):
    """The screen cannot be opened now (no sink works, the sink or its screen failed)."""


def fit_frame(image: np.ndarray, size: tuple[int, int], rotate: int, fit: str) -> np.ndarray:
    """`image` rotated clockwise by `rotate` degrees, then scaled to `size` (width, height):
    `contain` letterboxes (black bars), `cover` fills and crops the centre, `stretch` fills."""
    if rotate:
        image = cv2.rotate(image, _ROTATIONS[rotate])
    width, height = size
    if fit == "cover":
        return cover(image, width, height)
    if fit == "stretch" or image.shape[:2] == (height, width):
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    src_h, src_w = image.shape[:2]
    scale = min(width / src_w, height / src_h)
    inner_w = min(width, max(1, round(src_w * scale)))
    inner_h = min(height, max(1, round(src_h * scale)))
    canvas = np.zeros((height, width, 3), np.uint8)
    x, y = (width - inner_w) // 2, (height - inner_h) // 2
    canvas[y : y + inner_h, x : x + inner_w] = cv2.resize(
        image, (inner_w, inner_h), interpolation=cv2.INTER_LINEAR
    )
    return canvas


def sink_candidates(env: Mapping[str, str], jetson: bool) -> list[str]:
    """The sinks `auto` tries, best first, for this machine and session."""
    desktop = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    if jetson:
        return [*JETSON_DESKTOP_SINKS, *X_SINKS] if desktop else ["nvdrmvideosink", "kmssink"]
    return list(X_SINKS) if desktop else ["kmssink"]


def element_exists(name: str) -> bool:
    """Whether GStreamer has an element called `name`."""
    done = subprocess.run(["gst-inspect-1.0", "--exists", name], capture_output=True, check=False)
    return done.returncode == 0


def check_config(config: DisplayConfig) -> None:
    """ConfigError at start when the display cannot work at all: no gst-launch-1.0, or an
    explicit sink GStreamer does not have (whether its screen is there is found out later)."""
    if not config.enabled:
        return
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        raise ConfigError("display.enabled needs gst-launch-1.0 (apt: gstreamer1.0-tools)")
    if config.sink != "auto" and not element_exists(config.sink):
        raise ConfigError(
            f"display.sink: GStreamer has no element {config.sink!r} "
            "(use auto, or e.g. kmssink, ximagesink, nvdrmvideosink)"
        )


def probe(sink: str) -> str | None:
    """None if `sink` can show a frame here now, else the reason it cannot."""
    command = ["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=1", "pattern=black"]
    command += ["!", *_chain(sink)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"no answer within {_PROBE_TIMEOUT_S:.0f} s"
    if done.returncode == 0:
        return None
    return _first_error(done.stderr.decode(errors="replace")) or f"exit {done.returncode}"


def choose_sink(requested: str, env: Mapping[str, str]) -> str:
    """The sink to open: `requested` itself, or for auto the first candidate that shows a frame."""
    if requested != "auto":
        return requested
    failures = []
    for sink in sink_candidates(env, JETSON_RELEASE.exists()):
        if not element_exists(sink):
            failures.append(f"{sink}: not installed")
            continue
        reason = probe(sink)
        if reason is None:
            _LOG.info("display: sink auto picked %s (%s)", sink, "; ".join(failures) or "first")
            return sink
        failures.append(f"{sink}: {reason}")
    raise DisplayError("no video sink works here: " + "; ".join(failures))


def screen_size(sink: str, env: Mapping[str, str]) -> tuple[int, int] | None:
    """(width, height) of the screen `sink` draws on, if it can be read."""
    if sink in (*X_SINKS, *JETSON_DESKTOP_SINKS) and env.get("DISPLAY"):
        return _x_screen_size(env["DISPLAY"])
    return drm_mode(DRM_ROOT)


def _x_screen_size(name: str) -> tuple[int, int] | None:
    """The default screen's size, read with libX11. XDisplayWidth/Height read the connection
    setup, with no round trip, and the connection is closed at once."""
    try:
        xlib = ctypes.CDLL("libX11.so.6")
    except OSError:
        return None
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    for function in (xlib.XDefaultScreen, xlib.XCloseDisplay):
        function.argtypes = [ctypes.c_void_p]
    for function in (xlib.XDisplayWidth, xlib.XDisplayHeight):
        function.argtypes = [ctypes.c_void_p, ctypes.c_int]
    display = xlib.XOpenDisplay(name.encode())
    if not display:
        return None
    try:
        screen = xlib.XDefaultScreen(display)
        return xlib.XDisplayWidth(display, screen), xlib.XDisplayHeight(display, screen)
    finally:
        xlib.XCloseDisplay(display)


def drm_mode(root: Path) -> tuple[int, int] | None:
    """The preferred mode (the first listed) of the first connected DRM connector."""
    for connector in sorted(root.glob("card*-*")):
        try:
            if (connector / "status").read_text().strip() != "connected":
                continue
            first = (connector / "modes").read_text().split()
        except OSError:
            continue
        if first and "x" in first[0]:
            width, height = first[0].split("x", 1)
            if width.isdigit() and height.rstrip("i").isdigit():
                return int(width), int(height.rstrip("i"))
    return None


def _chain(sink: str) -> list[str]:
    """gst-launch words from raw video to `sink`, with the conversion that sink needs."""
    convert = _CONVERT.get(sink, "videoconvert")
    return [*convert.split(), "!", sink, "sync=false"]


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [""])[0][:200]


class _Screen:
    """One open sink child process and the size it was opened at."""

    def __init__(self, sink: str, size: tuple[int, int], fps: float) -> None:
        self.sink, self.size = sink, size
        width, height = size
        command = ["gst-launch-1.0", "-q", "fdsrc", "fd=0", "!", "rawvideoparse", "format=bgr"]
        command += [f"width={width}", f"height={height}", f"framerate={round(fps)}/1", "!"]
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [*command, *_chain(sink)],
            stdin=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # a terminal's Ctrl-C stops the daemon, which ends the child
        )
        stdin = self.process.stdin
        assert stdin is not None  # noqa: S101 - Popen(stdin=PIPE) always sets it
        self._fd = stdin.fileno()
        os.set_blocking(self._fd, False)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # the default pipe works, with more wake-ups
        self.started = time.monotonic()
        self.first_frame: float | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

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
        return _first_error(text) or f"sink exited with {self.process.returncode}"

    def close(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass  # the pipe broke with the child
        self._stderr.close()


class Display:
    """Shows `config.output` on the local screen; feed it with `offer`, never blocking."""

    def __init__(self, config: DisplayConfig, emit: Emit, fps: float) -> None:
        self._config = config
        self._emit = emit
        self._fps = fps
        self._slot: LatestSlot[np.ndarray] = LatestSlot()
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
        return {"sink": self.sink, "shown": self.shown, "dropped": self.dropped,
                "reopens": self.reopens}  # fmt: skip

    def _run(self) -> None:
        """Open, show, and after a failure reopen with backoff; one event per outage."""
        delay, outage = _RETRY_MIN_S, False
        while not self._stop.is_set():
            shown = False
            try:
                screen = self._open()
            except DisplayError as err:
                reason = str(err)
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

    def _open(self) -> _Screen:
        env = os.environ
        try:
            sink = choose_sink(self._config.sink, env)
        except OSError as err:
            raise DisplayError(f"cannot run GStreamer: {err}") from err
        size = screen_size(sink, env)
        if size is None:
            size = self._fallback_size()
        try:
            return _Screen(sink, size, self._fps)
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

    def _show(self, screen: _Screen, reopened: bool) -> str | None:
        """Feed `screen` until it fails (the reason) or the display stops (None)."""
        announced = False
        while not self._stop.is_set():
            if not announced and screen.first_frame is not None:
                if time.monotonic() - screen.first_frame >= _SETTLE_S and screen.alive():
                    announced = True
                    self.sink = screen.sink
                    kind = "display.reopened" if reopened else "display.opened"
                    size = "x".join(map(str, screen.size))
                    self._emit(Event(kind, f"showing {self.view} on {screen.sink} at {size}",
                                     {"sink": screen.sink, "size": list(screen.size)}))  # fmt: skip
            if not screen.alive():
                return screen.reason()
            image = self._slot.get(_POLL_S)
            if image is None:
                continue
            config = self._config
            frame = fit_frame(image, screen.size, config.rotate, config.fit)
            if not screen.write(memoryview(frame).cast("B"), self._stop):
                return "stalled" if screen.alive() else screen.reason()
            self.shown += 1
        return None
