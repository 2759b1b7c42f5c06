"""Inference fails under a running daemon: the GPU engines raise what CUDA and TensorRT raise
(an illegal memory access, out of memory) after some frames. The chain falls back, says so
with engine.fallback and the stream keeps going. No GPU here, so the two GPU engines are
stand-ins behind the real MattingEngine interface; torch-cpu runs a real random-weight
BackgroundMattingV2 and classic is the real weight-free engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fault_tools import (
    EventLog,
    FailingEngine,
    output_frames,
    output_url,
    running,
    small_config,
)
from model_builders import random_model
from rtsp_tools import read_frames
from waiting import wait_until

from edge_matte.capture.synthetic import SyntheticSource, parse_uri
from edge_matte.config.schema import Config
from edge_matte.engine.select import BUILDERS, EngineChain
from edge_matte.runtime.daemon import Daemon

# Two subjects staggered: somebody is nearly always in view, so the engine runs on most frames.
SCENE = "test://?subjects=2&enter_frame=0"
TRT_ERROR = "CUDA error: an illegal memory access was encountered"
OOM_ERROR = "CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "random_mobilenetv2.pth"
    torch.save(random_model().state_dict(), path)
    return path


def gpu_like(name: str, fail_after: int, error: str) -> Callable[..., FailingEngine]:
    return lambda config, profile: FailingEngine(name, fail_after, error)


def daemon_with_chain(config: Config, **builders: Callable) -> Daemon:
    """A daemon whose engine chain builds `builders` (by chain name) and the real ones else."""
    daemon = Daemon(config)
    daemon.pipeline.engine.close()
    chain = EngineChain(config.matting, daemon.bus.emit, None, {**BUILDERS, **builders})
    daemon.pipeline.engine = chain
    return daemon


def with_plate(daemon: Daemon) -> None:
    """Give the running daemon the true empty room as its plate, so every frame is matted."""
    width, height = daemon.pipeline.size
    room = SyntheticSource(parse_uri(SCENE, width, height, 15)).frame_at(0).truth_background
    daemon.pipeline.plate.load_array(room)


def assert_streaming(daemon: Daemon) -> None:
    before = output_frames(daemon)
    assert wait_until(lambda: output_frames(daemon) >= before + 10, 10)
    assert len(read_frames(output_url(daemon), 2)) == 2
    assert daemon.pipeline.failed is None


def test_gpu_engines_fail_one_after_another_down_to_torch_cpu(
    tmp_path: Path, weights: Path
) -> None:
    config = small_config(tmp_path, SCENE, matting={"weights": str(weights), "engine": "auto"})
    daemon = daemon_with_chain(
        config,
        trt=gpu_like("trt-fp16", 5, TRT_ERROR),
        **{"torch-cuda": gpu_like("torch-cuda", 3, OOM_ERROR)},
    )
    assert daemon.state()["engine"] == "trt-fp16" and not daemon.state()["degraded"]
    with running(daemon) as log:
        with_plate(daemon)
        to_cuda = log.wait_for("engine.fallback")
        to_cpu = log.wait_for("engine.fallback", count=2)
        assert to_cuda.data["engine"] == "torch-cuda" and TRT_ERROR in to_cuda.data["reason"]
        assert to_cpu.data["engine"] == "torch-cpu" and "out of memory" in to_cpu.data["reason"]
        assert_streaming(daemon)
        state = daemon.state()  # "torch-cpu", or "torch-cpu+fast..." with the CPU fast path
        assert state["engine"].startswith("torch-cpu") and state["degraded"]
        assert daemon.telemetry()["engine"] == state["engine"]
        matted = daemon.pipeline.stats["matte"].frames_out
        assert wait_until(lambda: daemon.pipeline.stats["matte"].frames_out > matted + 5, 20)
    assert log.kinds().count("engine.fallback") == 2


def test_torch_cpu_failing_lands_on_classic(tmp_path: Path, weights: Path) -> None:
    config = small_config(tmp_path, SCENE, matting={"weights": str(weights), "engine": "torch-cpu"})
    daemon = daemon_with_chain(
        config, **{"torch-cpu": gpu_like("torch-cpu", 4, "[enforce fail] std::bad_alloc")}
    )
    with running(daemon) as log:
        with_plate(daemon)
        fallback = log.wait_for("engine.fallback")
        assert fallback.data["engine"] == "classic"
        assert_streaming(daemon)
        assert daemon.state()["engine"] == "classic"


def test_a_sticky_cuda_error_skips_every_cuda_engine(tmp_path: Path, weights: Path) -> None:
    config = small_config(tmp_path, SCENE, matting={"weights": str(weights), "engine": "auto"})
    daemon = daemon_with_chain(
        config,
        trt=gpu_like("trt-fp16", 3, TRT_ERROR),
        **{"torch-cuda": gpu_like("torch-cuda", 0, TRT_ERROR)},  # the context is lost
    )
    with running(daemon) as log:
        with_plate(daemon)

        def settled() -> bool:
            return len(log.of("engine.fallback")) >= 2 or daemon.pipeline.failed is not None

        assert wait_until(settled, 10) and daemon.pipeline.failed is None
        assert_streaming(daemon)
        assert daemon.state()["engine"].startswith("torch-cpu")


def test_every_engine_failing_stops_the_daemon_for_systemd(tmp_path: Path) -> None:
    """The end of the chain: nothing can matte, so the daemon exits 1 and systemd restarts it."""
    config = small_config(tmp_path, SCENE)
    daemon = daemon_with_chain(config, classic=gpu_like("classic", 2, "broken"))
    log = EventLog()
    daemon.bus.subscribe(log)
    daemon.pipeline.start = _started_with_plate(daemon, daemon.pipeline.start)
    assert daemon.run() == 1
    failed = log.of("pipeline.failed")
    assert failed and "no engine can matte" in failed[0].message


def _started_with_plate(daemon: Daemon, start: Callable[[], None]) -> Callable[[], None]:
    def start_then_load() -> None:
        start()
        with_plate(daemon)

    return start_then_load
