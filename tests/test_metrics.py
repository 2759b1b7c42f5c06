"""Matting measures on inputs whose answers can be worked out by hand or by a plain reference."""

from __future__ import annotations

import math

import metrics
import numpy as np
import pytest


def test_sad_is_the_absolute_sum_in_thousands() -> None:
    truth = np.ones((10, 10), np.float32)
    pred = np.zeros((10, 10), np.float32)
    assert metrics.sad(pred, truth) == pytest.approx(0.1)  # 100 pixels off by 1
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    assert metrics.sad(pred, truth, mask) == pytest.approx(0.05)
    assert metrics.sad(np.full((10, 10), 255, np.uint8), truth) == 0  # uint8 is read as /255


def test_mse_is_the_mean_square_over_the_mask() -> None:
    truth = np.zeros((4, 4), np.float32)
    pred = np.full((4, 4), 0.5, np.float32)
    assert metrics.mse(pred, truth) == pytest.approx(0.25)
    pred[0, 0] = 0.0
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    assert metrics.mse(pred, truth, mask) == pytest.approx(0.125)
    assert metrics.mse(pred, truth, np.zeros((4, 4), bool)) == 0.0


def _reference_gradient(alpha: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """A direct transcription of DIM's gaussgradient: a full 2-D kernel, convolution with
    replicated borders, written with loops so it shares nothing with the implementation."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    size = 2 * half + 1
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            u, v = i - half, j - half
            g = math.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
            gv = math.exp(-(v**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
            hx[i, j] = g * (-v * gv / sigma**2)
    hx /= math.sqrt((hx**2).sum())
    padded = np.pad(alpha.astype(np.float64), half, mode="edge")
    h, w = alpha.shape
    gx, gy = np.zeros((h, w)), np.zeros((h, w))
    flipped_x, flipped_y = hx[::-1, ::-1], hx.T[::-1, ::-1]  # convolution flips the kernel
    for y in range(h):
        for x in range(w):
            window = padded[y : y + size, x : x + size]
            gx[y, x] = (window * flipped_x).sum()
            gy[y, x] = (window * flipped_y).sum()
    return np.sqrt(gx**2 + gy**2)


def test_grad_matches_the_reference_definition() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((24, 20), np.float32)
    truth[6:18, 5:15] = 1
    pred = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
    expected = ((_reference_gradient(pred) - _reference_gradient(truth)) ** 2).sum() / 1000
    assert metrics.grad(pred, truth) == pytest.approx(expected, rel=1e-4)


def test_grad_ignores_offsets_and_sees_blur() -> None:
    truth = np.zeros((20, 20), np.float32)
    truth[:, 10:] = 1
    assert metrics.grad(truth, truth) == 0
    assert metrics.grad(truth * 0.5 + 0.25, truth * 0.5 + 0.25) == 0
    blurred = np.tile(np.clip((np.arange(20) - 5) / 10, 0, 1), (20, 1)).astype(np.float32)
    assert metrics.grad(blurred, truth) > 0


def test_conn_of_a_hand_worked_case() -> None:
    """A 3x3 opaque truth and a prediction whose centre is 0.5: the centre leaves the common
    region at threshold 0.6, so l = 0.5; pred's phi there is 1 (d = 0 < 0.15), truth's is
    1 - 0.5; the ring never leaves (l = 1, phi = 1). Error 0.5, reported as 0.0005."""
    truth = np.ones((3, 3), np.float32)
    pred = truth.copy()
    pred[1, 1] = 0.5
    assert metrics.conn(pred, truth) == pytest.approx(0.0005)
    assert metrics.conn(truth, truth) == 0


def test_conn_penalises_a_disconnected_island() -> None:
    truth = np.zeros((20, 20), np.float32)
    truth[2:10, 2:10] = 1
    pred = truth.copy()
    pred[14:18, 14:18] = 1  # a separate blob that the truth does not have
    assert metrics.conn(pred, truth) > 0
    assert metrics.conn(pred, truth) <= metrics.sad(pred, truth)


def test_evaluate_and_argument_checks() -> None:
    truth = np.zeros((8, 8), np.float32)
    result = metrics.evaluate(truth, truth)
    assert result == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}
    with pytest.raises(ValueError, match="shapes"):
        metrics.sad(truth, np.zeros((8, 9), np.float32))
    with pytest.raises(ValueError, match="mask"):
        metrics.mse(truth, truth, np.ones((4, 4), bool))


def test_unknown_region_is_a_band_around_the_edge() -> None:
    truth = np.zeros((40, 40), np.float32)
    truth[10:30, 10:30] = 1
    band = metrics.unknown_region(truth, radius=3)
    # rows 9 (transparent) and 10 (opaque) meet: the band is every pixel within 3 of either
    assert band[7:13, 20].all()
    assert not band[6, 20] and not band[13, 20] and not band[20, 20]
