"""Alpha-matte quality measures as the matting literature reports them (SAD, MSE, Grad, Conn).

Definitions follow the Deep Image Matting evaluation code (Xu et al. 2017, after Rhemann et al.
2009), which BackgroundMattingV2 also uses: alphas are in [0, 1] (uint8 inputs are divided by
255); each measure is taken over `mask` (the trimap's unknown region in those benchmarks; the
whole image when no mask is given). SAD, Grad and Conn are sums and are reported in thousands
(divided by 1000), as in the papers' tables; MSE is a mean. Smaller is better for all four.
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np


def _unit(alpha: np.ndarray) -> np.ndarray:
    if alpha.dtype == np.uint8:
        return alpha.astype(np.float32) / 255.0
    return alpha.astype(np.float32, copy=False)


def _prepare(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"alpha shapes must be equal and 2-D, got {pred.shape} and {truth.shape}")
    if mask is None:
        mask = np.ones(pred.shape, bool)
    elif mask.shape != pred.shape:
        raise ValueError(f"mask shape {mask.shape} differs from alpha shape {pred.shape}")
    return _unit(pred), _unit(truth), mask.astype(bool)


def sad(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Sum of absolute differences over the mask, in thousands: sum|p - t| / 1000."""
    p, t, m = _prepare(pred, truth, mask)
    return float(np.abs(p - t)[m].sum(dtype=np.float64) / 1000.0)


def mse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over the mask (alpha units squared); 0 for an empty mask."""
    p, t, m = _prepare(pred, truth, mask)
    count = int(m.sum())
    return float(np.square(p - t)[m].sum(dtype=np.float64) / count) if count else 0.0


def _gauss_derivative_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The separable parts of `gaussgradient` (G. Xiong): a Gaussian and its derivative.

    Half size ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01))); the 2-D kernel g(y) g'(x) is
    normalised to unit L2 norm, which for a separable kernel is each factor normalised.
    """
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * 1e-2)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dgauss = -u * gauss / sigma**2
    return (gauss / np.linalg.norm(gauss)).astype(np.float32), (
        dgauss / np.linalg.norm(dgauss)
    ).astype(np.float32)


def _gradient_magnitude(alpha: np.ndarray, sigma: float) -> np.ndarray:
    gauss, dgauss = _gauss_derivative_kernels(sigma)
    flipped = dgauss[::-1].copy()  # MATLAB's imfilter(..., 'conv') convolves; OpenCV correlates
    gx = cv2.sepFilter2D(alpha, cv2.CV_32F, flipped, gauss, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(alpha, cv2.CV_32F, gauss, flipped, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def grad(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, sigma: float = 1.4
) -> float:
    """Gradient error, in thousands: sum over the mask of (|grad p| - |grad t|)^2 / 1000.

    Gradients are first derivatives of a Gaussian (sigma 1.4) with replicated borders, as in
    Rhemann et al. and the DIM code (which also rescales each alpha to its own min..max with
    mat2gray; that is the identity for mattes spanning 0..1 and is not repeated here).
    """
    p, t, m = _prepare(pred, truth, mask)
    error = np.square(_gradient_magnitude(p, sigma) - _gradient_magnitude(t, sigma))
    return float(error[m].sum(dtype=np.float64) / 1000.0)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.astype(np.uint8), connectivity=4
    )
    if count <= 1:
        return np.zeros(binary.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def conn(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, step: float = 0.1
) -> float:
    """Connectivity error, in thousands: sum over the mask of |phi(p) - phi(t)| / 1000.

    For thresholds s = step, 2*step, ..., 1, omega_s is the largest 4-connected region where
    both p >= s and t >= s; l(x) is the last threshold before x left omega. A pixel's degree of
    connectivity is phi = 1 - d where d = alpha - l, counted only where d >= 0.15 (else phi = 1).
    """
    p, t, m = _prepare(pred, truth, mask)
    level = np.full(p.shape, -1.0, np.float32)
    thresholds = np.arange(0.0, 1.0 + step / 2, step)
    for previous, current in itertools.pairwise(thresholds):
        omega = _largest_component((p >= current) & (t >= current))
        level[(level == -1) & ~omega] = previous
    level[level == -1] = 1.0
    phi = [1.0 - d * (d >= 0.15) for d in (p - level, t - level)]
    return float(np.abs(phi[0] - phi[1])[m].sum(dtype=np.float64) / 1000.0)


def evaluate(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """All four measures: {"sad", "mse", "grad", "conn"}."""
    return {
        "sad": sad(pred, truth, mask),
        "mse": mse(pred, truth, mask),
        "grad": grad(pred, truth, mask),
        "conn": conn(pred, truth, mask),
    }


def unknown_region(truth: np.ndarray, radius: int = 5) -> np.ndarray:
    """A trimap-like unknown band: pixels within `radius` of anything not clearly 0 or 1."""
    t = _unit(truth)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    near_some = cv2.dilate((t > 0.01).astype(np.uint8), kernel)
    all_opaque = cv2.erode((t > 0.99).astype(np.uint8), kernel)
    return (near_some > 0) & (all_opaque == 0)
