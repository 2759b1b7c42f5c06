"""Pipeline rows: the daemon's whole pipeline against its own engine alone, in the same run.

The daemon's `Pipeline` serves `test://` (a subject always in view, the true plate loaded) to a
real ffmpeg client in ROUNDS windows, each between two model-only runs of the same config's
`EngineChain` on the same scene; a window's ratio is its published fps over the mean of the
model-only runs around it (a drifting VM moves both alike), and the row is the median window.
The method in full: docs/performance.md, "Pipeline vs model-only".
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_matte.bench.measure import Row, Spec, cpu_seconds, measure, peak_rss_mb, reset_peak_rss
from edge_matte.bench.options import Settings
from edge_matte.bench.scenes import SIZES
from edge_matte.capture.synthetic import SyntheticSource, parse_uri
from edge_matte.config.schema import Config
from edge_matte.engine.openmp import on_passing_thread
from edge_matte.engine.region import RegionEngine
from edge_matte.engine.select import EngineChain
from edge_matte.errors import EdgeMatteError
from edge_matte.events import log_only
from edge_matte.frames import Frame
from edge_matte.model.random_weights import random_model
from edge_matte.runtime.pipeline import Pipeline

SCENE_URI = "test://?present_from_start=true&leave=false"  # one subject, always in view
SOURCE_RATE = 1.5  # source fps over model-only fps
MAX_SOURCE_FPS = 30.0
WARMUP_S = 2.0  # after the client is served, before the window: region and plate settle
STARTUP_S = 60.0  # longest wait for the first frame and the client
WARMUP_FRAMES = 2  # fewest warm-up frames before model-only is timed
SETTLE_FRAMES = 40  # most warm-up frames while a region crop is still growing
ROUNDS = 3  # pipeline windows, each between two model-only runs


@contextlib.contextmanager
def pipeline_weights(weights: Path | None) -> Iterator[Path]:
    """`weights`, or random weights written in the official key layout to a temporary file."""
    if weights is not None:
        yield weights
        return
    with tempfile.TemporaryDirectory(prefix="edge-matte-bench-") as scratch:
        path = Path(scratch) / "random_mobilenetv2.pth"
        on_passing_thread(lambda: torch.save(random_model(0).state_dict(), path))
        yield path


def pipeline_row(label: str, settings: Settings, weights: Path) -> Row:
    """Model-only and the whole pipeline in turn (ROUNDS windows), at size `label`."""
    with tempfile.TemporaryDirectory(prefix="edge-matte-bench-") as state_dir:
        config = _config(label, weights, settings.threads, Path(state_dir), MAX_SOURCE_FPS)
        # Off the main thread, as the pipeline builds its engine: see engine/openmp.py.
        models = [on_passing_thread(lambda: _model_only(label, config, settings.repeats))]
        fps = min(MAX_SOURCE_FPS, max(1.0, round(SOURCE_RATE * models[0].fps, 1)))
        config = _config(label, weights, settings.threads, Path(state_dir), fps)
        window = settings.pipeline_seconds / ROUNDS
        print(
            f"{label}: pipeline for {ROUNDS} x {window:g} s, source {fps:g} fps "
            f"({SOURCE_RATE:g}x model-only {models[0].fps:g} fps, at most {MAX_SOURCE_FPS:g})",
            file=sys.stderr,
        )
        rounds = []
        for _ in range(ROUNDS):
            rounds.append(_pipeline(label, config, window))
            models.append(on_passing_thread(lambda: _model_only(label, config, settings.repeats)))
        return _against_model_only(rounds, models)


def _config(label: str, weights: Path, threads: int, state_dir: Path, fps: float) -> Config:
    width, height = SIZES[label]
    return Config.model_validate(
        {
            "state_dir": state_dir,
            "source": {"uri": SCENE_URI, "width": width, "height": height, "fps": fps},
            "matting": {
                "weights": weights,
                "engine": "torch-cuda" if torch.cuda.is_available() else "torch-cpu",
                "threads": threads,
            },
            "stream": {"port": _free_port(), "bind": "127.0.0.1"},
            # The scene's true plate, never recaptured: random weights' alpha says nobody is
            # there, which would let the keeper take the subject into a new plate (the frames
            # would then be idle). Upkeep still runs every frame.
            "plate": {"auto": False},
        }
    )


def _frames(config: Config, count: int) -> list[Frame]:
    src = config.source
    source = SyntheticSource(parse_uri(src.uri, src.width, src.height, src.fps), realtime=False)
    return [source.frame_at(index) for index in range(count)]


def _truth(frame: Frame) -> np.ndarray:
    """The synthetic scene's true background, which each of its frames carries."""
    if frame.truth_background is None:
        raise ValueError(f"synthetic frame {frame.index} came without its background")
    return frame.truth_background


def _model_only(label: str, config: Config, repeats: int) -> Row:
    """The pipeline's engine alone on the scene's successive frames, once its region settled."""
    frames = _frames(config, repeats + 2)
    plate = _truth(frames[0])
    chain = EngineChain(config.matting, log_only)
    try:
        chain.prepare(config.source.height, config.source.width)
        cycle = itertools.cycle(frames)
        _settle(chain, cycle, plate)
        spec = Spec(
            f"model-only {chain.name}", "model-only", lambda: chain.matte(next(cycle).image, plate)
        )
        return measure(label, [spec], repeats, warmup=0)[0]
    finally:
        chain.close()


