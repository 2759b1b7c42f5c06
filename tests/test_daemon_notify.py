"""The daemon's systemd notifications, read from a real AF_UNIX datagram socket.

One test runs `edge-matte run` as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC) and reads
READY, the periodic WATCHDOG pings with their STATUS line, and STOPPING on SIGTERM. The other runs
the Daemon in-process with its engine behind a gate (the one stand-in: it plays a CUDA/TensorRT
call that never returns, behind the MattingEngine interface): READY waits for the first frame to
come out, and a hung matte stage stops the pings while STATUS names it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from daemon_tools import (
    START_S,
    STOP_S,
    DaemonProcess,
    NotifySocket,
    daemon_config,
    prepared,
    save_true_plate,
)
from rtsp_tools import free_port

from edge_matte.config.schema import Config
from edge_matte.engine import MattingEngine
from edge_matte.frames import Matte
from edge_matte.runtime.daemon import STAGES, Daemon
from edge_matte.runtime.notify import Notifier

WATCHDOG_USEC = 400_000  # WatchdogSec=0.4: a ping every 0.2 s
STALL_S = 1.5  # in-process: a stage silent this long withholds the pings (the daemon's is 10 s)
STATUS = re.compile(r"^(\d+\.\d) fps, engine classic, plate ready, \d+ clients$")


def fps_of(status: str) -> float:
    match = STATUS.match(status)
    return float(match[1]) if match else -1.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")  # a file path, as systemd uses
    yield sock
    sock.close()


def test_ready_watchdog_status_and_stopping_from_the_real_process(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    path, _ = prepared(tmp_path)
    env = {"WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with DaemonProcess(path, env, notify_socket) as daemon:
        daemon.wait_ready()
        assert not any("WATCHDOG" in message for _, message in notify_socket.received)
        pings = [notify_socket.wait_for("WATCHDOG", 5, "1") for _ in range(3)]
        assert all(STATUS.match(ping.get("STATUS", "")) for ping in pings), pings
        flowing = notify_socket.wait_for_status(lambda text: fps_of(text) > 0)
        assert flowing["WATCHDOG"] == "1"
        assert daemon.stop() == 0, daemon.log()
        notify_socket.wait_for("STOPPING", 2, "1")


class GatedEngine:
    """The real engine behind a gate: while the gate is shut, `matte` blocks as a hung GPU call."""

    def __init__(self, inner: MattingEngine) -> None:
        self._inner = inner
        self.name = inner.name
        self.entered = threading.Event()  # a frame is waiting at (or went through) the gate
        self._gate = threading.Event()

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        self.entered.set()
        self._gate.wait()
        return self._inner.matte(image, plate)

    def shut(self) -> None:
        self.entered.clear()
        self._gate.clear()

    def open(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        self._inner.close()


@contextmanager
def running(daemon: Daemon) -> Iterator[list[int]]:
    """`daemon.run()` in a thread (no signal handlers there); stopped and joined afterwards."""
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(daemon.run()), daemon=True)
    thread.start()
    try:
        yield exit_codes
    finally:
        daemon.stop()
        thread.join(STOP_S)
        assert not thread.is_alive(), "the daemon did not stop"


def test_ready_waits_for_output_and_a_hung_engine_stops_the_watchdog(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    save_true_plate(tmp_path / "state")  # the first frame goes straight to the engine
    config = Config.model_validate(daemon_config(tmp_path / "state", free_port()))
    daemon = Daemon(config, None, Notifier(notify_socket.address, WATCHDOG_USEC))
    for stage in STAGES:
        daemon.heartbeat.register(stage, STALL_S)
    engine = GatedEngine(daemon.pipeline.engine.engine)
    daemon.pipeline.engine.engine = engine
    try:
        with running(daemon) as exit_codes:
            assert engine.entered.wait(START_S), "no frame reached the engine"
            # Stuck in matting: nothing can have come out, so READY must not have been sent.
            assert not any("READY" in message for message in notify_socket.drain(0.5))
            assert daemon.pipeline.stats["output"].frames_out == 0
            engine.open()
            notify_socket.wait_for("READY", START_S, "1")
            assert daemon.pipeline.stats["output"].frames_out >= 1
            notify_socket.wait_for("WATCHDOG", 5, "1")

            engine.shut()
            assert engine.entered.wait(5), "the matte stage never called the engine again"
            stalled = notify_socket.wait_for_status(lambda text: text.startswith("stalled"))
            assert "WATCHDOG" not in stalled and stalled["STATUS"] == "stalled: matte"
            later = notify_socket.drain(3 * WATCHDOG_USEC / 1e6)
            assert later and all("WATCHDOG" not in message for message in later), later
            assert all(message["STATUS"].startswith("stalled") for message in later)

            engine.open()
            resumed = notify_socket.wait_for("WATCHDOG", 5, "1")
            assert STATUS.match(resumed["STATUS"]), resumed
        assert exit_codes == [0]
        notify_socket.wait_for("STOPPING", 2, "1")
    finally:
        engine.open()


def test_stopped_before_the_first_frame_is_a_clean_stop_without_ready(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    save_true_plate(tmp_path / "state")
    config = Config.model_validate(daemon_config(tmp_path / "state", free_port()))
    daemon = Daemon(config, None, Notifier(notify_socket.address, WATCHDOG_USEC))
    engine = GatedEngine(daemon.pipeline.engine.engine)
    daemon.pipeline.engine.engine = engine
    try:
        with running(daemon) as exit_codes:
            assert engine.entered.wait(START_S), "no frame reached the engine"
            daemon.stop()
            engine.open()  # the frame may now come out, after the stop was asked for
        assert exit_codes == [0]
        notify_socket.wait_for("STOPPING", 2, "1")
        assert not any("READY" in message for _, message in notify_socket.received)
    finally:
        engine.open()
