"""Subject-region inference: the region covers the subject, nothing outside it, the whole-frame
result inside it.

Tolerance: over the pasted area the region's alpha is within 0.5/255 mean absolute difference
of the whole-frame alpha. Measured with random weights at 768x256 (seeds 0-3, thresholding mode
and sampling with every patch allowed): 0.025-0.092/255; at 1280x720, < 0.2/255 away from the
crop's edges. Sampling with a fixed patch count is not held to it: the crop picks its top-k
patches among fewer candidates (see edge_matte/engine/region.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from model_builders import random_model

from edge_matte.capture.synthetic import SceneScript, SyntheticSource
from edge_matte.engine.region import (
    Box,
    RegionEngine,
    alignment,
    alpha_box,
    difference_box,
    expand,
)
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import EngineError, MediaError

WIDTH, HEIGHT = 768, 256  # the subject's box covers ~19% of the frame, its region ~42%
TOLERANCE = 0.5 / 255


@pytest.fixture(scope="module")
def frame():
    source = SyntheticSource(
        SceneScript(width=WIDTH, height=HEIGHT, present_from_start=True), realtime=False
    )
    return source.frame_at(0)


def subject_box(frame) -> Box:
    box = alpha_box(frame.truth_alpha)
    assert box is not None
    return box


def contains(outer: Box, inner: Box) -> bool:
    return (
        outer.top <= inner.top
        and outer.left <= inner.left
        and outer.bottom >= inner.bottom
        and outer.right >= inner.right
    )


@pytest.mark.parametrize(("scale", "step"), [(1 / 4, 64), (1 / 8, 128), (1 / 2, 32), (1 / 3, 48)])
def test_alignment_is_one_cell_of_the_encoder_in_frame_pixels(scale, step):
    assert alignment(scale) == step


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        (Box(100, 200, 150, 260), Box(0, 64, 256, 384)),  # margin, min size 256, then aligned
        (Box(0, 0, 10, 10), Box(0, 0, 256, 256)),  # grown away from the frame's corner
        (Box(600, 1200, 720, 1280), Box(448, 1024, 720, 1280)),  # far corner: ends at the frame
    ],
)
def test_expand_adds_margin_minimum_size_and_aligns(box, expected):
    assert expand(box, 64, 64, 256, 720, 1280) == expected


def test_expand_never_leaves_the_frame():
    box = expand(Box(10, 10, 90, 90), 64, 64, 256, 100, 120)
    assert box == Box(0, 0, 100, 120)


def test_difference_box_finds_the_changed_block_and_ignores_noise():
    rng = np.random.default_rng(0)
    plate = rng.integers(40, 200, (240, 320, 3), dtype=np.uint8)
    noisy = np.clip(plate + rng.normal(0, 3, plate.shape), 0, 255).astype(np.uint8)
    assert difference_box(noisy, plate, 8.0) is None
    noisy[100:140, 50:90] = 255 - noisy[100:140, 50:90]
    box = difference_box(noisy, plate, 8.0)
    assert box is not None and contains(box, Box(100, 50, 140, 90))
    assert contains(Box(96, 48, 144, 96), box)  # no more than the 8x8 blocks touched


def test_alpha_box_ignores_invisible_alpha():
    alpha = np.zeros((50, 60), np.float32)
    alpha[5, 7] = 0.5 / 255
    assert alpha_box(alpha) is None
    alpha[20:30, 40:45] = 0.2
    assert alpha_box(alpha, (100, 200)) == Box(120, 240, 130, 245)


def kept_box(region: RegionEngine, image: np.ndarray, plate: np.ndarray) -> Box:
    """The part of the frame `region.matte(image, plate)` pastes the inner engine's result into."""
    box = region.region(image, plate)
    assert box is not None
    return box.inset(region.guard, *image.shape[:2])


@pytest.fixture(scope="module")
def whole_and_region(frame):
    """(whole-frame matte, region matte, pasted box) for seeds 0-2, thresholding mode."""
    results = []
    for seed in range(3):
        inner = TorchEngine.from_model(random_model(seed, refine_mode="thresholding"))
        region = RegionEngine(inner, backbone_scale=0.25)
        kept = kept_box(region, frame.image, frame.truth_background)
        matte = region.matte(frame.image, frame.truth_background)
        results.append((inner.matte(frame.image, frame.truth_background), matte, kept))
    return results


def test_region_covers_the_subject_and_is_smaller_than_the_frame(frame):
    region = RegionEngine(TorchEngine.from_model(random_model(0)), backbone_scale=0.25)
    box = region.region(frame.image, frame.truth_background)
    assert box is not None
    assert contains(box.inset(region.guard, HEIGHT, WIDTH), subject_box(frame))
    assert box.area < 0.5 * WIDTH * HEIGHT
    assert box.left % 64 == 0 and box.top % 64 == 0


def test_outside_the_region_alpha_is_zero_and_foreground_is_the_frame(frame, whole_and_region):
    for _, matte, kept in whole_and_region:
        outside = np.ones((HEIGHT, WIDTH), bool)
        outside[kept.slices] = False
        assert (matte.alpha[outside] == 0).all()
        assert (matte.foreground[outside] == frame.image[outside]).all()
        assert matte.engine == "torch-cpu+region"


