"""Run the real daemon for end-to-end tests: config files, a systemd notify socket, the process.

`DaemonProcess` starts `python -m edge_matte.cli run --config FILE` as a child with
$NOTIFY_SOCKET pointing at a `NotifySocket` the test owns, so readiness is awaited on READY=1
(what systemd waits for), never by sleeping. The scene is the synthetic `test://` room with a
subject standing perfectly still from frame 0, and `save_true_plate` stores the room's true
background as the saved plate the daemon restores at start, so compositing is exact from frame 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from pydantic import SecretStr
from rtsp_tools import free_port

from edge_matte.capture.synthetic import SyntheticSource, parse_uri
from edge_matte.config.schema import Config
from edge_matte.plate.store import PlateFile

WIDTH, HEIGHT, FPS = 320, 240, 15
# A subject standing still from frame 0 for ~18 hours of frames: the scene never changes but
# for sensor noise, so any decoded frame can be compared with frame 0's truth.
STILL_SCENE = "test://?present_from_start=true&stay_frames=1000000&noise_sigma=1"
START_S = 30.0  # generous: a loaded 2-core CI machine; a start takes ~1.5 s here
STOP_S = 5.0  # the bound for a graceful stop

# Tolerances (mean absolute difference in 8-bit levels over a mask): x264 at 4 Mbit/s for 320x240
# at 15 fps (~3.5 bits per pixel) is close to lossless on these flat and textured regions; the
# BGR -> I420 -> BGR round trip adds about one level. Measured here: 0.7 on the background mask
# (a flat colour), 1.9 on the subject (which also carries the scene's sensor noise, sigma 1, whose
# frame-to-frame difference alone has a mean of 1.1). Limits of 4 and 6 leave room for another
# encoder build while staying far below the 100+ levels of a wrong answer (subject shown where
# the background belongs, or the reverse). A JPEG snapshot at quality 85 does as well.
BACKGROUND_TOLERANCE = 4.0
SUBJECT_TOLERANCE = 6.0


def daemon_config(state_dir: Path, port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small, fast config (320x240 at 15 fps, classic engine, RTSP on 127.0.0.1:`port`);
    `sections` are merged over it one level deep."""
    config: dict[str, Any] = {
        "state_dir": str(state_dir),
        "source": {"uri": STILL_SCENE, "width": WIDTH, "height": HEIGHT, "fps": FPS},
        "matting": {"engine": "classic"},
        "compose": {"mode": "replace", "background": "#00ff00"},
        # One keyframe a second: a client joining a running stream decodes within ~1 s.
        "stream": {"bind": "127.0.0.1", "port": port, "keyframe_interval": FPS},
    }
    for name, values in sections.items():
        merged = config.get(name, {})
        config[name] = {**merged, **values} if isinstance(merged, dict) else values
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def save_config(config: Config, path: Path) -> Path:
    """`config` as an operator's file: the keys set explicitly, passwords in clear."""
    data = config.model_dump(mode="json", exclude_unset=True)
    for name, section in data.items():
        secret = getattr(getattr(config, name), "password", None)
        if isinstance(secret, SecretStr):
            section["password"] = secret.get_secret_value()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_config(path, data)


@dataclass(frozen=True)
class Truth:
    """Frame 0 of the still scene and where it is surely background or surely subject."""

    image: np.ndarray  # BGR uint8, noise included
    background: np.ndarray  # the room without subject or noise
    background_mask: np.ndarray  # bool: true alpha 0, at least `margin` px from any subject pixel
    subject_mask: np.ndarray  # bool: true alpha 1, at least `margin` px inside the subject


def scene_truth(uri: str = STILL_SCENE, margin: int = 4) -> Truth:
    """Truth for `uri` at the test size. The masks are eroded by `margin` pixels so that the
    engine's soft edge (guided filter radius 4) and H.264's 2x2 chroma blocks stay outside."""
    frame = SyntheticSource(parse_uri(uri, WIDTH, HEIGHT, FPS), realtime=False).frame_at(0)
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    alpha = frame.truth_alpha
    background = cv2.erode((alpha == 0).astype(np.uint8), kernel).astype(bool)
    subject = cv2.erode((alpha >= 1).astype(np.uint8), kernel).astype(bool)
    return Truth(frame.image, frame.truth_background, background, subject)


