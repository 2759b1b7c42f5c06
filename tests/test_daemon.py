"""The daemon end to end: `edge-matte run` as a real process, real RTSP clients (ffmpeg).

Every test starts its own daemon on a free port with its own state directory. The scene is the
synthetic room with a subject standing perfectly still, and the room's true background is saved
as the plate beforehand, so what the viewer decodes can be checked against the scene's truth.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from daemon_tools import (
    FPS,
    STOP_S,
    DaemonProcess,
    Truth,
    assert_composite,
    daemon_config,
    port_is_free,
    prepared,
    scene_truth,
    start_daemon,
    write_config,
)
from rtsp_tools import Watcher, free_port, read_frames
from waiting import wait_on

GREEN, MAGENTA = "#00ff00", "#ff00ff"


@pytest.fixture(scope="module")
def truth() -> Truth:
    return scene_truth()


def test_rtsp_client_decodes_the_composite_the_scene_asks_for(tmp_path: Path, truth: Truth) -> None:
    assert truth.background_mask.sum() > 10_000 and truth.subject_mask.sum() > 2_000
    path, url = prepared(tmp_path)
    with start_daemon(path):
        frames = read_frames(url, 10)
    assert_composite(frames, truth, GREEN)


class FrameCounter:
    """Follows a Watcher's progress report in a thread: how many frames it has decoded so far."""

    def __init__(self, watcher: Watcher) -> None:
        self.frames = 0
        self._cond = threading.Condition()
        stdout = watcher.process.stdout
        threading.Thread(target=self._follow, args=(stdout,), daemon=True).start()

    def _follow(self, stdout) -> None:
        try:
            for line in stdout:
                match = re.match(r"frame=(\d+)", line)
                if match:
                    with self._cond:
                        self.frames = int(match[1])
                        self._cond.notify_all()
        except (OSError, ValueError):  # Watcher.kill closed the pipe under us
            return

    def wait_beyond(self, count: int, timeout: float = 20.0) -> int:
        """The decoded frame count once it exceeds `count`; AssertionError at the deadline."""
        return wait_on(
            self._cond,
            lambda: self.frames if self.frames > count else 0,
            timeout,
            f"more than {count} decoded frames",
            show=lambda: f"decoded: {self.frames}",
        )


def test_two_clients_at_once_and_a_client_that_leaves_and_comes_back(
    tmp_path: Path, truth: Truth
) -> None:
    path, url = prepared(tmp_path)
    with start_daemon(path):
        first = Watcher(url)
        try:
            decoded = FrameCounter(first)
            assert decoded.wait_beyond(0), "the first client decoded nothing"
            assert_composite(read_frames(url, 3), truth, GREEN)  # a second client meanwhile
            assert decoded.wait_beyond(decoded.frames + FPS), (
                "the first stopped when the second left"
            )
            assert_composite(read_frames(url, 3), truth, GREEN)  # the second comes back
        finally:
            first.kill()
        assert_composite(read_frames(url, 3), truth, GREEN)  # alone again after everyone left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_within_5_s_and_frees_the_port(tmp_path: Path, sig: int) -> None:
    path, url = prepared(tmp_path)
    port = urlsplit(url).port
    with start_daemon(path) as daemon:
        viewer = Watcher(url)
        try:
            assert viewer.wait_decoding()
            assert daemon.stop(sig, timeout=STOP_S) == 0, daemon.log()
            daemon.notify.wait_for("STOPPING", 1.0, "1")
            viewer.wait(timeout=STOP_S)  # told by the server: it ends by itself
        finally:
            viewer.kill()
    assert port_is_free(port)
    assert "Traceback" not in daemon.log()


