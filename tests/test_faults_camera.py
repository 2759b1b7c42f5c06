"""The camera goes away under a running daemon: an RTSP camera killed -9 and restarted, a file
that is truncated or not a video, a V4L2 device that is not there. The daemon notices, says so
(event, state, telemetry), serves the no-signal card instead of freezing, retries with backoff
and recovers by itself, all in the same process."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fault_tools import (
    FPS,
    hex_bgr,
    is_no_signal_card,
    output_rate,
    output_url,
    running,
    small_config,
)
from rtsp_tools import CameraServer, free_port, read_frames
from waiting import wait_until

from edge_matte.config.schema import ComposeConfig
from edge_matte.runtime.daemon import Daemon

LOST_WITHIN_S = 5.0  # "within a few seconds"
RECONNECT = {"timeout_s": 2.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
BACKGROUND = hex_bgr(ComposeConfig().background)
RESILIENT_LOGGER = "edge_matte.capture.resilient"


def latest_frame(daemon: Daemon) -> np.ndarray:
    """What a viewer joining now sees (the last of a few decoded frames)."""
    return read_frames(output_url(daemon), 3)[-1]


def assert_no_signal(daemon: Daemon) -> None:
    assert daemon.state()["source_connected"] is False
    assert daemon.telemetry()["source_connected"] is False
    assert is_no_signal_card(latest_frame(daemon), BACKGROUND)
    assert daemon.pipeline.failed is None


def assert_live(daemon: Daemon) -> None:
    assert daemon.state()["source_connected"] is True
    frame = latest_frame(daemon)
    assert not is_no_signal_card(frame, BACKGROUND)
    assert np.abs(frame.reshape(-1, 3).mean(axis=0) - np.array(BACKGROUND) * 0.3).max() > 20


def reopen_attempts(caplog: pytest.LogCaptureFixture) -> int:
    return len(attempt_times(caplog))


def attempt_times(caplog: pytest.LogCaptureFixture) -> list[float]:
    """When each failed attempt to open the camera was logged (by the source itself: the event
    and the daemon's problem line repeat the first one's message)."""
    return [
        record.created
        for record in caplog.records
        if record.name == RESILIENT_LOGGER and "cannot open" in record.getMessage()
    ]


def test_rtsp_camera_killed_and_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RESILIENT_LOGGER)
    camera = CameraServer(free_port(), fps=FPS)
    camera.start()
    daemon = Daemon(small_config(tmp_path, camera.url, source=RECONNECT))
    pipeline = daemon.pipeline
    try:
        with running(daemon) as log:
            assert wait_until(lambda: daemon.state()["source_connected"], 20)
            assert_live(daemon)

            camera.kill()  # kill -9 mid-stream
            lost = log.wait_for("source.lost", timeout=LOST_WITHIN_S)
            assert lost.data["uri"] == camera.url
            assert_no_signal(daemon)
            assert output_rate(daemon, 1.0) >= 0.7 * FPS  # the card keeps the stream's rate
            outage_started = time.monotonic()

            camera.start()  # same port, as a camera powering back up
            recovered = log.wait_for("source.recovered", timeout=20)
            outage_s = time.monotonic() - outage_started
            assert recovered.data["reconnects"] == 1
            assert_live(daemon)
            assert daemon.telemetry()["source_reconnects"] == 1
            assert daemon.pipeline is pipeline  # recovered inside, nothing restarted
    finally:
        camera.kill()
    assert log.kinds().count("source.lost") == 1  # one outage, reported once
    attempts = reopen_attempts(caplog)
    assert 1 <= attempts <= outage_s / RECONNECT["reconnect_min_s"]  # backing off, not spinning


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s 320x240 H.264 clip (noise keeps it big enough to cut in half meaningfully)."""
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi",
            "-i", f"testsrc2=size=320x240:rate={FPS},noise=alls=30:allf=t",
            "-frames:v", str(2 * FPS), "-c:v", "libx264", "-pix_fmt", "yuv420p",
            "-g", "5", "-movflags", "+faststart", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


def test_truncated_file_is_a_lost_source_that_is_retried(tmp_path: Path, clip: Path) -> None:
    broken = tmp_path / "broken.mp4"
    data = clip.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    daemon = Daemon(small_config(tmp_path, f"file://{broken}", source=RECONNECT))
    with running(daemon) as log:
        lost = log.wait_for("source.lost", timeout=20)
        assert "truncated" in lost.message
        log.wait_for("source.recovered")  # reopened: the first half plays again
        log.wait_for("source.lost", count=2)  # and breaks off again, still handled
        assert daemon.pipeline.failed is None
        assert daemon.state()["pipeline"] == "running"


def test_corrupt_file_shows_no_signal_until_it_is_replaced(tmp_path: Path, clip: Path) -> None:
    video = tmp_path / "camera.mp4"
    video.write_bytes(np.random.default_rng(0).bytes(20_000))  # not a video at all
    daemon = Daemon(small_config(tmp_path, f"file://{video}", source=RECONNECT))
    with running(daemon) as log:
        lost = log.wait_for("source.lost", timeout=LOST_WITHIN_S)  # the first open's failure
        assert "cannot open" in lost.message
        assert "cannot open" in daemon.state()["problem"]
        assert_no_signal(daemon)
        replacement = tmp_path / "camera.mp4.new"
        replacement.write_bytes(clip.read_bytes())
        replacement.rename(video)  # the file is fixed underneath the running daemon
        log.wait_for("source.recovered", timeout=20)
        assert_live(daemon)


def test_missing_v4l2_device_shows_no_signal_and_keeps_retrying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RESILIENT_LOGGER)
    device = tmp_path / "video0"  # never created: the USB camera is unplugged
    daemon = Daemon(small_config(tmp_path, f"v4l2://{device}", source=RECONNECT))
    with running(daemon) as log:
        lost = log.wait_for("source.lost", timeout=LOST_WITHIN_S)  # the first open's failure
        assert "does not exist" in lost.message
        assert_no_signal(daemon)
        times = wait_until(
            lambda: attempt_times(caplog)[:7] if reopen_attempts(caplog) >= 7 else None,
            30,
            "seven attempts to open the device",
            show=lambda: f"attempts at {attempt_times(caplog)}",
        )  # still trying to open it
        assert daemon.state()["pipeline"] == "running"
    # Backoff: retry delays double from reconnect_min_s (0.2 s) and stop at reconnect_max_s
    # (1.0 s). A retry loop without a delay, or one that does not double, fails the first
    # check; doubling without the cap (1.6, 3.2, 6.4 s) fails the second.
    gaps = np.diff(times)
    expected = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(gap >= 0.9 * delay for gap, delay in zip(gaps, expected, strict=True)), gaps
    assert max(gaps[3:]) < 2.5, gaps