def save_true_plate(state_dir: Path, uri: str = STILL_SCENE) -> None:
    """Store the room's true background where the daemon looks for its plate at start
    (<state_dir>/plate.png + JSON; restored when the source URI and size match)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    truth = scene_truth(uri)
    PlateFile(state_dir / "plate.png", uri, None).save(truth.background, "median", 1.0, time.time())


def rgb_hex_to_bgr(colour: str) -> np.ndarray:
    value = int(colour.lstrip("#"), 16)
    return np.array([value & 0xFF, (value >> 8) & 0xFF, value >> 16], np.float64)


def port_is_free(port: int) -> bool:
    """Whether a new listener could bind 127.0.0.1:`port` right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class NotifySocket:
    """The service manager's end of sd_notify: a bound AF_UNIX datagram socket that records
    every message (as a dict of its KEY=value lines) with its arrival time."""

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:  # abstract namespace: no file, no 108-byte path limit
            name = f"edge-matte-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.received: list[tuple[float, dict[str, str]]] = []

    def _receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536).decode("utf-8")
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.received.append((time.monotonic(), message))
        return message

    def wait_for(self, key: str, timeout: float, value: str | None = None) -> dict[str, str]:
        """The next message carrying `key` (with `value`, if given); AssertionError at the deadline."""
        return self._next_matching(lambda m: key in m and value in (None, m[key]), timeout, key)

    def wait_for_status(
        self, predicate: Callable[[str], bool], timeout: float = 10.0
    ) -> dict[str, str]:
        """The next message whose STATUS= text satisfies `predicate`."""
        return self._next_matching(
            lambda m: "STATUS" in m and predicate(m["STATUS"]), timeout, "STATUS"
        )

    def _next_matching(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float, what: str
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._receive(deadline - time.monotonic())
            if message is not None and predicate(message):
                return message
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for a matching {what}= message; "
            f"last ones: {self.received[-5:]}"
        )

    def drain(self, duration: float) -> list[dict[str, str]]:
        """Everything that arrives within `duration` seconds from now."""
        deadline = time.monotonic() + duration
        messages = []
        while time.monotonic() < deadline:
            message = self._receive(deadline - time.monotonic())
            if message is not None:
                messages.append(message)
        return messages

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """`edge-matte run --config FILE` in a child process; stops it (SIGKILL at worst) on exit."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str] | None = None,
        notify: NotifySocket | None = None,
    ) -> None:
        self.config_path = config_path
        self.notify = notify or NotifySocket()
        self.log_path = config_path.with_suffix(".log")
        self._log = self.log_path.open("wb")  # noqa: SIM115 - closed in close()
        child_env = {**os.environ, "NOTIFY_SOCKET": self.notify.address, **(env or {})}
        command = [sys.executable, "-m", "edge_matte.cli", "run", "--config", str(config_path)]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=child_env
        )

    def wait_ready(self, timeout: float = START_S) -> dict[str, str]:
        """READY=1 from the child; fail with its log if it exits or stays silent."""
        try:
            return self.notify.wait_for("READY", timeout, "1")
        except AssertionError as err:
            raise AssertionError(f"daemon not ready: {err}\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_S) -> int:
        """Send `sig` and return the exit code (subprocess.TimeoutExpired if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        """Everything the child wrote (stdout and stderr) so far."""
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self.notify.close()

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_daemon(config_path: Path, env: dict[str, str] | None = None) -> DaemonProcess:
    """A started daemon that has said READY=1 (closed again if it never does)."""
    daemon = DaemonProcess(config_path, env)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.close()
        raise
    return daemon


def mean_error(frames: list[np.ndarray], mask: np.ndarray, expected: Any) -> float:
    """Mean absolute difference (8-bit levels, over pixels and channels) between the frames and
    `expected` (an image or one BGR colour) on `mask`, averaged over the frames."""
    target = np.broadcast_to(np.asarray(expected, np.float64), frames[0].shape)[mask]
    return float(np.mean([np.abs(frame[mask] - target).mean() for frame in frames]))


def prepared(tmp_path: Path, **sections: dict[str, Any]) -> tuple[Path, str]:
    """A config file (in `tmp_path`, state in tmp_path/state, `sections` merged) for a daemon
    whose saved plate is the true background; and the URL of its composite stream."""
    port = free_port()
    save_true_plate(tmp_path / "state")
    config = daemon_config(tmp_path / "state", port, **sections)
    return write_config(tmp_path / "edge-matte.yaml", config), f"rtsp://127.0.0.1:{port}/composite"


def assert_composite(frames: list[np.ndarray], truth: Truth, colour: str) -> None:
    """Background replaced by `colour` (#RRGGBB), the subject shown as it is, on every frame."""
    assert all(frame.shape == truth.image.shape for frame in frames)
    background = mean_error(frames, truth.background_mask, rgb_hex_to_bgr(colour))
    subject = mean_error(frames, truth.subject_mask, truth.image)
    assert background <= BACKGROUND_TOLERANCE, f"background {background:.1f} levels from {colour}"
    assert subject <= SUBJECT_TOLERANCE, f"subject {subject:.1f} levels from the scene"