# (id, what goes wrong, the key the one-line error must name)
BAD_CONFIGS = [
    ("unknown-section", {"sourse": {}}, "sourse"),
    ("unknown-key", {"compose": {"colour": "#000000"}}, "compose.colour"),
    ("wrong-type", {"source": {"width": "wide"}}, "source.width"),
    ("out-of-range", {"stream": {"port": 70000}}, "stream.port"),
    ("bad-choice", {"compose": {"mode": "sparkle"}}, "compose.mode"),
    ("bad-colour", {"compose": {"background": "#12345"}}, "background"),
    ("bad-list-item", {"stream": {"outputs": ["composite", "depth"]}}, "stream.outputs"),
    ("section-not-mapping", {"source": [1, 2]}, "source"),
    ("bad-test-query", {"source": {"uri": "test://?walkers=3"}}, "source.uri"),
    (
        "missing-weights",
        {"matting": {"weights": "/nonexistent/pytorch_mobilenetv2.pth"}},
        "matting.weights",
    ),
    # Issue 17 (8): check-config called these ok, then `run` failed on them.
    ("empty-mqtt-host", {"mqtt": {"enabled": True, "host": ""}}, "mqtt.host"),
    ("rtsp-user-without-password", {"stream": {"username": "viewer"}}, "stream.username"),
    (
        "missing-password-file",
        {"mqtt": {"enabled": True, "password_file": "/nonexistent/mqtt-password"}},
        "mqtt.password_file",
    ),
    ("wildcard-discovery-prefix", {"mqtt": {"discovery_prefix": "home/#"}}, "discovery_prefix"),
    # `run` exited 1 on these at every restart (cannot listen) where check-config said ok.
    ("unresolvable-stream-bind", {"stream": {"bind": "no-such-host.invalid"}}, "stream.bind"),
    ("foreign-stream-bind", {"stream": {"bind": "192.0.2.1"}}, "stream.bind"),  # TEST-NET-1
    ("device-id-group", {"mqtt": {"device_id": "group"}}, "mqtt.device_id"),
]


def edge_matte(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run `edge-matte` once per argument tuple, concurrently (each is mostly Python start-up)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "edge_matte.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for args, child in zip(commands, children, strict=True):
        stdout, stderr = child.communicate(timeout=30)
        results.append(subprocess.CompletedProcess(args, child.returncode, stdout, stderr))
    return results


def bad_config_file(tmp_path: Path, change: dict, port: int) -> Path:
    config = daemon_config(tmp_path / "state", port)
    for section, value in change.items():
        merged = config.get(section)
        both_maps = isinstance(merged, dict) and isinstance(value, dict)
        config[section] = {**merged, **value} if both_maps else value
    return write_config(tmp_path / "bad.yaml", config)


@pytest.mark.parametrize(
    ("change", "key"), [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS]
)
def test_bad_config_exits_2_naming_the_key_and_starts_nothing(
    tmp_path: Path, change: dict, key: str
) -> None:
    port = free_port()
    path = bad_config_file(tmp_path, change, port)
    run, check = edge_matte(("run", "--config", str(path)), ("check-config", str(path)))
    for done in (run, check):
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (done.args, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("edge-matte: config error: "), done.stderr
        assert key in lines[0], lines[0]
        assert "rtsp://" not in done.stdout
    assert not (tmp_path / "state").exists()
    assert port_is_free(port)


def test_malformed_yaml_is_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("state_dir: [\n")
    for done in edge_matte(("run", "--config", str(path)), ("check-config", str(path))):
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "not valid YAML" in lines[0] and "line 2" in lines[0], lines


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "good.yaml", daemon_config(tmp_path / "state", free_port()))
    [done] = edge_matte(("check-config", str(path)))
    assert done.returncode == 0 and done.stdout.strip() == f"{path}: ok", done.stderr
    assert not (tmp_path / "state").exists()


def reload(daemon: DaemonProcess) -> None:
    """SIGHUP, then wait for the reload to finish (RELOADING=1 ... READY=1, as systemd sees it)."""
    daemon.process.send_signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING", 10, "1")
    daemon.notify.wait_for("READY", 10, "1")


def test_sighup_applies_a_new_colour_and_refuses_a_broken_file(
    tmp_path: Path, truth: Truth
) -> None:
    path, url = prepared(tmp_path)
    with start_daemon(path) as daemon:
        assert_composite(read_frames(url, 3), truth, GREEN)

        config = yaml.safe_load(path.read_text())
        config["compose"]["background"] = MAGENTA
        write_config(path, config)
        reload(daemon)
        assert_composite(read_frames(url, 4), truth, MAGENTA)

        config["compose"]["mode"] = "sparkle"
        broken = write_config(path, config).read_bytes()
        reload(daemon)
        assert_composite(read_frames(url, 4), truth, MAGENTA)  # the old config keeps running
        assert daemon.process.poll() is None
        assert path.read_bytes() == broken  # a reload never rewrites the operator's file
        assert re.search(r"reload refused.*compose\.mode", daemon.log())
