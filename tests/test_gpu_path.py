"""The torch-cuda path without TensorRT: CUDA graphs, sync-free selection, timed variant choice.

Here (no GPU) the graphs run eagerly behind the same interface, so the CPU tests check that the
engine computes what `TorchEngine` does and that the fastest variant is chosen by an injected
clock; tests marked `cuda` capture real graphs and skip, saying why, without a GPU.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import pytest
import torch
from model_builders import random_model
from trt_tools import scene

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.choose import FastestChoice
from edge_matte.engine.cuda_graph import GraphEngine
from edge_matte.engine.graphs import StaticGraph
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import EngineError
from edge_matte.frames import Matte

HAVE_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU (none here)")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save(random_model(0, refine_sample_pixels=1600).state_dict(), path)
    return path


def config_for(weights, **changes) -> MattingConfig:
    return MattingConfig(weights=weights, refine_sample_pixels=1600, **changes)


@pytest.mark.parametrize("mode", ["sampling", "thresholding", "full"])
def test_the_graph_engine_mattes_like_the_torch_engine(weights, mode) -> None:
    config = config_for(weights, refine_mode=mode, refine_threshold=0.2)
    engine = GraphEngine(config, "cpu")
    engine.prepare(64, 96)
    want = TorchEngine(config, "cpu")
    for seed in range(3):  # the same graph (here eager) serves every frame
        image, plate = scene(seed=seed)
        got, expected = engine.matte(image, plate), want.matte(image, plate)
        np.testing.assert_allclose(got.alpha, expected.alpha, rtol=0, atol=1e-6)
        assert np.abs(got.foreground.astype(int) - expected.foreground).max() <= 1
    assert engine.name == "torch-cpu+graph-fp32"


def test_a_static_graph_runs_eagerly_on_the_cpu() -> None:
    graph = StaticGraph(lambda x, y: (x * y + 1, x - y), "test")
    x, y = torch.rand(4, 5), torch.rand(4, 5)
    got = graph(x, y)
    assert graph.captured == 0
    assert all(torch.equal(a, b) for a, b in zip(got, (x * y + 1, x - y), strict=True))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timed:
    """An engine whose every frame takes `cost` seconds of the injected clock."""

    def __init__(self, name: str, cost: float, clock: Clock, log: list[str]) -> None:
        self.name, self.cost, self.clock, self.log = name, cost, clock, log
        self.prepared: tuple[int, int] | None = None
        log.append(f"built {name}")

    def prepare(self, height: int, width: int) -> None:
        self.prepared = (height, width)

    def matte(self, image, plate) -> Matte:
        if self.cost < 0:
            raise EngineError(f"{self.name} ran out of memory")
        self.clock.now += self.cost
        return Matte(
            alpha=np.zeros(image.shape[:2], np.float32), foreground=image, engine=self.name
        )

    def close(self) -> None:
        self.log.append(f"closed {self.name}")


def choice(costs: dict[str, float]):
    clock, log = Clock(), []
    variants = {
        name: (lambda n=name, c=cost: Timed(n, c, clock, log)) for name, cost in costs.items()
    }
    return FastestChoice(variants, clock=clock, runs=4), log


def test_the_fastest_variant_is_chosen_at_prepare_and_reported(caplog) -> None:
    chooser, log = choice(
        {"fp16+region": 0.0237, "fp16": 0.0112, "fp32": 0.0099, "fp32+region": 0.02}
    )
    assert chooser.name == "fp16+region" and log == ["built fp16+region"]  # until timed
    with caplog.at_level(logging.INFO):
        chooser.prepare(72, 128)
    assert chooser.chosen == "fp32" and chooser.name == "fp32"
    assert chooser.timings == pytest.approx(
        {"fp16+region": 0.0237, "fp16": 0.0112, "fp32": 0.0099, "fp32+region": 0.02}
    )
    assert chooser.engine.prepared == (72, 128)
    assert sorted(entry for entry in log if entry.startswith("closed")) == [
        "closed fp16",
        "closed fp16+region",
        "closed fp32+region",
    ]
    assert "using fp32 (fp32) for 128x72 frames" in caplog.text
    image, plate = scene()
    assert chooser.matte(image, plate).engine == "fp32"


def test_a_variant_that_fails_while_timed_is_skipped_and_all_failing_is_an_engine_error() -> None:
    chooser, log = choice({"fp16": -1.0, "fp32": 0.01})
    chooser.prepare(64, 96)
    assert chooser.chosen == "fp32" and "closed fp16" in log
    chooser, _ = choice({"fp16": -1.0, "fp32": -1.0})
    with pytest.raises(EngineError, match=r"every variant failed: fp16: .*; fp32: "):
        chooser.prepare(64, 96)


# -- on a CUDA GPU ----------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_a_static_graph_is_captured_and_replays_new_inputs() -> None:
    model = random_model(0).cuda().eval()
    graph = StaticGraph(model.base, "base")
    with torch.inference_mode():
        for seed in range(3):
            x = torch.rand((1, 6, 64, 96), generator=torch.Generator().manual_seed(seed)).cuda()
            torch.testing.assert_close(graph(x).clone(), model.base(x))
    assert graph.captured == 1


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mode", ["sampling", "thresholding"])
def test_the_graph_engine_on_cuda_fp32_mattes_like_eager(weights, mode) -> None:
    config = config_for(weights, refine_mode=mode, refine_threshold=0.2)
    engine = GraphEngine(config, "cuda", torch.float32)
    engine.prepare(64, 96)
    eager = TorchEngine(config, "cuda", torch.float32)
    for seed in range(3):
        image, plate = scene(seed=seed)
        got, want = engine.matte(image, plate), eager.matte(image, plate)
        np.testing.assert_allclose(got.alpha, want.alpha, rtol=0, atol=1e-4)
    assert engine.name == "torch-cuda+graph-fp32"


def test_the_cuda_variants_cover_both_precisions_with_and_without_regions(weights) -> None:
    from edge_matte.engine.cuda_graph import cuda_variants

    config = config_for(weights)
    assert list(cuda_variants(config, region=lambda engine: engine)) == [
        "fp16+region",
        "fp16",
        "fp32+region",
        "fp32",
    ]
    assert list(cuda_variants(config)) == ["fp16", "fp32"]


class Recorded:
    """A stand-in graph capture: replays `fn` and counts; refuses inputs wider than `limit`."""

    made: ClassVar[list[tuple[int, ...]]] = []

    def __init__(self, fn, inputs, limit: int = 64) -> None:
        if inputs[0].shape[-1] > limit:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.fn = fn
        Recorded.made.append(tuple(inputs[0].shape))

    def replay(self, inputs):
        return self.fn(*inputs)


def test_graphs_are_kept_per_signature_up_to_a_limit_and_a_failed_capture_runs_eagerly(
    caplog,
) -> None:
    Recorded.made = []
    graph = StaticGraph(
        lambda x: x * 2, "test", max_graphs=2, capture=Recorded, capturable=lambda inputs: True
    )
    for width in (8, 8, 16, 8, 32, 16, 100, 100):
        x = torch.ones(1, width)
        assert torch.equal(graph(x), x * 2)
    # 8 and 16 captured; 8 used again, so 32 evicts 16 (least recently used), which is then
    # captured again and evicts 8
    assert Recorded.made == [(1, 8), (1, 16), (1, 32), (1, 16)]
    assert graph.captured == 2
    assert caplog.text.count("CUDA graph capture failed") == 1  # width 100, tried once


def test_a_failure_while_preparing_is_an_engine_error(weights, monkeypatch) -> None:
    engine = GraphEngine(config_for(weights), "cpu")

    def out_of_memory(src, bgr):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "infer", out_of_memory)
    with pytest.raises(EngineError, match="failed to prepare 96x64: CUDA out of memory"):
        engine.prepare(64, 96)
