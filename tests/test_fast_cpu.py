"""The fast CPU path: BatchNorm folding, the window refiner, channels-last, ONNX Runtime base.

Every fast path must give the plain FP32 model's output within float rounding (1e-4), in every
refine mode, including patches on the frame's edges.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from model_builders import random_model
from torch import nn

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.fast_cpu import FastCpuEngine, channels_last_base, optimize_for_cpu
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import EngineError
from edge_matte.model.fuse import fold_batchnorm, fold_conv_bn
from edge_matte.model.phase_conv import (
    NEAREST_ROWS,
    depth_to_space,
    gather,
    phase_weights,
    space_to_depth_weights,
)
from edge_matte.model.window_refiner import WindowRefiner

TOLERANCE = 1e-4

# Every refine mode and kernel, every patch refined in one case (edges included), and the
# 1/8 scale where the window refiner falls back to the plain one.
SETTINGS = [
    {"refine_mode": "sampling", "refine_sample_pixels": 4_000},
    {"refine_mode": "sampling", "refine_sample_pixels": 4_000, "refine_kernel_size": 1},
    {"refine_mode": "thresholding", "refine_threshold": 0.1},
    {"refine_mode": "thresholding", "refine_threshold": -1.0},
    {"refine_mode": "thresholding", "refine_threshold": -1.0, "refine_kernel_size": 1},
    {"refine_mode": "full"},
    {"refine_mode": "sampling", "backbone_scale": 1 / 8},
]


def pair(height: int = 96, width: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=gen), torch.rand(
        1, 3, height, width, generator=gen
    )


def outputs(model, src, bgr, base=None):
    with torch.inference_mode():
        if base is None:
            return model(src, bgr)
        return model.forward_with(src, bgr, base, model.refiner.convs)


def assert_close(expected, actual, tolerance=TOLERANCE):
    for name, a, b in zip(
        ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"), expected, actual, strict=True
    ):
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() <= tolerance, name


def test_fold_conv_bn_matches_conv_then_batchnorm():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(5, 7, 3, padding=1, bias=True), nn.BatchNorm2d(7)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, 5, 9, 11)
    with torch.no_grad():
        expected = bn(conv(x))
        fold_conv_bn(conv, bn)
        assert (conv(x) - expected).abs().max().item() < 1e-5


def test_fold_batchnorm_removes_every_batchnorm():
    model = random_model(1)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model) == count
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_folded_model_matches_the_original(settings):
    model = random_model(2, **settings)
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    src, bgr = pair()
    assert_close(outputs(model, src, bgr), outputs(folded, src, bgr))


def test_fold_batchnorm_refuses_a_training_model():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(random_model(0).train())


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_optimized_model_matches_the_original(settings):
    model = random_model(3, **settings)
    fast = optimize_for_cpu(model)
    src, bgr = pair(seed=1)
    expected = outputs(model, src, bgr)
    assert_close(expected, outputs(fast, src, bgr, channels_last_base(fast)))
    assert_close(expected, outputs(fast, src, bgr))  # channels-last weights, NCHW input
    assert expected[5].sum() > 0  # the refiner did refine patches


@pytest.mark.parametrize("dense_ratio", [0, 10**9], ids=["per-patch", "dense"])
@pytest.mark.parametrize(
    "settings",
    [
        {"refine_mode": "thresholding", "refine_threshold": -1.0},  # every patch, all edges
        {"refine_mode": "thresholding", "refine_threshold": 0.3},  # scattered patches
        {"refine_mode": "thresholding", "refine_threshold": -1.0, "refine_kernel_size": 1},
    ],
    ids=["all", "scattered", "kernel1"],
)
def test_window_refiner_matches_the_original_both_ways(settings, dense_ratio):
    # Odd quarter-resolution sizes (11 x 15) put windows on every edge.
    model = random_model(4, **settings)
    window = copy.deepcopy(model)
    window.refiner = WindowRefiner.like(model.refiner)
    window.refiner.DENSE_RATIO = dense_ratio
    src, bgr = pair(44, 60, seed=2)
    expected = outputs(model, src, bgr)
    assert expected[5].sum() > 0
    assert_close(expected, outputs(window, src, bgr))


def test_optimize_leaves_the_original_model_alone():
    model = random_model(5)
    src, bgr = pair(seed=3)
    before = outputs(model, src, bgr)
    fast = optimize_for_cpu(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert type(model.refiner) is not WindowRefiner
    assert fast.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in fast.parameters())
    assert_close(before, outputs(model, src, bgr), tolerance=0.0)


def scene(height: int = 96, width: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    plate = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = plate.copy()
    image[height // 3 :, width // 4 : 3 * width // 4] = rng.integers(
        0, 256, (height - height // 3, width // 2, 3), dtype=np.uint8
    )
    return image, plate


def assert_same_matte(expected, actual):
    assert np.abs(expected.alpha - actual.alpha).max() <= TOLERANCE
    diff = np.abs(expected.foreground.astype(int) - actual.foreground.astype(int))
    assert diff.max() <= 1  # uint8 rounding of values within 1e-4


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_fast_engine_mattes_like_the_torch_engine(backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model = random_model(6, refine_sample_pixels=2_000)
    image, plate = scene(90, 126)  # not multiples of 4: the engine pads
    plain = TorchEngine.from_model(model)
    fast = FastCpuEngine.from_model(model, backend=backend)
    assert fast.name == {"torch": "torch-cpu+fast", "onnxruntime": "torch-cpu+ort"}[backend]
    assert_same_matte(plain.matte(image, plate), fast.matte(image, plate))
    # The ONNX base has dynamic height and width: another size runs on the same session.
    image, plate = scene(64, 200, seed=1)
    assert_same_matte(plain.matte(image, plate), fast.matte(image, plate))
    fast.close()
    with pytest.raises(EngineError, match="closed"):
        fast.matte(image, plate)


def test_fast_engine_loads_weights_from_config(tmp_path):
    model = random_model(7, refine_mode="thresholding")
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    config = MattingConfig(weights=path, refine_mode="thresholding")
    image, plate = scene(seed=2)
    assert_same_matte(
        TorchEngine(config).matte(image, plate), FastCpuEngine(config).matte(image, plate)
    )


def test_fast_engine_rejects_unknown_backends_and_devices():
    with pytest.raises(EngineError, match="not one of"):
        FastCpuEngine.from_model(random_model(0), backend="openvino")
    with pytest.raises(EngineError):
        FastCpuEngine.from_model(random_model(0), device="cuda")


def assert_same_convolution(actual: torch.Tensor, expected: torch.Tensor, shape: tuple) -> None:
    assert actual.shape == expected.shape == shape
    assert (actual - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


def test_phase_weights_fold_the_upsample_into_the_convolution():
    """conv1 over a x2 bilinear upsample == four 3x3 phase convolutions of the window itself."""
    gen = torch.Generator().manual_seed(7)
    window = torch.randn(5, 36, 7, 9, generator=gen)
    weight = torch.randn(24, 36, 3, 3, generator=gen)
    upsampled = nn.functional.interpolate(window, scale_factor=2.0, mode="bilinear")
    expected = nn.functional.conv2d(upsampled[:, :, 1:-1, 1:-1], weight)
    actual = depth_to_space(nn.functional.conv2d(window, phase_weights(weight)), 24)
    assert_same_convolution(actual, expected, (5, 24, 10, 14))


def test_nearest_phase_weights_fold_the_upsample_into_the_convolution():
    """conv3 over a x2 nearest upsample == four 2x2 phase convolutions of its input."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 16, 4, 6, generator=gen)
    weight = torch.randn(12, 16, 3, 3, generator=gen)
    expected = nn.functional.conv2d(nn.functional.interpolate(x, scale_factor=2.0), weight)
    actual = depth_to_space(nn.functional.conv2d(x, phase_weights(weight, NEAREST_ROWS)), 12)
    assert_same_convolution(actual, expected, (5, 12, 6, 10))