def test_inside_the_region_alpha_matches_the_whole_frame(frame, whole_and_region):
    for whole, matte, kept in whole_and_region:
        difference = np.abs(matte.alpha[kept.slices] - whole.alpha[kept.slices])
        assert difference.mean() <= TOLERANCE
        assert whole.alpha[kept.slices].std() > 0.01  # a real alpha to compare, not all zeros


def test_sampling_with_every_patch_allowed_matches_too(frame):
    inner = TorchEngine.from_model(random_model(1, refine_sample_pixels=WIDTH * HEIGHT))
    region = RegionEngine(inner, backbone_scale=0.25)
    kept = kept_box(region, frame.image, frame.truth_background)
    whole = inner.matte(frame.image, frame.truth_background)
    matte = region.matte(frame.image, frame.truth_background)
    assert np.abs(matte.alpha[kept.slices] - whole.alpha[kept.slices]).mean() <= TOLERANCE


def test_large_coverage_runs_the_whole_frame_exactly():
    source = SyntheticSource(
        SceneScript(width=384, height=256, present_from_start=True), realtime=False
    )
    frame = source.frame_at(0)
    inner = TorchEngine.from_model(random_model(0, refine_mode="thresholding"))
    region = RegionEngine(inner, backbone_scale=0.25)
    assert region.region(frame.image, frame.truth_background) == Box(0, 0, 256, 384)
    whole = inner.matte(frame.image, frame.truth_background)
    matte = region.matte(frame.image, frame.truth_background)
    assert np.array_equal(matte.alpha, whole.alpha)
    assert np.array_equal(matte.foreground, whole.foreground)


def test_an_unchanged_frame_has_no_region_and_zero_alpha(frame):
    region = RegionEngine(TorchEngine.from_model(random_model(0)), backbone_scale=0.25)
    plate = frame.truth_background
    assert region.region(plate, plate) is None
    matte = region.matte(plate, plate)
    assert not matte.alpha.any()
    assert np.array_equal(matte.foreground, plate)


def test_last_alpha_keeps_its_place_until_reset(frame, whole_and_region):
    # Seed 1's alpha is non-zero around the subject: a frame later the subject "matches the
    # plate" (no difference at all), and its last alpha alone must still give the region.
    _, matte, _ = whole_and_region[1]
    assert alpha_box(matte.alpha) is not None
    region = RegionEngine(
        TorchEngine.from_model(random_model(1, refine_mode="thresholding")), backbone_scale=0.25
    )
    region.matte(frame.image, frame.truth_background)
    plate = frame.truth_background
    last = region.region(plate, plate)
    assert last is not None and contains(last, alpha_box(matte.alpha))
    region.reset()
    assert region.region(plate, plate) is None


def test_a_new_frame_size_forgets_the_last_alpha(frame):
    region = RegionEngine(
        TorchEngine.from_model(random_model(1, refine_mode="thresholding")), backbone_scale=0.25
    )
    region.matte(frame.image, frame.truth_background)
    small = np.ascontiguousarray(frame.truth_background[:128, :256])
    assert region.region(small, small) is None


def test_odd_frame_sizes_keep_their_shape(frame):
    image = np.ascontiguousarray(frame.image[:250, 3:765])
    plate = np.ascontiguousarray(frame.truth_background[:250, 3:765])
    region = RegionEngine(TorchEngine.from_model(random_model(0)), backbone_scale=0.25)
    matte = region.matte(image, plate)
    assert matte.alpha.shape == (250, 762)
    assert matte.foreground.shape == (250, 762, 3)


class PlateLog:
    """A MattingEngine handing frames to `inner` and keeping every plate it was given."""

    def __init__(self, inner: TorchEngine) -> None:
        self.inner, self.name, self.plates = inner, inner.name, []

    def matte(self, image: np.ndarray, plate: np.ndarray):
        self.plates.append(plate)
        return self.inner.matte(image, plate)

    def close(self) -> None:
        self.inner.close()


def test_an_immutable_plate_is_cropped_once_per_box_and_a_writable_one_every_frame(frame):
    log = PlateLog(TorchEngine.from_model(random_model(0, refine_mode="thresholding")))
    region = RegionEngine(log, backbone_scale=0.25)
    plate = frame.truth_background.copy()
    plate.flags.writeable = False
    first = region.matte(frame.image, plate)
    region.reset()
    again = region.matte(frame.image, plate)
    assert log.plates[1] is log.plates[0] and not log.plates[0].flags.writeable
    assert not np.shares_memory(log.plates[0], plate)  # a copy the engine may keep converted
    assert np.array_equal(again.alpha, first.alpha)

    other = plate.copy()
    other.flags.writeable = False
    region.reset()
    region.matte(frame.image, other)
    assert log.plates[2] is not log.plates[0]

    writable = frame.truth_background.copy()
    for _ in range(2):
        region.reset()
        matte = region.matte(frame.image, writable)
    assert log.plates[3] is not log.plates[4]
    assert np.shares_memory(log.plates[4], writable)  # its pixels may change: never kept
    assert np.array_equal(matte.alpha, first.alpha)


def test_bad_input_and_settings_are_refused(frame):
    inner = TorchEngine.from_model(random_model(0))
    with pytest.raises(ValueError, match="out of range"):
        RegionEngine(inner, 0.25, max_fraction=0.0)
    region = RegionEngine(inner, 0.25)
    with pytest.raises(MediaError):
        region.matte(frame.image, frame.truth_background[:100])
    region.close()
    with pytest.raises(EngineError, match="closed"):
        region.matte(frame.image, frame.truth_background)
