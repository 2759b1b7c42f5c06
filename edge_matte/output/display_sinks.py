"""Which GStreamer video sink shows frames on this machine's screen, and at what size.

`auto` tries the candidates for the machine (Jetson or not) and the session (a desktop or the
bare console) in order, each with one black test frame in a short-lived `gst-launch-1.0`, and
takes the first that works; the screen's size is read from X or from the DRM connector.
Everything runs in child processes or reads files, so nothing here can take the daemon down.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from edge_matte.config.schema import DisplayConfig
from edge_matte.errors import ConfigError, EdgeMatteError

_LOG = logging.getLogger(__name__)

X_SINKS = ("xvimagesink", "ximagesink")  # under X: XVideo scales in hardware, plain X does not
JETSON_DESKTOP_SINKS = ("nv3dsink", "nveglglessink")
JETSON_RELEASE = Path("/etc/nv_tegra_release")
DRM_ROOT = Path("/sys/class/drm")
# NVIDIA's window sinks take NVMM buffers: nvvidconv copies the frame into one.
_NVMM = "videoconvert ! video/x-raw,format=I420 ! nvvidconv ! video/x-raw(memory:NVMM),format=I420"
_CONVERT = {"nv3dsink": _NVMM, "nveglglessink": _NVMM}
_PROBE_TIMEOUT_S = 10.0


class DisplayError(EdgeMatteError):
    """The screen cannot be opened now (no sink works, the sink or its screen failed)."""


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
    command += ["!", *sink_chain(sink)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"no answer within {_PROBE_TIMEOUT_S:.0f} s"
    if done.returncode == 0:
        return None
    return first_error(done.stderr.decode(errors="replace")) or f"exit {done.returncode}"


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


def sink_chain(sink: str) -> list[str]:
    """gst-launch words from raw video to `sink`, with the conversion that sink needs."""
    convert = _CONVERT.get(sink, "videoconvert")
    return [*convert.split(), "!", sink, "sync=false"]


def first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [""])[0][:200]