def _settle(chain: EngineChain, frames: Iterator[Frame], plate: np.ndarray) -> None:
    """Matte WARMUP_FRAMES frames, then on until a region engine's crop stops changing.

    Random weights put alpha around the subject, which grows the crop by the margin a frame
    until it covers the frame (engine/region.py); the pipeline runs in that steady state for
    nearly its whole window, so model-only is timed in it too, not in the first frames' crops.
    """
    engine = chain.engine
    previous = None
    for index in range(SETTLE_FRAMES):
        frame = next(frames)
        box = engine.region(frame.image, plate) if isinstance(engine, RegionEngine) else None
        if index >= WARMUP_FRAMES and box == previous:  # None == None: no region to settle
            return
        previous = box
        chain.matte(frame.image, plate)


@dataclass(frozen=True)
class _Sample:
    """Counters at one instant of the measuring window."""

    time: float
    cpu_s: float
    published: int
    captured: int
    capture_dropped: int

    @classmethod
    def take(cls, pipeline: Pipeline) -> _Sample:
        stages = pipeline.telemetry()["stages"]
        return cls(
            time.monotonic(),
            cpu_seconds(),
            stages["output"]["out"],
            stages["capture"]["out"],
            stages["capture"]["dropped"],
        )


def _pipeline(label: str, config: Config, seconds: float) -> Row:
    pipeline = Pipeline(config, log_only, lambda stage: None)
    pipeline.plate.load_array(_truth(_frames(config, 1)[0]))
    pipeline.start()
    client = _rtsp_client(f"rtsp://127.0.0.1:{config.stream.port}/composite")
    try:
        _wait_served(pipeline, client)
        time.sleep(WARMUP_S)  # a benchmark's settling time, not synchronisation
        reset_peak_rss()
        before = _Sample.take(pipeline)
        time.sleep(seconds)  # the measuring window
        after = _Sample.take(pipeline)
        telemetry = pipeline.telemetry()
        peak = peak_rss_mb()
    finally:
        client.terminate()
        client.wait(5)
        pipeline.stop()
    if pipeline.failed:
        raise EdgeMatteError(f"bench: the pipeline failed: {pipeline.failed}")
    return _row(label, config, before, after, telemetry, peak)


def _wait_served(pipeline: Pipeline, client: subprocess.Popen[bytes]) -> None:
    """Until a matted camera frame was published (not a NO SIGNAL card: the first matte may
    take seconds while engines settle) and the RTSP client is connected; EdgeMatteError if not."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if pipeline.failed or client.poll() is not None:
            break
        if pipeline.first_camera_output.is_set() and pipeline.telemetry()["rtsp_clients"] > 0:
            return
        time.sleep(0.05)
    raise EdgeMatteError(
        f"bench: pipeline not serving within {STARTUP_S:g} s (failed: {pipeline.failed}, "
        f"ffmpeg exit code: {client.poll()})"
    )


def _row(
    label: str,
    config: Config,
    before: _Sample,
    after: _Sample,
    telemetry: dict[str, Any],
    peak_mb: float,
) -> Row:
    elapsed = after.time - before.time
    fps = (after.published - before.published) / elapsed
    latency = telemetry["latency"]
    if latency["p50_ms"] is None or fps == 0:
        raise EdgeMatteError("bench: the pipeline published nothing in the measuring window")
    matte = telemetry["stages"]["matte"]
    return Row(
        size=label,
        row=f"pipeline {telemetry['engine']}",
        kind="pipeline",
        median_ms=latency["p50_ms"],
        min_ms=None,
        p95_ms=latency["p95_ms"],
        fps=round(fps, 2),
        cpu_percent=round(100.0 * (after.cpu_s - before.cpu_s) / elapsed, 1),
        peak_rss_mb=peak_mb,
        notes={
            "source_fps": config.source.fps,
            "matte_stage_ms_p50": matte["ms_p50"],
            "matte_stage_ms_p95": matte["ms_p95"],
            "captured": after.captured - before.captured,
            "capture_dropped": after.capture_dropped - before.capture_dropped,
            "rtsp_clients": telemetry["rtsp_clients"],
        },
    )


def _against_model_only(rounds: list[Row], models: list[Row]) -> Row:
    """The round with the (low) median fps over the model-only runs around it (their mean), with
    those figures and every round's ratio; peak RSS is the highest of all rounds.

    `models` has one more run than `rounds`: models[i] ran just before rounds[i], models[i + 1]
    just after it."""
    around = [(before.fps + after.fps) / 2 for before, after in itertools.pairwise(models)]
    ratios = [row.fps / fps for row, fps in zip(rounds, around, strict=True)]
    middle = ratios.index(statistics.median_low(ratios))
    before, after = models[middle], models[middle + 1]
    notes = {
        "model_only_fps": round(around[middle], 2),
        "model_only_fps_before": before.fps,
        "model_only_fps_after": after.fps,
        "model_only_median_ms": round((before.median_ms + after.median_ms) / 2, 2),
        "fps_over_model_only": round(ratios[middle], 2),
        "rounds_fps_over_model_only": [round(ratio, 2) for ratio in ratios],
    }
    row = rounds[middle]
    peak = max(window.peak_rss_mb for window in rounds)
    return dataclasses.replace(row, peak_rss_mb=peak, notes={**row.notes, **notes})


_READ_RTSP = ("ffmpeg", "-loglevel", "error", "-rtsp_transport", "tcp")


def _rtsp_client(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*_READ_RTSP, "-i", url, "-c", "copy", "-f", "null", "-"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
