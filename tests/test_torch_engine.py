"""TorchEngine: OpenCV BGR frames in, Matte out; padding, channel order, errors, config loading."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from model_builders import random_model
from torch import nn

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import CheckpointError, EngineError, MediaError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A BGR uint8 frame and plate: textured background, a differently coloured block in front."""
    rng = np.random.default_rng(seed)
    plate = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = plate.copy()
    top, left = height // 3, width // 4
    image[top:, left : left + width // 2] = rng.integers(
        0, 256, (height - top, width // 2, 3), dtype=np.uint8
    )
    image[top:, left : left + width // 2, 2] //= 4  # less red than blue: channel order matters
    return image, plate


def to_rgb_tensor(image: np.ndarray) -> torch.Tensor:
    """The manual conversion the engine must match: BGR uint8 HxWx3 -> (1, 3, H, W) RGB 0..1."""
    return torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255


def model_output(model, image: np.ndarray, plate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alpha and BGR uint8 foreground from running the model directly on manually converted tensors."""
    with torch.inference_mode():
        pha, fgr = model(to_rgb_tensor(image), to_rgb_tensor(plate))[:2]
    foreground = (fgr[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8)
    return pha[0, 0].numpy(), foreground


@pytest.fixture(scope="module")
def model():
    return random_model(refine_mode="sampling", refine_sample_pixels=1600)


@pytest.fixture
def engine(model):
    engine = TorchEngine.from_model(model)
    yield engine
    engine.close()


def test_bgr_frame_gives_the_model_output_for_the_rgb_tensor(engine, model):
    image, plate = scene(64, 96)
    matte = engine.matte(image, plate)
    alpha, foreground = model_output(model, image, plate)
    assert matte.engine == "torch-cpu"
    assert matte.alpha.dtype == np.float32 and matte.alpha.shape == (64, 96)
    assert matte.foreground.dtype == np.uint8 and matte.foreground.shape == (64, 96, 3)
    np.testing.assert_allclose(matte.alpha, alpha, rtol=0, atol=1e-6)
    assert np.abs(matte.foreground.astype(int) - foreground).max() <= 1
    # The order matters for this model: feeding BGR as if it were RGB gives another answer.
    swapped, _ = model_output(model, image[:, :, ::-1], plate[:, :, ::-1])
    assert np.abs(swapped - matte.alpha).max() > 0.05


@pytest.mark.parametrize("size", [(61, 93), (65, 94), (3, 5), (1, 1)])
def test_any_frame_size_is_padded_with_its_edges_and_cropped_back(engine, model, size):
    height, width = size
    image, plate = scene(height, width)
    matte = engine.matte(image, plate)
    assert matte.alpha.shape == size and matte.foreground.shape == (*size, 3)
    pad_h, pad_w = engine.padded_size(height, width)
    assert pad_h % 4 == 0 and pad_w % 4 == 0 and pad_h - height < 4 + 4 and pad_w - width < 4 + 4
    bottom, right = pad_h - height, pad_w - width
    padded = [
        cv2.copyMakeBorder(a, 0, bottom, 0, right, cv2.BORDER_REPLICATE) for a in (image, plate)
    ]
    alpha, foreground = model_output(model, *padded)
    np.testing.assert_allclose(matte.alpha, alpha[:height, :width], rtol=0, atol=1e-6)
    assert np.abs(matte.foreground.astype(int) - foreground[:height, :width]).max() <= 1


def test_padded_size_leaves_the_base_network_at_least_a_pixel():
    engine = TorchEngine.from_model(random_model(backbone_scale=0.125))
    assert engine.padded_size(720, 1280) == (720, 1280)
    assert engine.padded_size(3, 5) == (8, 8)
    assert engine.padded_size(719, 1279) == (720, 1280)


def test_results_repeat_across_frames_and_size_changes(engine):
    first = scene(64, 96, seed=3)
    reference = engine.matte(*first)
    engine.matte(*scene(48, 80, seed=4))
    again = engine.matte(*first)
    assert np.array_equal(again.alpha, reference.alpha)
    assert np.array_equal(again.foreground, reference.foreground)
    assert again.alpha is not reference.alpha  # fresh arrays: callers may keep them


def frozen(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.setflags(write=False)
    return array


def test_an_immutable_plate_is_converted_once_and_a_changed_plate_is_seen(engine, model):
    image, plate = scene(64, 96, seed=5)
    other_image, other_plate = scene(64, 96, seed=6)
    still = frozen(plate)
    first = engine.matte(image, still)
    assert engine._bgr_of is still  # kept: nobody can change it
    assert np.array_equal(engine.matte(image, still).alpha, first.alpha)
    # Another immutable plate, and a writable plate changed in place, are both converted anew.
    assert np.allclose(
        engine.matte(other_image, frozen(other_plate)).alpha,
        model_output(model, other_image, other_plate)[0],
        atol=1e-5,
    )
    writable = plate.copy()
    engine.matte(image, writable)
    writable[:] = other_plate
    assert np.allclose(
        engine.matte(other_image, writable).alpha,
        model_output(model, other_image, other_plate)[0],
        atol=1e-5,
    )
    assert engine._bgr_of is None


def test_reading_a_read_only_plate_does_not_warn():
    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('default')\n"
        "from edge_matte.engine.torch_engine import _load_rgb\n"
        "import torch\n"
        "plate = np.zeros((8, 8, 3), np.uint8); plate.setflags(write=False)\n"
        "_load_rgb(torch.empty(1, 3, 8, 8), plate)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "not writable" not in result.stderr


def test_non_contiguous_frames_are_accepted(engine):
    image, plate = scene(64, 96)
    flipped = engine.matte(image[:, ::-1], plate[:, ::-1])
    reference = engine.matte(
        np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(plate[:, ::-1])
    )
    assert np.array_equal(flipped.alpha, reference.alpha)


@pytest.mark.parametrize(
    ("image", "plate", "message"),
    [
        (
            np.zeros((64, 96, 3), np.uint8),
            np.zeros((60, 96, 3), np.uint8),
            "plate is 96x60 but the frame is 96x64",
        ),
        (np.zeros((64, 96, 3), np.float32), np.zeros((64, 96, 3), np.float32), "uint8"),
        (np.zeros((64, 96), np.uint8), np.zeros((64, 96), np.uint8), r"H x W x 3"),
        (np.zeros((64, 96, 4), np.uint8), np.zeros((64, 96, 4), np.uint8), r"H x W x 3"),
        (np.zeros((0, 96, 3), np.uint8), np.zeros((0, 96, 3), np.uint8), r"H x W x 3"),
    ],
)
def test_unusable_images_raise_media_error(engine, image, plate, message):
    with pytest.raises(MediaError, match=message):
        engine.matte(image, plate)


def test_runtime_failures_become_engine_errors():
    broken = random_model()
    broken.decoder.conv4.weight = nn.Parameter(torch.zeros(37, 1, 3, 3))
    engine = TorchEngine.from_model(broken)
    with pytest.raises(EngineError, match="torch-cpu failed on a 96x64 frame") as caught:
        engine.matte(*scene(64, 96))
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_closed_engine_refuses_work(engine):
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.matte(*scene(64, 96))


def test_config_loads_weights_and_refine_settings(tmp_path):
    settings = {
        "backbone_scale": 0.5,
        "refine_mode": "thresholding",
        "refine_threshold": 0.3,
        "refine_kernel_size": 3,
    }
    source = random_model(**settings)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    engine = TorchEngine(MattingConfig(weights=path, **settings))
    assert engine.model.backbone_scale == 0.5 and engine.model.refiner.mode == "thresholding"
    image, plate = scene(64, 96)
    expected = TorchEngine.from_model(source).matte(image, plate)
    got = engine.matte(image, plate)
    assert np.array_equal(got.alpha, expected.alpha)
    assert np.array_equal(got.foreground, expected.foreground)


def test_config_threads_set_torch_threads(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(random_model().state_dict(), path)
    before = torch.get_num_threads()
    try:
        TorchEngine(MattingConfig(weights=path, threads=3))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_missing_weights_are_reported(tmp_path):
    with pytest.raises(EngineError, match="no weights configured"):
        TorchEngine(MattingConfig())
    with pytest.raises(CheckpointError, match="no such file"):
        TorchEngine(MattingConfig(weights=tmp_path / "absent.pth"))


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "invalid torch device|not supported"),
        ("meta", "not supported"),
        ("gpu0", "invalid torch device"),
    ],
)
def test_unusable_devices_are_refused(model, device, message):
    with pytest.raises(EngineError, match=message):
        TorchEngine.from_model(model, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_refused(model):
    with pytest.raises(EngineError, match="CUDA is not available"):
        TorchEngine.from_model(model, device="cuda")


@pytest.mark.cuda
@needs_cuda
def test_cuda_fp16_is_close_to_cpu_fp32():
    image, plate = scene(720, 1280)
    cpu = TorchEngine.from_model(random_model(refine_mode="full")).matte(image, plate)
    engine = TorchEngine.from_model(random_model(refine_mode="full"), device="cuda")
    assert engine.name == "torch-cuda" and engine.dtype == torch.float16
    gpu = engine.matte(image, plate)
    assert gpu.engine == "torch-cuda" and gpu.alpha.dtype == np.float32
    error = np.abs(gpu.alpha - cpu.alpha)
    assert float(error.mean()) < 0.01 and float(error.max()) < 0.2
