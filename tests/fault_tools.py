"""Shared pieces of the fault suite: a running daemon, an event log, process readings, the
no-signal card, and engines that fail the way a GPU engine fails (behind the real
`MattingEngine` interface: CUDA errors, out-of-memory and wedged kernels cannot happen here).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rtsp_tools import free_port
from waiting import wait_until

from edge_matte.config import schema as config_mod
from edge_matte.config.schema import Config
from edge_matte.engine import MattingEngine
from edge_matte.engine.classic import ClassicEngine
from edge_matte.errors import EngineError
from edge_matte.events import Event
from edge_matte.frames import Matte
from edge_matte.runtime.daemon import Daemon
from edge_matte.runtime.telemetry import SystemReader

WIDTH, HEIGHT, FPS = 320, 240, 15
WAIT_S = 30.0


def slow(test: Any) -> Any:
    """Mark a long-running test: skipped unless EDGE_MATTE_SLOW=1."""
    skip = pytest.mark.skipif(
        os.environ.get("EDGE_MATTE_SLOW") != "1", reason="long-running: set EDGE_MATTE_SLOW=1"
    )
    return pytest.mark.slow(skip(test))


def small_config(state_dir: Path, uri: str = "test://", **sections: dict[str, Any]) -> Config:
    """A 320x240 @ 15 fps daemon config serving RTSP on a free loopback port."""
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "source": {"uri": uri, "width": WIDTH, "height": HEIGHT, "fps": FPS},
        "plate": {"stillness_s": 0.5, "capture_frames": 5},
        "stream": {"bind": "127.0.0.1", "port": free_port(), "keyframe_interval": FPS},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_mod.parse(data, "fault test")


class EventLog:
    """An event bus subscriber that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        with self._lock:
            return [event.kind for event in self.events]

    def of(self, kind: str) -> list[Event]:
        with self._lock:
            return [event for event in self.events if event.kind == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = WAIT_S) -> Event:
        """The `count`-th event of `kind`; AssertionError naming what did arrive at the deadline."""
        arrived = wait_until(
            lambda: self.of(kind)[count - 1 :],
            timeout,
            f"event {kind} #{count}",
            show=lambda: f"events so far: {self.kinds()}",
        )
        return arrived[0]


@contextmanager
def running(daemon: Daemon) -> Iterator[EventLog]:
    """Run `daemon` in a thread until the block ends; yields its event log once it serves."""
    log = EventLog()
    daemon.bus.subscribe(log)
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(daemon.run()), name="daemon")
    thread.start()
    try:
        wait_until(
            lambda: daemon.pipeline.first_output.is_set() or outcome, WAIT_S, "the first output"
        )
        assert not outcome, f"the daemon exited with {outcome}"
        yield log
    finally:
        daemon.stop()
        thread.join(WAIT_S)
    assert not thread.is_alive(), "the daemon did not stop"
    assert outcome == [0], f"the daemon exited with {outcome}"


def output_url(daemon: Daemon, name: str = "composite") -> str:
    return daemon.pipeline.stream.urls()[name]


def output_frames(daemon: Daemon) -> int:
    """Frames the output stage has sent so far."""
    return daemon.pipeline.stats["output"].frames_out


def output_rate(daemon: Daemon, seconds: float) -> float:
    """Frames per second the output stage sends over the next `seconds` (counted, not sampled)."""
    first, started = output_frames(daemon), time.monotonic()
    time.sleep(seconds)  # a measurement window, not synchronisation
    return (output_frames(daemon) - first) / (time.monotonic() - started)


def process_readings() -> dict[str, int]:
    """This process's threads, open file descriptors and resident memory (bytes)."""
    reading = SystemReader().read()
    return {key: reading[key] for key in ("threads", "open_fds", "rss_bytes")}


def is_no_signal_card(image: np.ndarray, background_bgr: tuple[int, int, int]) -> bool:
    """True when `image` is the no-signal card: the darkened background with white text in the
    middle band and nothing else (compared after H.264, so with a tolerance)."""
    height = image.shape[0]
    dark = np.array(background_bgr, np.float64) * 0.3
    border = np.concatenate([image[: height // 4], image[-height // 8 :]]).reshape(-1, 3)
    band = image[height // 3 : height // 2 + height // 8]
    plain = np.abs(border.mean(axis=0) - dark).max() <= 8 and border.std(axis=0).max() <= 6
    return bool(plain and (band.min(axis=2) > 180).mean() > 0.01)


def hex_bgr(colour: str) -> tuple[int, int, int]:
    """#RRGGBB as a BGR tuple."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return blue, green, red


# -- engines that fail like GPU engines ------------------------------------------------------------


class FailingEngine:
    """A stand-in for a GPU engine (trt / torch-cuda cannot run here) that mattes with the
    classic engine until `fail_after` frames, then raises what CUDA would: an EngineError."""

    def __init__(self, name: str, fail_after: int, error: str) -> None:
        self.name = name
        self._fail_after = fail_after
        self._error = error
        self._inner = ClassicEngine(config_mod.ClassicConfig())
        self.frames = 0
        self.closed = False

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        self.frames += 1
        if self.frames > self._fail_after:
            raise EngineError(f"{self.name}: {self._error}")
        matte = self._inner.matte(image, plate)
        return Matte(matte.alpha, matte.foreground, self.name)

    def close(self) -> None:
        self.closed = True
        self._inner.close()


class HangingEngine:
    """The real engine, except that once `hang` is set inference never returns (a wedged GPU
    kernel or a deadlocked driver call), until `close`."""

    def __init__(self, inner: MattingEngine) -> None:
        self.name = inner.name
        self.hang = threading.Event()
        self._released = threading.Event()
        self._inner = inner

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        if self.hang.is_set():
            self._released.wait()
        return self._inner.matte(image, plate)

    def close(self) -> None:
        self._released.set()
        self._inner.close()