def test_space_to_depth_weights_give_the_full_resolution_convolution():
    """A valid 3x3 convolution == 2x2 phase convolutions of the input's space-to-depth."""
    gen = torch.Generator().manual_seed(9)
    y = torch.randn(5, 6, 8, 12, generator=gen)
    weight = torch.randn(12, 6, 3, 3, generator=gen)
    expected = nn.functional.conv2d(y, weight)
    depth = space_to_depth(y)
    phases = nn.functional.conv2d(depth, space_to_depth_weights(weight))
    actual = depth_to_space(phases, 12)
    assert_same_convolution(actual, expected, (5, 12, 6, 10))


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4 C, H/2, W/2]: each image as one window gathered in 2x2 blocks."""
    batch, _, height, width = x.shape
    corners = (
        torch.arange(batch),
        torch.zeros(batch, dtype=torch.long),
        torch.zeros(batch, dtype=torch.long),
    )
    return gather(x.permute(0, 2, 3, 1), corners, 1, (height, width), block=2)


def test_depth_to_space_inverts_the_block_gather():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    depth = space_to_depth(x)
    assert depth.shape == (2, 12, 2, 3)
    assert depth[0, :, 0, 0].tolist() == [0, 24, 48, 1, 25, 49, 6, 30, 54, 7, 31, 55]
    assert torch.equal(depth_to_space(depth, 3), x)


def test_gather_cuts_windows_at_their_corners():
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    corners = (torch.tensor([1, 0]), torch.tensor([1, 0]), torch.tensor([2, 1]))
    windows = gather(x, corners, 2, (2, 3))
    assert windows.shape == (2, 3, 2, 3)
    assert torch.equal(windows[0], x[1, 2:4, 4:7].permute(2, 0, 1))
    assert torch.equal(windows[1], x[0, 0:2, 2:5].permute(2, 0, 1))
