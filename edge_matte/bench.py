"""`edge-matte bench`: ms/frame of the model and of each stage, and the whole pipeline's fps.

Every figure is measured in the same run on the same machine, so ratios between rows are
meaningful even where absolute numbers are noisy. Without --weights the network runs with random
weights of the official architecture: its speed does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import ComposeConfig, Config, MattingConfig, PlateConfig
from .events import log_only
from .frames import Matte

SIZES = {"480p": (640, 480), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="480p,720p,1080p", help=f"comma list of {','.join(SIZES)}"
    )
    parser.add_argument("--weights", type=Path, help="checkpoint to time (default: random weights)")
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed runs per row (after 2 warm-ups)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument(
        "--pipeline", action="store_true", help="also run the whole pipeline on test:// at 720p"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="pipeline run length")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")


def bench_command(args: argparse.Namespace) -> int:
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    results: dict[str, Any] = {"machine": machine(), "rows": []}
    for name in sizes:
        results["rows"] += bench_size(SIZES[name], args)
    print_table(results["rows"])
    if args.pipeline:
        results["pipeline"] = bench_pipeline(args)
        print_pipeline(results["pipeline"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median and p95 wall time of `fn` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": round(float(np.median(samples)), 2),
        "p95_ms": round(float(np.percentile(samples, 95)), 2),
    }


def bench_size(size: tuple[int, int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows for one resolution: each engine, then the per-frame stages around it."""
    from .capture.synthetic import SceneScript, SyntheticSource
    from .compose import Compositor
    from .engine.classic import ClassicEngine
    from .plate import PlateKeeper

    width, height = size
    source = SyntheticSource(
        SceneScript(width=width, height=height, present_from_start=True), realtime=False
    )
    frame = source.frame_at(40)
    plate = frame.truth_background
    label = f"{width}x{height}"
    rows = []

    def row(stage: str, fn: Callable[[], object], **extra: Any) -> None:
        rows.append({"size": label, "stage": stage, **time_ms(fn, args.repeats), **extra})

    torch_engine = _torch_engine(args)
    row(
        "model torch-cpu fp32",
        lambda: torch_engine.matte(frame.image, plate),
        params=_model_params(torch_engine),
    )
    from .engine.fast_cpu import FastCpuEngine

    fast = FastCpuEngine.from_model(torch_engine.model, device="cpu", threads=args.threads)
    row("model torch-cpu+fast", lambda: fast.matte(frame.image, plate))
    classic = ClassicEngine(MattingConfig().classic)
    row("model classic", lambda: classic.matte(frame.image, plate))
    matte = Matte(frame.truth_alpha, frame.image, "truth")
    row("capture test:// render", lambda: source.frame_at(41))
    keeper = PlateKeeper(PlateConfig(), None, "test://", log_only)
    keeper.load_array(plate)
    row("plate maintenance", lambda: keeper.observe(frame, matte))
    compositor = Compositor(ComposeConfig(), Path("/nonexistent"))
    row("composite replace", lambda: compositor.composite(frame.image, matte))
    torch_engine.close()
    return rows


def _torch_engine(args: argparse.Namespace):
    """The torch engine on the CPU with the official defaults (random weights unless given)."""
    from .engine.torch_engine import TorchEngine

    if args.weights is not None:
        return TorchEngine(MattingConfig(weights=args.weights, threads=args.threads), device="cpu")
    from .model.random_weights import random_model

    return TorchEngine.from_model(random_model(0), device="cpu", threads=args.threads)


def _model_params(engine: Any) -> str:
    model = engine.model
    return f"scale {model.backbone_scale}, {model.refiner.mode} {model.refiner.sample_pixels} px"


def bench_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Run the daemon's pipeline on test:// at 720p with a real RTSP client attached."""
    from .pipeline import Pipeline

    port = _free_port()
    config = Config.model_validate(
        {
            "state_dir": "/tmp/edge-matte-bench",
            "source": {
                "uri": "test://?present_from_start=false",
                "width": 1280,
                "height": 720,
                "fps": 30,
            },
            "plate": {"stillness_s": 0.5},
            "stream": {"port": port, "bind": "127.0.0.1"},
        }
    )
    shutil.rmtree("/tmp/edge-matte-bench", ignore_errors=True)
    model_only = _engine_only_ms(config, args.repeats)
    pipeline = Pipeline(config, log_only, lambda stage: None)
    cpu0, wall0 = _cpu_seconds(), time.monotonic()
    pipeline.start()
    client = _rtsp_client(f"rtsp://127.0.0.1:{port}/composite")
    try:
        time.sleep(args.seconds)  # a benchmark's measuring window, not synchronisation
        telemetry = pipeline.telemetry()
    finally:
        client.terminate()
        client.wait(5)
        pipeline.stop()
    cpu_pct = 100.0 * (_cpu_seconds() - cpu0) / (time.monotonic() - wall0)
    return {
        "engine": telemetry["engine"],
        "pipeline_fps": telemetry["stages"]["output"]["fps"],
        "model_only_fps": round(1000.0 / model_only["median_ms"], 1),
        "latency": telemetry["latency"],
        "stages": telemetry["stages"],
        "cpu_percent": round(cpu_pct, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def _engine_only_ms(config: Config, repeats: int) -> dict[str, float]:
    """The pipeline's own engine on one 720p scene frame, nothing else: the model-only figure."""
    from .capture.synthetic import SceneScript, SyntheticSource
    from .engine.select import EngineChain

    frame = SyntheticSource(
        SceneScript(width=1280, height=720, present_from_start=True), realtime=False
    ).frame_at(40)
    chain = EngineChain(config.matting, log_only)
    try:
        return time_ms(lambda: chain.matte(frame.image, frame.truth_background), repeats)
    finally:
        chain.close()


def _rtsp_client(url: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-rtsp_transport", "tcp", "-i", url, "-f", "null", "-"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'size':>10}  {'stage':<24} {'median ms':>10} {'p95 ms':>8}  params")
    for r in rows:
        print(
            f"{r['size']:>10}  {r['stage']:<24} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f}  {r.get('params', '')}"
        )


def print_pipeline(p: dict[str, Any]) -> None:
    ratio = p["pipeline_fps"] / p["model_only_fps"] if p["model_only_fps"] else float("nan")
    print(
        f"pipeline 1280x720 test:// engine {p['engine']}: {p['pipeline_fps']:.1f} fps end to end, "
        f"model-only {p['model_only_fps']} fps (ratio {ratio:.2f}), latency p50 {p['latency']['p50_ms']} ms "
        f"p95 {p['latency']['p95_ms']} ms, CPU {p['cpu_percent']}%, peak RSS {p['peak_rss_mb']} MB"
    )
