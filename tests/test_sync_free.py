"""Sync-free patch selection (fixed count, by top-k index) equals the refiner's own selection."""

from __future__ import annotations

import pytest
import torch
from model_builders import random_model

from edge_matte.engine.sync_free import SyncFreeRefiner


def pair(seed: int, height: int = 64, width: int = 96):
    gen = torch.Generator().manual_seed(seed)
    src = torch.rand((1, 3, height, width), generator=gen)
    bgr = torch.rand((1, 3, height, width), generator=gen)
    return src, bgr


@pytest.mark.parametrize("prevent_oversampling", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("patches", [100, 384])  # of 16 x 24 = 384 at 64x96: some, all
def test_sampling_mode_gives_the_refiners_exact_result(seed, prevent_oversampling, patches) -> None:
    model = random_model(seed, refine_sample_pixels=16 * patches).eval()
    model.refiner.prevent_oversampling = prevent_oversampling
    src, bgr = pair(seed)
    with torch.no_grad():
        want = model(src, bgr)
        model.refiner = SyncFreeRefiner.like(model.refiner)
        got = model(src, bgr)
    selected = want[5].sum().item()
    if prevent_oversampling and seed == 0:  # seed 0's error is 0 in places: patches skipped
        assert 0 < selected < patches
    for name, a, b in zip(
        ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref"), got, want, strict=True
    ):
        assert torch.equal(a, b), name


def test_thresholding_mode_keeps_the_refiners_path() -> None:
    model = random_model(0, refine_mode="thresholding", refine_threshold=0.05).eval()
    src, bgr = pair(3)
    with torch.no_grad():
        want = model(src, bgr)
        model.refiner = SyncFreeRefiner.like(model.refiner)
        got = model(src, bgr)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
