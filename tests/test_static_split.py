"""The static split: base + fixed-count refiner convs give the monolithic model's output exactly."""

from __future__ import annotations

import math

import pytest
import torch
from model_builders import random_model

from edge_matte.engine.static import (
    FixedCountConvs,
    base_example,
    default_patch_count,
    full_examples,
    patch_examples,
)
from edge_matte.model import BaseNetwork, PatchRefiner

HEIGHT, WIDTH = 64, 96  # 16 x 24 = 384 patches of 4x4
CPU, FP32 = torch.device("cpu"), torch.float32


class Recorder:
    """A ConvsFn (or BaseFn) that records the input shapes of every call, then runs `fn`."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.shapes: list[tuple[tuple[int, ...], ...]] = []

    def __call__(self, *inputs):
        self.shapes.append(tuple(tuple(x.shape) for x in inputs))
        return self.fn(*inputs)


def frame_pair(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A source with a block that differs from the background, so errors vary across patches."""
    gen = torch.Generator().manual_seed(seed)
    bgr = torch.rand((1, 3, HEIGHT, WIDTH), generator=gen)
    src = bgr.clone()
    src[:, :, 16:, 24:72] = torch.rand((1, 3, HEIGHT - 16, 48), generator=gen)
    return src, bgr


def settings(mode: str, kernel_size: int) -> dict:
    return {
        "refine_mode": mode,
        "refine_kernel_size": kernel_size,
        "refine_sample_pixels": 1600,  # k = 100 patches of 384
        "refine_threshold": 0.3,
    }


def selected_patches(model, src, bgr) -> int:
    """How many patches the model refines on this frame pair (what the static runner must cover)."""
    recorder = Recorder(model.refiner.convs)
    with torch.inference_mode():
        model.forward_with(src, bgr, model.base, recorder)
    ((x_shape, _),) = recorder.shapes
    return x_shape[0]


@pytest.mark.parametrize("kernel_size", [3, 1])
@pytest.mark.parametrize("mode", ["sampling", "thresholding"])
@pytest.mark.parametrize("relation", ["below", "equal", "above"])
def test_fixed_count_split_equals_the_monolithic_model(mode, kernel_size, relation) -> None:
    model = random_model(3, **settings(mode, kernel_size))
    src, bgr = frame_pair()
    selected = selected_patches(model, src, bgr)
    assert 1 < selected < (HEIGHT // 4) * (WIDTH // 4)  # a real selection, not all or nothing
    count = {"below": max(1, selected // 3), "equal": selected, "above": selected + 7}[relation]
    engine = Recorder(PatchRefiner(model.refiner).eval())
    base = Recorder(BaseNetwork(model).eval())

    with torch.inference_mode():
        expected = model(src, bgr)
        got = model.forward_with(src, bgr, base, FixedCountConvs(engine, count))

    for name, want, have in zip(
        ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"), expected, got, strict=True
    ):
        assert (have - want).abs().max().item() <= 1e-6, name
    # Every call had exactly the static shapes an engine is built for, in as few calls as possible.
    x_patch, y_patch = patch_examples(model.refiner, count, FP32, CPU)
    assert engine.shapes == [(tuple(x_patch.shape), tuple(y_patch.shape))] * math.ceil(
        selected / count
    )
    assert base.shapes == [(tuple(base_example(model, HEIGHT, WIDTH, FP32, CPU).shape),)]


@pytest.mark.parametrize("kernel_size", [3, 1])
def test_full_mode_split_equals_the_monolithic_model_with_the_full_example_shapes(
    kernel_size,
) -> None:
    model = random_model(4, **settings("full", kernel_size))
    src, bgr = frame_pair()
    engine = Recorder(PatchRefiner(model.refiner).eval())
    with torch.inference_mode():
        expected = model(src, bgr)
        got = model.forward_with(src, bgr, BaseNetwork(model).eval(), engine)
    for want, have in zip(expected, got, strict=True):
        assert (have - want).abs().max().item() <= 1e-6
    x_full, y_full = full_examples(model.refiner, HEIGHT, WIDTH, FP32, CPU)
    assert engine.shapes == [(tuple(x_full.shape), tuple(y_full.shape))]


def test_padding_rows_and_reused_buffers_never_leak_into_outputs() -> None:
    model = random_model(5, **settings("sampling", 3))
    convs = model.refiner.convs
    gen = torch.Generator().manual_seed(0)
    runner = FixedCountConvs(convs, 16)
    with torch.inference_mode():
        for total in (13, 5, 40, 16, 1):  # shrinking after larger calls leaves old rows behind
            x = torch.rand((total, 42, 8, 8), generator=gen) * 4
            y = torch.rand((total, 6, 8, 8), generator=gen)
            out = runner(x, y)
            assert out.shape == (total, 4, 4, 4)
            assert (out - convs(x, y)).abs().max().item() <= 1e-6


def test_no_patches_is_one_call_with_an_empty_result() -> None:
    calls = Recorder(lambda x, y: torch.zeros((x.size(0), 4, 4, 4)))
    out = FixedCountConvs(calls, 8)(torch.zeros((0, 42, 8, 8)), torch.zeros((0, 6, 8, 8)))
    assert out.shape == (0, 4, 4, 4)
    assert calls.shapes == [((8, 42, 8, 8), (8, 6, 8, 8))]


def test_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="patch count"):
        FixedCountConvs(lambda x, y: x, 0)


def test_default_patch_count_is_top_k_capped_at_every_patch() -> None:
    model = random_model(0, refine_sample_pixels=1600)
    assert default_patch_count(model, 64, 96) == 100
    assert default_patch_count(model, 16, 20) == 4 * 5
    hd = random_model(0, refine_sample_pixels=80_000)
    assert default_patch_count(hd, 1080, 1920) == 5000  # above TensorRT's top-k limit of 3840
