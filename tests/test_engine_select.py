"""EngineChain with the real builders where they run here, and TrtEngine behind a stand-in converter.

Here (no CUDA, no torch2trt) `auto` must come down trt -> torch-cuda -> torch-cpu and say so;
a converter that fails, or an engine that fails mid-stream (a CUDA OOM), must hand the frame to
the next engine; and when nothing works the error names every engine tried.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_builders import random_model
from trt_tools import StandInConverter, scene

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.cache import EngineCache
from edge_matte.engine.select import BUILDERS, EngineChain
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.engine.trt import TrtEngine
from edge_matte.errors import EngineError

cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="asserts the fallback of a machine without CUDA"
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save(random_model(0, refine_sample_pixels=1600).state_dict(), path)
    return path


@pytest.fixture
def events():
    return []


def config_for(weights, **changes) -> MattingConfig:
    return MattingConfig(weights=weights, refine_sample_pixels=1600, **changes)


def with_trt(converter, cache_dir):
    """The real builders, with "trt" building TrtEngine around `converter`."""

    def build_trt(config, profile):
        return TrtEngine(config, converter=converter, cache=EngineCache(cache_dir))

    return {**BUILDERS, "trt": build_trt}


class FailingConverter(StandInConverter):
    def convert(self, module, inputs):
        raise RuntimeError("TensorRT builder ran out of memory")


@cpu_only
def test_auto_comes_down_to_torch_cpu_and_says_what_it_skipped(weights, events) -> None:
    chain = EngineChain(config_for(weights), events.append)
    assert chain.name == "torch-cpu+fast+region" and chain.degraded
    (event,) = events
    assert event.kind == "engine.fallback" and event.data["engine"] == "torch-cpu"
    skipped = event.data["skipped"]
    assert [entry.split(":")[0] for entry in skipped] == ["trt", "torch-cuda"]
    assert "CUDA" in skipped[1]
    image, plate = scene()
    assert chain.matte(image, plate).engine.startswith("torch-cpu")
    chain.close()


def test_without_weights_only_classic_is_wanted_and_it_is_not_degraded(events) -> None:
    chain = EngineChain(MattingConfig(), events.append)
    assert chain.name == "classic" and not chain.degraded
    assert events == []
    image, plate = scene()
    matte = chain.matte(image, plate)
    assert matte.engine == "classic" and matte.alpha.shape == image.shape[:2]


def test_a_working_trt_engine_is_not_degraded(weights, tmp_path, events) -> None:
    chain = EngineChain(
        config_for(weights), events.append, builders=with_trt(StandInConverter(), tmp_path)
    )
    image, plate = scene()
    assert chain.matte(image, plate).engine == "trt-standin"
    assert chain.name == "trt-standin" and not chain.degraded
    assert events == []


@cpu_only
def test_a_failing_converter_hands_the_frame_to_the_next_engine(weights, tmp_path, events) -> None:
    chain = EngineChain(
        config_for(weights), events.append, builders=with_trt(FailingConverter(), tmp_path)
    )
    image, plate = scene()
    matte = chain.matte(image, plate)  # engines are built for the first frame's size
    want = TorchEngine(config_for(weights), "cpu").matte(image, plate)
    assert matte.engine.startswith("torch-cpu") and chain.degraded
    np.testing.assert_allclose(matte.alpha, want.alpha, rtol=0, atol=1e-6)
    (event,) = events
    assert event.kind == "engine.fallback" and event.data["engine"] == "torch-cpu"
    assert "'base' engine failed: TensorRT builder ran out of memory" in event.data["reason"]
    assert [entry.split(":")[0] for entry in event.data["skipped"]] == ["torch-cuda"]


@cpu_only
def test_an_engine_failing_mid_stream_falls_back_and_the_frame_is_still_matted(
    weights, tmp_path, events
) -> None:
    converter = StandInConverter()
    chain = EngineChain(config_for(weights), events.append, builders=with_trt(converter, tmp_path))
    image, plate = scene()
    assert chain.matte(image, plate).engine == "trt-standin"
    for engine in converter.engines:
        engine.failure = "CUDA out of memory"
    matte = chain.matte(image, plate)
    assert (
        matte.engine.startswith("torch-cpu")
        and chain.name == "torch-cpu+fast+region"
        and chain.degraded
    )
    want = TorchEngine(config_for(weights), "cpu").matte(image, plate)
    np.testing.assert_allclose(matte.alpha, want.alpha, rtol=0, atol=1e-6)
    (event,) = events
    assert (
        "trt-standin failed" in event.data["reason"]
        and "CUDA out of memory" in event.data["reason"]
    )


def refusing(name):
    def build(config, profile):
        raise EngineError(f"{name}: refused for this test")

    return build


def test_when_every_engine_fails_the_error_names_them_all(weights, events) -> None:
    builders = {name: refusing(name) for name in BUILDERS}
    with pytest.raises(EngineError) as raised:
        EngineChain(config_for(weights), events.append, builders=builders)
    for name in BUILDERS:
        assert f"{name}: refused" in str(raised.value)
    assert events == []


def test_when_the_last_engine_fails_mid_stream_the_error_says_so(weights, tmp_path, events) -> None:
    converter = StandInConverter()
    builders = {
        **with_trt(converter, tmp_path),
        "torch-cuda": refusing("torch-cuda"),
        "torch-cpu": refusing("torch-cpu"),
        "classic": refusing("classic"),
    }
    chain = EngineChain(config_for(weights), events.append, builders=builders)
    image, plate = scene()
    chain.matte(image, plate)
    converter.engines[0].failure = "CUDA out of memory"
    with pytest.raises(EngineError, match="no matting engine could be started") as raised:
        chain.matte(image, plate)
    for name in ("torch-cuda", "torch-cpu", "classic"):
        assert f"{name}: refused" in str(raised.value)
