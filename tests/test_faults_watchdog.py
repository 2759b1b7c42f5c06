"""Inference hangs in a running daemon process: the watchdog pings stop, the service manager
kills it, and the restarted daemon (same config file, same state directory) comes back with
the plate the first one captured and the config change it persisted.

The test plays systemd: it owns $NOTIFY_SOCKET, sets $WATCHDOG_USEC, waits for READY=1, watches
the WATCHDOG=1 pings, and on their absence kills the process (SIGKILL: WatchdogSignal= is SIGABRT
by default, then SIGKILL; neither lets the daemon clean up) and starts `edge-matte run` again.
The hang itself is the one stand-in: an engine that never returns (see fault_runner.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from daemon_tools import DaemonProcess, NotifySocket, daemon_config, write_config
from fault_tools import WAIT_S
from rtsp_tools import free_port, read_frames
from waiting import wait_on

from edge_matte.capture.synthetic import SyntheticSource, parse_uri
from edge_matte.control import overrides
from edge_matte.plate import store

WATCHDOG_USEC = 1_000_000  # WatchdogSec=1: a ping every 0.5 s
STALL_S = 1.5
# An empty room until a subject walks in at frame 60 (4 s): the plate is captured before, and
# the engine (which is skipped while the frame matches the plate) is called once they enter.
SCENE = "test://?enter_frame=60&noise_sigma=1"
GREEN = "#00ff00"
RUNNER = Path(__file__).with_name("fault_runner.py")


class Runner:
    """The daemon process with a command line on stdin (fault_runner.py)."""

    def __init__(self, config_path: Path, notify: NotifySocket) -> None:
        env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        command = [sys.executable, str(RUNNER), str(config_path), str(STALL_S)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **env},
        )
        self._lines: list[dict] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._arrived:
                self._lines.append(json.loads(line))
                self._arrived.notify_all()

    def wait_for(self, key: str, value: str, timeout: float = WAIT_S) -> dict:
        return wait_on(
            self._arrived,
            lambda: next((line for line in self._lines if line.get(key) == value), None),
            timeout,
            f"{key}={value} from the runner",
            show=lambda: f"last lines: {self._lines[-5:]}",
        )

    def send(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        done = self.wait_for("done", command.split(" ", 1)[0])
        assert "error" not in done, done
        return done

    def kill(self) -> int:
        self.process.kill()
        return self.process.wait(10)


def empty_room() -> np.ndarray:
    return SyntheticSource(parse_uri(SCENE, 320, 240, 15), realtime=False).frame_at(0).image


def test_hung_inference_stops_the_pings_and_a_restart_brings_plate_and_config_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    state = tmp_path / "state"
    path = write_config(
        tmp_path / "edge-matte.yaml",
        daemon_config(state, port, source={"uri": SCENE}, plate={"auto": False}),
    )
    notify = NotifySocket()
    runner = Runner(path, notify)
    try:
        notify.wait_for("READY", WAIT_S, "1")
        runner.send("capture")
        runner.wait_for("event", "plate.captured")
        runner.send("patch " + json.dumps({"compose": {"background": GREEN}}))
        notify.wait_for("WATCHDOG", 5, "1")  # healthy so far

        runner.send("hang")
        stalled = notify.wait_for_status(lambda text: text.startswith("stalled"), timeout=20)
        assert stalled["STATUS"] == "stalled: matte" and "WATCHDOG" not in stalled
        silence = notify.drain(2 * WATCHDOG_USEC / 1e6)  # longer than WatchdogSec
        assert silence and not any("WATCHDOG" in message for message in silence), silence
        assert runner.kill() == -signal.SIGKILL  # what systemd does when the pings stop
    finally:
        runner.kill()

    saved_plate, meta = store.load(state / "plate.png")  # intact after the kill
    assert meta.source_uri == SCENE
    assert np.abs(saved_plate.astype(int) - empty_room()).mean() < 3  # the empty room it saw
    operator_file = path.read_bytes()
    saved_config = overrides.load(path).effective  # the remote change, kept beside the file
    assert saved_config.compose.background == GREEN

    restarted = DaemonProcess(path, {"WATCHDOG_USEC": str(WATCHDOG_USEC)}, notify)
    with restarted:
        restarted.wait_ready()
        first_ping = notify.wait_for("WATCHDOG", 5, "1")
        assert "plate ready" in first_ping["STATUS"], first_ping  # restored, not recaptured
        assert "restored saved plate" in restarted.log()
        frame = read_frames(f"rtsp://127.0.0.1:{port}/composite", 3)[-1]
        green = np.abs(frame.astype(int) - (0, 255, 0)).max(axis=2) < 40
        # The persisted colour replaces the room (a subject walking in covers a part at most;
        # without the config change no pixel would be green).
        assert green.mean() > 0.6
        assert restarted.stop() == 0
    assert path.read_bytes() == operator_file  # the restart did not rewrite it
    assert overrides.load(path).effective == saved_config
