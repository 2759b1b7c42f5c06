"""The per-pixel estimator's building blocks: exact order statistics, bounded memory, a
snapshot that lets frames keep coming while an estimate runs on another thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_matte.plate.detect import NoiseModel
from edge_matte.plate.estimator import BackgroundEstimator, select
from edge_matte.plate.grid import Grid


@pytest.mark.parametrize("count", [1, 2, 7, 30])
def test_select_is_an_exact_order_statistic(count: int) -> None:
    rng = np.random.default_rng(count)
    samples = [rng.integers(0, 256, (9, 11, 3), dtype=np.uint8) for _ in range(count)]
    rank = rng.integers(0, count, (9, 11, 3))
    expected = np.take_along_axis(np.sort(np.stack(samples), axis=0), rank[None], axis=0)[0]
    assert np.array_equal(select(samples, rank), expected)


def estimator(width: int = 320, height: int = 180) -> BackgroundEstimator:
    grid = Grid(width, height)
    return BackgroundEstimator(grid, 30.0, NoiseModel(grid))


def test_kept_samples_stay_bounded_and_span_the_history() -> None:
    kept = estimator()
    image = np.full((180, 320, 3), 90, np.uint8)
    moving = np.zeros((90, 160), np.uint8)
    for _ in range(20 * kept.capacity):
        kept.add(image, image[::2, ::2], moving)
    assert kept.capacity // 2 <= kept.samples <= kept.capacity
    assert kept.nbytes < 1.2 * kept.capacity * image.nbytes  # whatever the clip's length


def test_frames_keep_coming_while_an_estimate_runs() -> None:
    kept = estimator()
    rng = np.random.default_rng(0)
    moving = np.zeros((90, 160), np.uint8)
    failures: list[BaseException] = []
    results = []

    def estimate() -> None:
        try:
            results.append(kept.estimate())
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    for index in range(3000):
        image = rng.integers(80, 100, (180, 320, 3), dtype=np.uint8)
        kept.add(image, image[::2, ::2], moving)
        if index % 200 == 10:
            worker = threading.Thread(target=estimate)
            worker.start()
    worker.join()
    assert not failures and results
