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
    for index in range(20 * kept.capacity):
        kept.add(image, image[::2, ::2], moving, index / 30)
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
        kept.add(image, image[::2, ::2], moving, index / 30)
        if index % 200 == 10:
            worker = threading.Thread(target=estimate)
            worker.start()
    worker.join()
    assert not failures and results


def test_a_light_ramp_is_taken_out_where_people_stood_in_the_dark_or_the_bright_part() -> None:
    """Exposure rising 0.8 -> 1.2 while someone covers the top left quarter in the dark half and
    the bottom right quarter in the bright half: a plain median of those pixels' free samples
    would be 10% off (12 levels); with the samples brought to one light, the plate is the room
    in the median light everywhere."""
    kept, grid = estimator(), Grid(320, 180)
    rng = np.random.default_rng(3)
    room = rng.integers(60, 180, (180, 320, 3)).astype(np.float32)
    frames = 120
    for index in range(frames):
        gain = 0.8 + 0.4 * index / (frames - 1)
        image = room * gain + rng.normal(0.0, 1.0, room.shape)
        moving = np.zeros((90, 160), np.uint8)
        quarter = (
            (slice(0, 90), slice(0, 160))
            if index < frames // 2
            else (slice(90, 180), slice(160, 320))
        )
        image[quarter] = 0.0  # the visitor
        moving[
            quarter[0].start // 2 : quarter[0].stop // 2,
            quarter[1].start // 2 : quarter[1].stop // 2,
        ] = 1
        image = np.clip(image, 0, 255).astype(np.uint8)
        kept.add(image, grid.shrink(image), moving, index / 30)
    plate = kept.estimate().plate.astype(np.float32)
    error = np.abs(plate - room)  # the median light of the samples: gain 1.0
    assert error[:90, :160].mean() < 2.0 and error[90:, 160:].mean() < 2.0
    assert error.mean() < 2.0
