"""The local screen: fit and rotation, sink choice, and the daemon on a real X server (Xvfb).

The end-to-end tests grab the X screen with ffmpeg and compare it with the composite read from
RTSP at the same time; they kill, stop and restart the X server under the running daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from daemon_tools import DaemonProcess, prepared, start_daemon
from fault_tools import hex_bgr, is_no_signal_card
from mqtt_broker import Broker, Probe
from rtsp_tools import CameraServer, free_port, read_frames
from waiting import wait_until
from x_tools import XServer, content_box, needs_x

from edge_matte.config.schema import DisplayConfig
from edge_matte.events import Event
from edge_matte.output.display import Display, fit_frame
from edge_matte.output.display_sinks import drm_mode, sink_candidates

WAIT_S = 30.0
GREEN = "#00ff00"  # the test daemon's background (tests/daemon_tools.py)
# Mean absolute difference (8-bit levels) between the grabbed screen and the RTSP frame scaled
# the same way: both come from the same composite, one through x264 and back; a wrong picture
# (another view, a shifted or unscaled frame) is 30+ levels away on this scene.
SCREEN_TOLERANCE = 8.0


# -- fit and rotation ---------------------------------------------------------------------------


def _quadrants(width: int = 320, height: int = 240) -> np.ndarray:
    """Four flat colours, so rotation and cropping can be read back from the corners."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (0, 0, 255)  # top left red
    image[: height // 2, width // 2 :] = (0, 255, 0)  # top right green
    image[height // 2 :, : width // 2] = (255, 0, 0)  # bottom left blue
    image[height // 2 :, width // 2 :] = (255, 255, 255)  # bottom right white
    return image


@pytest.mark.parametrize(
    ("rotate", "fit", "box"),
    [
        (0, "contain", (80, 0, 560, 360)),  # 4:3 in 16:9: bars left and right
        (90, "contain", (185, 0, 455, 360)),  # portrait 3:4, 270 px wide
        (180, "contain", (80, 0, 560, 360)),
        (270, "contain", (185, 0, 455, 360)),
        (0, "cover", (0, 0, 640, 360)),
        (90, "cover", (0, 0, 640, 360)),
        (0, "stretch", (0, 0, 640, 360)),
    ],
)
def test_fit_frame_geometry(rotate: int, fit: str, box: tuple[int, int, int, int]) -> None:
    out = fit_frame(_quadrants(), (640, 360), rotate, fit)
    assert out.shape == (360, 640, 3)
    assert content_box(out) == box


def test_fit_frame_into_kept_buffers_matches_a_fresh_one() -> None:
    """Reused buffers carry nothing over when rotation, fit or the source size change."""
    scratch: dict[str, np.ndarray] = {}
    steps = [(0, "contain"), (90, "contain"), (0, "stretch"), (270, "contain"), (0, "contain")]
    for size in ((320, 240), (200, 240)):
        image = cv2.resize(_quadrants(), size)
        for rotate, fit in steps:
            fresh = fit_frame(image, (640, 360), rotate, fit)
            assert np.array_equal(fit_frame(image, (640, 360), rotate, fit, scratch), fresh)


@pytest.mark.parametrize(
    ("rotate", "top_left"),
    [(0, (0, 0, 255)), (90, (255, 0, 0)), (180, (255, 255, 255)), (270, (0, 255, 0))],
)
def test_rotation_is_clockwise(rotate: int, top_left: tuple[int, int, int]) -> None:
    out = fit_frame(_quadrants(), (320, 320), rotate, "stretch")
    assert tuple(out[5, 5]) == top_left


def test_cover_crops_the_centre() -> None:
    out = fit_frame(_quadrants(), (640, 200), 0, "cover")  # 2x wide: rows 140..340 of 480 kept
    assert tuple(out[2, 2]) == (0, 0, 255) and tuple(out[-3, -3]) == (255, 255, 255)
    assert (out.max(axis=2) > 0).all()  # no bars


@pytest.mark.parametrize(
    ("env", "jetson", "expected"),
    [
        ({}, False, ["kmssink"]),
        ({"DISPLAY": ":0"}, False, ["xvimagesink", "ximagesink"]),
        ({}, True, ["nvdrmvideosink", "kmssink"]),
        ({"DISPLAY": ":0"}, True, ["nv3dsink", "nveglglessink", "xvimagesink", "ximagesink"]),
        ({"WAYLAND_DISPLAY": "wayland-0"}, True, ["nv3dsink", "nveglglessink", "xvimagesink", "ximagesink"]),
    ],
)  # fmt: skip
def test_auto_sink_candidates(env: dict[str, str], jetson: bool, expected: list[str]) -> None:
    assert sink_candidates(env, jetson) == expected


def test_drm_mode_reads_the_first_connected_connector(tmp_path: Path) -> None:
    for name, status, modes in (
        ("card0-DP-1", "disconnected", ""),
        ("card0-HDMI-A-1", "connected", "1920x1080\n1280x720\n"),
        ("card0-HDMI-A-2", "connected", "3840x2160\n"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "status").write_text(status + "\n")
        (tmp_path / name / "modes").write_text(modes)
    assert drm_mode(tmp_path) == (1920, 1080)
    (tmp_path / "card0-HDMI-A-1" / "status").write_text("disconnected\n")
    assert drm_mode(tmp_path) == (3840, 2160)
    (tmp_path / "card0-HDMI-A-2" / "status").write_text("disconnected\n")
    assert drm_mode(tmp_path) is None


# -- refused at start ---------------------------------------------------------------------------


def test_unknown_sink_is_a_config_error_exit_2(tmp_path: Path) -> None:
    path, _ = prepared(tmp_path, display={"enabled": True, "sink": "nosuchsink"})
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        done = subprocess.run(
            [sys.executable, "-m", "edge_matte.cli", *command],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "display.sink" in done.stderr and "nosuchsink" in done.stderr


# -- on a real X server -------------------------------------------------------------------------


@pytest.fixture
def xserver() -> Iterator[XServer]:
    with XServer((640, 360)) as server:
        yield server


def _start_on(
    xserver: XServer, tmp_path: Path, **sections: dict[str, Any]
) -> tuple[DaemonProcess, str]:
    display = {"enabled": True, **sections.pop("display", {})}
    path, url = prepared(tmp_path, display=display, **sections)
    daemon = start_daemon(path, env={"DISPLAY": xserver.display})
    _await_log(daemon, "event display.opened")
    return daemon, url


def _await_log(daemon: DaemonProcess, text: str, after: int = 0) -> None:
    wait_until(
        lambda: text in daemon.log()[after:],
        WAIT_S,
        f"{text!r} in the daemon's log",
        show=lambda: daemon.log()[-3000:],
    )


def _screen_and_stream(xserver: XServer, url: str) -> tuple[np.ndarray, np.ndarray]:
    """The screen grabbed while a frame is read from RTSP (the scene is still, so the two
    show the same composite)."""
    with ThreadPoolExecutor(1) as pool:
        frames = pool.submit(read_frames, url, 2)
        screen = xserver.grab()
        return screen, frames.result()[-1]  # the reader's own error, if it had one


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


@needs_x
def test_auto_sink_shows_the_composite_fullscreen_under_x(xserver: XServer, tmp_path: Path) -> None:
    daemon, url = _start_on(xserver, tmp_path)
    with daemon:
        assert "sink auto picked ximagesink" in daemon.log()  # Xvfb has no XVideo
        assert "xvimagesink: " in daemon.log()  # ... and the log says why it was passed over
        screen, frame = _screen_and_stream(xserver, url)
        assert screen.std() > 20  # a picture, not a blank window
        expected = fit_frame(frame, xserver.size, 0, "contain")
        assert content_box(screen) == (80, 0, 560, 360)
        assert _difference(screen, expected) <= SCREEN_TOLERANCE
        assert daemon.stop() == 0


@needs_x
def test_rotate_fit_and_output_change_live_over_mqtt(xserver: XServer, tmp_path: Path) -> None:
    base = "edge-matte/e2e"
    with Broker(tmp_path / "broker") as broker, Probe(broker, f"{base}/#") as probe:
        mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "device_id": "e2e"}
        daemon, url = _start_on(xserver, tmp_path, display={"rotate": 90}, mqtt=mqtt)
        with daemon:
            screen, frame = _screen_and_stream(xserver, url)
            assert content_box(screen) == (185, 0, 455, 360)  # portrait, letterboxed
            assert _difference(screen, fit_frame(frame, xserver.size, 90, "contain")) <= (
                SCREEN_TOLERANCE
            )

            def config_set(patch: dict[str, Any]) -> dict[str, Any]:
                reply = probe.request(
                    f"{base}/config/set", json.dumps(patch), f"{base}/config/result"
                )
                return reply.json()

            assert config_set({"display": {"rotate": 0, "fit": "cover"}})["ok"] is True
            assert wait_until(lambda: content_box(xserver.grab()) == (0, 0, 640, 360), WAIT_S)
            screen, frame = _screen_and_stream(xserver, url)
            assert _difference(screen, fit_frame(frame, xserver.size, 0, "cover")) <= (
                SCREEN_TOLERANCE
            )

            assert config_set({"display": {"output": "alpha"}})["ok"] is True
            # The alpha view is grey: no colour left on the screen (the composite is green).
            assert wait_until(lambda: np.ptp(xserver.grab().astype(int), axis=2).max() <= 2, WAIT_S)

            refused = config_set({"display": {"sink": "kmssink"}})
            assert refused["ok"] is False and "display.sink" in json.dumps(refused)
            assert "event display.lost" not in daemon.log()  # live changes never reopen
            assert daemon.stop() == 0


@needs_x
def test_x_server_killed_and_restarted(xserver: XServer, tmp_path: Path) -> None:
    daemon, url = _start_on(xserver, tmp_path)
    with daemon:
        xserver.kill()
        _await_log(daemon, "event display.lost")
        assert len(read_frames(url, 5)) == 5  # RTSP keeps serving without a screen
        assert daemon.process.poll() is None
        mark = len(daemon.log())
        xserver.start()
        _await_log(daemon, "event display.reopened", after=mark)
        screen, frame = _screen_and_stream(xserver, url)
        assert _difference(screen, fit_frame(frame, xserver.size, 0, "contain")) <= (
            SCREEN_TOLERANCE
        )
        assert daemon.stop() == 0


@needs_x
def test_stalled_screen_drops_frames_without_blocking(
    xserver: XServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", xserver.display)
    events: list[Event] = []
    display = Display(DisplayConfig(enabled=True), events.append, fps=30)
    display.start()
    frame = np.full((240, 320, 3), 128, np.uint8)
    try:
        assert wait_until(lambda: _offer(display, frame) and display.sink is not None, WAIT_S)
        shown = display.shown
        xserver.pause()  # the server stops answering: ximagesink blocks, the pipe fills
        try:
            slowest = 0.0
            deadline = time.monotonic() + 8.0  # beyond the 5 s stall limit
            while time.monotonic() < deadline:
                started = time.monotonic()
                display.offer(frame)
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(1 / 30)
            assert slowest < 0.05  # offering never waits for the screen
            assert display.dropped > 100  # ~240 offered, at most a pipe's worth shown
            assert display.shown - shown < 60
            assert any(e.kind == "display.lost" and "stalled" in e.message for e in events)
        finally:
            xserver.resume()
        assert wait_until(lambda: _offer(display, frame) and display.sink is not None, WAIT_S)
        assert [e.kind for e in events].count("display.reopened") == 1
    finally:
        display.close()


def _offer(display: Display, frame: np.ndarray) -> bool:
    display.offer(frame)
    time.sleep(0.03)
    return True


@needs_x
def test_no_signal_card_on_the_screen(xserver: XServer, tmp_path: Path) -> None:
    camera = CameraServer(free_port())
    camera.start()
    source = {"uri": camera.url, "timeout_s": 1.0, "reconnect_max_s": 1.0}
    try:
        daemon, _url = _start_on(xserver, tmp_path, source=source)
        with daemon:
            camera.kill()
            screen = xserver.grab()

            def card_shown() -> bool:
                nonlocal screen
                screen = xserver.grab()
                x0, y0, x1, y1 = content_box(screen)
                shown = cv2.resize(screen[y0:y1, x0:x1], (320, 240), interpolation=cv2.INTER_AREA)
                return is_no_signal_card(shown, hex_bgr(GREEN))

            assert wait_until(card_shown, WAIT_S), "no NO SIGNAL card on the screen"
            assert content_box(screen) == (80, 0, 560, 360)
            assert daemon.stop() == 0
    finally:
        camera.kill()
