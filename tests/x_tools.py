"""A real X server (Xvfb) for display tests: started on a free display number, killable and
restartable on the same number, its screen grabbed with ffmpeg's x11grab.

Xvfb has no XVideo extension, so `display.sink: auto` must fall back from xvimagesink to
ximagesink there, as on a desktop without Xv.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from waiting import wait_until

START_S = 10.0

needs_x = pytest.mark.skipif(
    shutil.which("Xvfb") is None or shutil.which("ffmpeg") is None,
    reason="needs Xvfb and ffmpeg (scripts/setup.sh installs xvfb and ffmpeg)",
)


class XServer:
    """Xvfb with one screen of `size`; `display` is ":N" once started."""

    def __init__(self, size: tuple[int, int] = (640, 480)) -> None:
        self.size = size
        self.number: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def display(self) -> str:
        return f":{self.number}"

    def start(self) -> XServer:
        """Start on a free number the first time (Xvfb picks it), on the same number after."""
        width, height = self.size
        command = ["Xvfb", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp", "-br"]
        if self.number is None:
            read, write = os.pipe()
            self.process = subprocess.Popen(
                [*command, "-displayfd", str(write)], pass_fds=(write,), stderr=subprocess.DEVNULL
            )
            os.close(write)
            with os.fdopen(read) as answer:
                self.number = int(answer.readline())  # written once Xvfb accepts clients
        else:
            self.process = subprocess.Popen([*command, self.display], stderr=subprocess.DEVNULL)
            self._await_socket()
        return self

    def _await_socket(self) -> None:
        grab = ["ffmpeg", "-loglevel", "quiet", "-f", "x11grab", "-i", self.display,
                "-frames:v", "1", "-f", "null", "-"]  # fmt: skip
        wait_until(
            lambda: subprocess.run(grab, check=False).returncode == 0,
            START_S,
            f"Xvfb {self.display} to take a screen grab",
            interval=0.1,
        )

    def kill(self) -> None:
        """The X server dies at once, as when a desktop crashes or the screen's server is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        lock = Path(f"/tmp/.X{self.number}-lock")
        lock.unlink(missing_ok=True)  # a killed Xvfb leaves these; a restart refuses to run
        Path(f"/tmp/.X11-unix/X{self.number}").unlink(missing_ok=True)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering (a hung screen)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def grab(self) -> np.ndarray:
        """The whole screen now, BGR uint8."""
        width, height = self.size
        done = subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "x11grab", "-draw_mouse", "0",
             "-video_size", f"{width}x{height}", "-i", self.display, "-frames:v", "1",
             "-f", "image2pipe", "-c:v", "png", "-"],
            capture_output=True, timeout=20, check=True,
        )  # fmt: skip
        return cv2.imdecode(np.frombuffer(done.stdout, np.uint8), cv2.IMREAD_COLOR)

    def __enter__(self) -> XServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def dark_columns(image: np.ndarray, level: float = 8.0) -> np.ndarray:
    """Bool per column: the whole column is (near) black."""
    return image.max(axis=(0, 2)) <= level


def content_box(image: np.ndarray, level: float = 8.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the part that is not black bars."""
    columns = np.flatnonzero(image.max(axis=(0, 2)) > level)
    rows = np.flatnonzero(image.max(axis=(1, 2)) > level)
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1
