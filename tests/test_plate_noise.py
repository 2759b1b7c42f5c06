"""The plate's noise model on compressed video: repeated blocks (exact zeros) are no evidence."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from edge_matte.config.profile import Profile
from edge_matte.plate.detect import NoiseModel
from edge_matte.plate.grid import Grid

GRID = Grid(640, 360)


def difference(sigma: float, repeated: float, seed: int = 0) -> np.ndarray:
    """|a - b| of two grid-luma frames with noise `sigma`, where a share `repeated` of the cells
    were repeated by the codec (difference exactly 0)."""
    rng = np.random.default_rng(seed)
    height, width = GRID.size[::-1]
    diff = np.abs(rng.normal(0.0, sigma * math.sqrt(2.0), (height, width))).astype(np.float32)
    diff[rng.random((height, width)) < repeated] = 0.0
    return diff


def settled(noise: NoiseModel, diff: np.ndarray, rounds: int = 80) -> float:
    for _ in range(rounds):
        noise.observe(diff)
    return noise.sigma


def test_noise_estimate_ignores_repeated_blocks() -> None:
    noise = NoiseModel(GRID)
    assert 0.85 < settled(noise, difference(1.0, repeated=0.62)) < 1.15  # a plain median: 0.3
    assert noise.motion_threshold > 6.0  # 5 sigma of a two-frame difference, not the 3-level floor


def test_noise_estimate_unchanged_without_repeats() -> None:
    assert 1.8 < settled(NoiseModel(GRID), difference(2.0, repeated=0.0)) < 2.2


def test_a_static_clip_keeps_the_estimate() -> None:
    noise = NoiseModel(GRID)
    before = noise.sigma
    assert settled(noise, np.zeros(GRID.size[::-1], np.float32)) == before


def test_calibration_profile_still_overrides() -> None:
    profile = Profile(
        name="bench",
        created=datetime.now(timezone.utc),
        source_uri="test://",
        width=640,
        height=360,
        fps=30.0,
        noise_sigma=(4.0, 4.0, 4.0),
        noise_floor=6.0,
        empty_threshold=1.2,
    )
    noise = NoiseModel(GRID, profile)
    before = noise.sigma
    assert settled(noise, difference(0.5, repeated=0.62)) == before
    assert noise.empty_difference == 1.2
