"""Honest health: a camera that is not there is never reported as a healthy appliance.

The NO SIGNAL card keeps the output at the stream's rate, so these tests read what separates
the two: source fps (camera frames reaching the output) against output fps, READY=1 held back
(with EXTEND_TIMEOUT_USEC and a STATUS naming the camera, its password masked) until the camera's
first frame or source.ready_wait_s, and the problem in the state, on STATUS= and in the log at
WARNING. A real AF_UNIX notify socket stands in for systemd; the cameras are a V4L2 node and an
RTSP URL with nothing behind them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_tools import DaemonProcess, NotifySocket, daemon_config, write_config
from fault_tools import running, small_config
from rtsp_tools import free_port
from waiting import wait_until

from edge_matte.runtime.daemon import Daemon
from edge_matte.runtime.notify import Notifier

READY_WAIT_S = 3.0
RECONNECT = {"timeout_s": 2.0, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}


def warning_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def open_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The capture's log records of failed attempts to open the camera."""
    return [
        r
        for r in caplog.records
        if r.name == "edge_matte.capture.resilient" and "lost" in r.getMessage()
    ]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_missing_v4l2_camera_is_a_problem_and_ready_waits(
    tmp_path: Path, notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_matte.runtime.daemon")
    caplog.set_level(logging.INFO, logger="edge_matte.capture.resilient")
    source = {**RECONNECT, "ready_wait_s": 600.0}
    config = small_config(tmp_path, "v4l2:///dev/video9", source=source)
    daemon = Daemon(config, None, Notifier(notify_socket.address))
    with running(daemon):
        assert wait_until(lambda: daemon.telemetry()["output_fps"] > 5, 10)  # NO SIGNAL flows
        telemetry = daemon.telemetry()
        assert telemetry["source_fps"] == 0.0
        problem = daemon.state()["problem"]
        assert (
            problem is not None and problem.startswith("no camera: ") and "/dev/video9" in problem
        )
        waiting = notify_socket.wait_for_status(lambda text: text.startswith("waiting for camera"))
        assert waiting["STATUS"].startswith("waiting for camera v4l2:///dev/video9; problem: ")
        notify_socket.wait_for("EXTEND_TIMEOUT_USEC", 5)
        assert not any("READY" in message for _, message in notify_socket.received)
        # journalctl -p warning: the outage once, not every retry.
        assert wait_until(lambda: len(open_failures(caplog)) >= 3, 10)
        assert [r.levelno for r in open_failures(caplog)].count(logging.WARNING) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(message.startswith("problem: no camera") for message in warnings) == 1, warnings


def test_rtsp_camera_that_never_comes_ready_after_the_bounded_wait(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    port = free_port()  # nothing listens there
    uri = f"rtsp://viewer:s3cret@127.0.0.1:{port}/camera"
    source = {"uri": uri, **RECONNECT, "ready_wait_s": READY_WAIT_S}
    path = write_config(
        tmp_path / "edge-matte.yaml", daemon_config(tmp_path / "state", free_port(), source=source)
    )
    with DaemonProcess(path, notify=notify_socket) as daemon:
        first = notify_socket.wait_for("STATUS", 30)
        ready = daemon.wait_ready()
        started, ready_at = notify_socket.received[0][0], notify_socket.received[-1][0]
        assert ready_at - started >= READY_WAIT_S - 0.5, "READY before the camera wait ended"
        masked = f"rtsp://***@127.0.0.1:{port}/camera"
        assert first["STATUS"].startswith(f"waiting for camera {masked}"), first
        assert any("EXTEND_TIMEOUT_USEC" in m for _, m in notify_socket.received)
        assert ready["STATUS"].startswith("problem: no camera: ") and masked in ready["STATUS"]
        assert " 0.0 fps from the camera" in ready["STATUS"]
        assert daemon.stop() == 0
        log = daemon.log()
    assert "s3cret" not in log and not any("s3cret" in str(m) for _, m in notify_socket.received)
    assert "WARNING edge_matte.runtime.daemon: problem: no camera" in log, log


def test_healthy_camera_has_no_problem_and_counts_its_frames(tmp_path: Path) -> None:
    daemon = Daemon(small_config(tmp_path))
    with running(daemon):
        assert wait_until(lambda: daemon.telemetry()["source_fps"] > 5, 10)
        assert daemon.state()["problem"] is None
        health = daemon.pipeline.health()
        assert health.source_connected and health.source_fps > 0


def test_an_engine_degraded_at_start_is_a_problem_in_state_and_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_matte.runtime.daemon")
    weights = tmp_path / "broken.pth"
    weights.write_bytes(b"not a checkpoint")  # torch-cpu refuses it: classic takes over
    matting = {"engine": "torch-cpu", "weights": str(weights)}
    daemon = Daemon(small_config(tmp_path, matting=matting))
    with running(daemon):
        assert wait_until(lambda: daemon.state()["problem"] is not None, 10)
        assert daemon.state()["degraded"] is True
        assert daemon.state()["problem"] == "engine degraded: running classic"
        problem = "problem: engine degraded: running classic"
        assert wait_until(lambda: problem in warning_lines(caplog), 10), warning_lines(caplog)
