"""Output rows: what each output (RTSP, the local screen, the browser view) costs per frame.

Each output runs as the daemon runs it, fed a composited-looking frame of the size at 30 fps
for a window, one after the other: RTSP with a real ffmpeg client receiving the stream (x264 or
the hardware encoder, as `stream.encoder: auto` picks), the screen through its real
`gst-launch-1.0` child into `fakesink` after rotating and fitting to a 1080p mode, the browser
view with one viewer waiting on the shared JPEG. A row's ms columns are the time the output
stage itself spends handing a frame over (`push` for RTSP, `offer` for the others); its notes
give the CPU each output costs per frame in every thread and child process it uses, and that
as a share of a 30 fps frame budget (33.3 ms of one core).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_matte.bench.measure import Row, cpu_seconds, peak_rss_mb, reset_peak_rss
from edge_matte.bench.pipeline_rows import _free_port, _rtsp_client
from edge_matte.bench.scenes import SIZES
from edge_matte.capture.synthetic import SyntheticSource, parse_uri
from edge_matte.config.schema import DisplayConfig, StreamConfig
from edge_matte.errors import EdgeMatteError
from edge_matte.output.display import Screen, fit_frame
from edge_matte.output.mjpeg import JpegFeed
from edge_matte.output.stream import RtspServer

RATE = 30.0
BUDGET_MS = 1000.0 / RATE
FRAMES = 90
SCREEN = (1920, 1080)
STARTUP_S = 60.0
WARMUP_S = 2.0  # the RTSP client connecting, the sink child starting


def output_rows(label: str) -> list[Row]:
    """One row per output at size `label`."""
    width, height = SIZES[label]
    frame = SyntheticSource(parse_uri("test://", width, height, RATE), realtime=False).frame_at(0)
    image = frame.image
    return [
        _rtsp_row(label, image),
        _display_row(label, image),
        _http_row(label, image),
    ]


def _rtsp_row(label: str, image: np.ndarray) -> Row:
    height, width = image.shape[:2]
    config = StreamConfig(bind="127.0.0.1", port=_free_port())
    server = RtspServer(config, width, height, RATE)
    server.start()
    client = _rtsp_client(f"rtsp://127.0.0.1:{server.port}/composite")
    try:
        push = _pusher(server, image)
        deadline = time.monotonic() + STARTUP_S
        while server.client_count() == 0:  # frames flow meanwhile: the client needs them
            if time.monotonic() > deadline or client.poll() is not None:
                raise EdgeMatteError(f"bench: no RTSP client within {STARTUP_S:g} s")
            _feed(push, RATE / 10)
        _feed(push, WARMUP_S * RATE)
        return _measure(label, "output: RTSP", push, None, {"encoder": config.encoder})
    finally:
        client.kill()
        client.wait(5)
        server.stop()


def _pusher(server: RtspServer, image: np.ndarray) -> Callable[[], None]:
    return lambda: server.push("composite", image)


def _display_row(label: str, image: np.ndarray) -> Row:
    """The screen's work is on its own thread and child: timed here as that thread does it."""
    screen = Screen("fakesink", SCREEN, RATE)
    stop = threading.Event()
    config = DisplayConfig(enabled=True)
    scratch: dict[str, np.ndarray] = {}

    def show() -> None:
        frame = fit_frame(image, SCREEN, config.rotate, config.fit, scratch)
        screen.write(frame.data.cast("B"), stop)

    try:
        _feed(show, WARMUP_S * RATE)
        notes = {"screen": "x".join(map(str, SCREEN)), "sink": "fakesink"}
        return _measure(label, "output: display", show, screen.process.pid, notes)
    finally:
        stop.set()
        screen.close()


def _http_row(label: str, image: np.ndarray) -> Row:
    feed = JpegFeed(RATE, 80)
    feed.start()
    stop = threading.Event()

    def viewer() -> None:
        number = 0
        while not stop.is_set():
            got = feed.wait_next(number, 1.0)
            number = got[0] if got else number

    watcher = threading.Thread(target=viewer, daemon=True)
    watcher.start()
    try:
        _feed(lambda: feed.offer(image, True), WARMUP_S * RATE)
        encoded = feed.encoded
        row = _measure(label, "output: browser", lambda: feed.offer(image, True), None, {})
        row.notes["jpegs_per_frame"] = round((feed.encoded - encoded) / FRAMES, 2)
        row.notes["jpeg_quality"] = 80
        return row
    finally:
        stop.set()
        feed.close()
        watcher.join(2)


def _feed(call: Callable[[], object], frames: float) -> list[float]:
    """Call `call` `frames` times at RATE; each call's duration in ms."""
    times = []
    start = time.perf_counter()
    for index in range(int(frames)):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000.0)
        pause = start + (index + 1) / RATE - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # the source's pace, not synchronisation
    return times


def _measure(
    label: str, name: str, call: Callable[[], object], child: int | None, notes: dict[str, Any]
) -> Row:
    reset_peak_rss()
    cpu0, child0, wall0 = cpu_seconds(), _child_cpu(child), time.perf_counter()
    times = _feed(call, FRAMES)
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds() - cpu0 + _child_cpu(child) - child0
    cpu_ms = 1000.0 * cpu / FRAMES
    return Row(
        size=label,
        row=name,
        kind="output",
        median_ms=round(float(np.median(times)), 3),
        min_ms=round(min(times), 3),
        p95_ms=round(float(np.percentile(times, 95)), 3),
        fps=round(FRAMES / wall, 2),
        cpu_percent=round(100.0 * cpu / wall, 1),
        peak_rss_mb=peak_rss_mb(),
        notes={
            **notes,
            "cpu_ms_per_frame": round(cpu_ms, 2),
            "budget_percent_at_30fps": round(100.0 * cpu_ms / BUDGET_MS, 1),
        },
    )


def _child_cpu(pid: int | None) -> float:
    """CPU seconds of a child process so far (0 without one)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
