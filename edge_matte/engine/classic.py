"""The weight-free engine: plate difference, cleaned up, with soft edges from a guided filter.

Without BackgroundMattingV2 weights the appliance still mattes, because the background is
known: a pixel that differs from the plate by more than the camera's noise is foreground. The
steps, each there for a reason:

1. Gain compensation: a global exposure/light change would otherwise turn the whole room into
   foreground. The per-channel gain is the mode of log(frame / plate), which the background
   (the largest population of pixels that agree) dominates even with a large subject in view.
2. Distance in a luma/chroma space, luma weighted down: soft shadows and local light changes
   move brightness more than colour.
3. A noise floor (config, else calibration profile, else estimated from the low quantiles of
   the distance) and a soft ramp above it. Where the plate carries a variability map (pixels
   that move by themselves when the room is empty: leaves, a screen; see `plate.estimator`),
   the floor there is raised to how much they move, so they stay background.
4. Morphology, hole filling and small-blob removal on the confident mask: sensor speckle and
   subject colours that happen to match the room are the classic failures of plate difference.
5. Along the mask boundary, alpha from the known background (the projection of frame - plate
   onto foreground - plate, with the foreground colour propagated from the confident interior),
   then a guided filter guided by the full-resolution distance to the plate, which makes alpha
   follow the subject's real edges (and hair) and upsamples it from the working resolution.
6. Foreground with the background's spill removed: F = (I - (1 - a) B) / a.

The heavy steps run at a working resolution (long side <= 640 px) and only the guided
filter's linear model and the spill removal touch full resolution, so 720p stays in budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from edge_matte.config.schema import ClassicConfig
from edge_matte.errors import EngineError
from edge_matte.frames import Matte

_LOG = logging.getLogger(__name__)
_WORK_SIDE = 640  # long side of the working resolution
_LUMA_WEIGHT = 0.6  # brightness changes count less than colour changes (shadows, local light)
_FLOOR_QUANTILE = 0.25  # assumes at least ~30% of the frame is background
_FLOOR_FACTOR = 2.8  # for 3-channel Gaussian noise the 99th percentile is ~2.8x the 25th
_MIN_FLOOR = 2.0  # levels; a lower floor would chase quantisation and compression artefacts
_MIN_SPILL_ALPHA = 0.3  # below this, (I - (1-a) B) / a amplifies noise: use the propagated colour
_HOLE_AREA = 0.01  # enclosed holes smaller than this fraction of the frame are always filled
_HOLE_EVIDENCE = 0.1  # larger holes are filled when their mean raw alpha shows something is there
_VARIABILITY_WEIGHT = 1.0  # floor where the background moves: this times its variability (levels)
_VARIABILITY_OVER_FLOOR = 2.0  # variability under this times the floor is noise, not motion
_VARIABILITY_SPREAD = (
    2  # working pixels: a swaying branch reaches a little beyond where it was seen
)

# An orthonormal basis of BGR: the grey axis (weighted down) and two chroma axes, so sensor noise
# stays isotropic in the chroma plane and the distance is in 8-bit levels.
_OPPONENT = np.stack(
    [
        _LUMA_WEIGHT * np.array([1, 1, 1]) / np.sqrt(3),
        np.array([1, -1, 0]) / np.sqrt(2),
        np.array([1, 1, -2]) / np.sqrt(6),
    ]
).astype(np.float32)
_BOX_ONES = np.ones((1, 3), np.float32)


def _length(difference: np.ndarray) -> np.ndarray:
    """The colour distance (8-bit levels, weighted luma + chroma) of a BGR difference image."""
    opponent = cv2.transform(difference, _OPPONENT)
    return cv2.sqrt(_dot(opponent, opponent))


def estimate_gain(image: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """Per-channel gain from plate to frame: the mode of log(frame / plate) over usable pixels."""
    img = image[::6, ::6].reshape(-1, 3)
    ref = plate[::6, ::6].reshape(-1, 3)
    usable = (np.minimum(img, ref) > 8).all(axis=1) & (np.maximum(img, ref) < 250).all(axis=1)
    if usable.sum() < 64:
        return np.ones(3, np.float32)
    ratios = np.log(img[usable]) - np.log(ref[usable])
    return np.exp([_mode(ratios[:, c]) for c in range(3)]).astype(np.float32)


def _mode(values: np.ndarray, bins: int = 256, span: float = 1.0) -> float:
    """Mode of a 1-D sample in [-span, span]: smoothed histogram peak, refined by the mean near it."""
    width = 2 * span / bins
    index = np.clip(((values + span) / width).astype(np.int32), 0, bins - 1)
    peak = int(
        np.argmax(np.convolve(np.bincount(index, minlength=bins), [1, 2, 3, 2, 1], mode="same"))
    )
    near = values[np.abs(index - peak) <= 2]
    return float(near.mean()) if near.size else (peak + 0.5) * width - span


def estimate_noise_floor(distance: np.ndarray) -> float:
    """A noise floor from the distance map itself: the low quantiles are background noise."""
    low = float(np.quantile(distance[::3, ::3], _FLOOR_QUANTILE))
    return max(_MIN_FLOOR, _FLOOR_FACTOR * low)


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(image, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def guided_coefficients(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """The box-averaged linear model (mean_a, mean_b) of `src` on `guide`; fitting it at low
    resolution and applying it to the full-resolution guide is the fast guided filter."""
    mean_i, mean_p = _box(guide, radius), _box(src, radius)
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    cov_ip = _box(guide * src, radius) - mean_i * mean_p
    a = cov_ip / (var_i + np.float32(eps))
    b = mean_p - a * mean_i
    return _box(a, radius), _box(b, radius)


def _ellipse(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _remove_small_blobs(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Clear connected components smaller than `min_area` pixels (in place, also returned)."""
    _count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    for label in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1:
        x, y, w, h = stats[label, :4]
        region = mask[y : y + h, x : x + w]
        region[labels[y : y + h, x : x + w] == label] = 0
    return mask


def _fill_holes(mask: np.ndarray, raw_alpha: np.ndarray) -> np.ndarray:
    """Fill background regions enclosed by the subject: small ones always, large ones on evidence.

    A large enclosed hole whose raw alpha is near zero is real background (an arm on a hip);
    one with a faint difference is a subject colour close to the room's. Holes lie inside the
    mask's bounding box, and background on that box's edge touches the outside, so only the
    box is labelled.
    """
    box = _extent(mask, 0)
    if box is None:
        return mask
    inside = mask[box]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - inside, connectivity=4)
    area = stats[:, cv2.CC_STAT_AREA]
    evidence = np.bincount(labels.ravel(), weights=raw_alpha[box].ravel(), minlength=count)
    fill = (area < _HOLE_AREA * mask.size) | (evidence > _HOLE_EVIDENCE * area)
    fill[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    fill[0] = False  # label 0 is the mask itself
    if fill.any():
        inside |= fill[labels].astype(np.uint8)
    return mask


def _propagate(colour: np.ndarray, weight: np.ndarray, radius: int) -> np.ndarray:
    """Normalised convolution: the mean colour of the weighted pixels nearby, which carries the
    subject's colour out across its boundary (zero where no weighted pixel is near)."""
    weight3 = cv2.merge([weight] * 3)
    return cv2.divide(
        _box(cv2.multiply(colour, weight3), radius), np.maximum(_box(weight3, radius), 1e-3)
    )


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel dot product of two 3-channel images."""
    return cv2.transform(cv2.multiply(a, b), _BOX_ONES)


def _extent(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The bounding box of a mask's nonzero pixels grown by `margin`, clipped; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)), slice(
        max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)
    )


@dataclass(frozen=True)
class _Window:
    """Where the work happens: a box at working resolution and the full-resolution box that its
    `outer` region covers. Only these are computed; the rest of the frame is 0 or 1 anyway."""

    small: tuple[slice, slice]
    full: tuple[slice, slice]
    ratio: tuple[float, float]  # working pixels per full pixel, (y, x)

    @classmethod
    def around(
        cls,
        outer: np.ndarray,
        small: tuple[slice, slice],
        work: tuple[int, ...],
        full: tuple[int, ...],
    ) -> _Window:
        ry, rx = work[0] / full[0], work[1] / full[1]
        extent = _extent(outer, 1)
        if extent is None:  # the caller grows `outer` from a mask it found not empty
            raise ValueError("a window around an empty mask")
        rows, cols = extent
        y0, y1 = (rows.start + small[0].start) / ry, (rows.stop + small[0].start) / ry
        x0, x1 = (cols.start + small[1].start) / rx, (cols.stop + small[1].start) / rx
        box = (
            slice(int(y0), min(int(np.ceil(y1)), full[0])),
            slice(int(x0), min(int(np.ceil(x1)), full[1])),
        )
        return cls(small, box, (ry, rx))

    def upsample(self, small_map: np.ndarray) -> np.ndarray:
        """Bilinear upsampling of a map of the small box into the full box: the same samples as
        cv2.resize of the whole frame, cropped."""
        ry, rx = self.ratio
        y0 = (self.full[0].start + 0.5) * ry - 0.5 - self.small[0].start
        x0 = (self.full[1].start + 0.5) * rx - 0.5 - self.small[1].start
        matrix = np.array([[rx, 0, x0], [0, ry, y0]], np.float32)
        size = (self.full[1].stop - self.full[1].start, self.full[0].stop - self.full[0].start)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(small_map, matrix, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)


class ClassicEngine:
    """Plate-difference matting (MattingEngine "classic"); see the module docstring for the steps.

    `guided_radius` (working pixels) sets both the guided filter's radius and the half-width of
    the boundary band in which alpha is estimated.
    """

    name = "classic"

    def __init__(self, config: ClassicConfig, noise_floor: float | None = None) -> None:
        self._config = config
        self._profile_floor = noise_floor
        source = "estimated per frame"
        if config.noise_floor is not None:
            source = f"{config.noise_floor} from config"
        elif noise_floor is not None:
            source = f"{noise_floor} from the calibration profile"
        _LOG.info("classic engine: noise floor %s, guided radius %d", source, config.guided_radius)
        self.last_gain = np.ones(3, np.float32)  # the light change compensated on the last frame
        self.last_floor = 0.0  # the noise floor used on the last frame

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        """Matte one BGR uint8 frame against a BGR uint8 plate of the same size."""
        img_s, plate_s, gain = _prepare(image, plate)
        diff_s = cv2.subtract(img_s, plate_s)
        distance = _length(_box(diff_s, 1))
        floor = self._floor(distance, image.shape[0])
        self.last_gain, self.last_floor = gain, floor
        floors = _floor_map(floor, getattr(plate, "variability", None), distance.shape)
        raw = np.clip((distance - floors) / (self._config.softness * floors), 0, 1)
        mask = self._clean(raw)
        band = max(2, self._config.guided_radius)
        small = _extent(mask, band + 2 * self._config.guided_radius + 2)
        alpha, foreground = np.zeros(image.shape[:2], np.float32), image.copy()
        if small is None:
            return Matte(alpha, foreground, self.name)
        inner, outer = (
            op(mask[small], _ellipse(band)).astype(np.float32) for op in (cv2.erode, cv2.dilate)
        )
        window = _Window.around(outer, small, mask.shape, image.shape)
        fg_colour = _propagate(img_s[small], inner, 3 * band)
        towards = cv2.subtract(fg_colour, plate_s[small])
        alpha_s = _edge_alpha(diff_s[small], towards, raw[small], inner, outer, floor)
        img_r = image[window.full].astype(np.float32)
        back_r = cv2.multiply(  # type: ignore[call-overload]  # a scalar tuple: OpenCV takes it, its stubs do not
            plate[window.full].astype(np.float32), (*gain.tolist(), 0.0)
        )
        sure = cv2.merge([inner, outer])
        alpha_r = self._refine(cv2.subtract(img_r, back_r), diff_s[small], alpha_s, sure, window)
        alpha[window.full] = alpha_r
        foreground[window.full] = _unmix(img_r, back_r, alpha_r, window.upsample(fg_colour))
        return Matte(alpha, foreground, self.name)

    def close(self) -> None:
        """Nothing to release: the engine holds no devices."""

    def _floor(self, distance: np.ndarray, full_height: int) -> float:
        """Config first (in detection units), then the calibration profile, else estimated."""
        if self._config.noise_floor is not None:
            return max(self._config.noise_floor, 0.5)
        if self._profile_floor is not None:
            # The profile measures single full-resolution pixels; the detection map is a 3x3 mean
            # at working resolution, each working pixel the mean of (full/working)^2 pixels, so
            # independent sensor noise shrinks by 3 * full/working.
            shrink = 3.0 * full_height / distance.shape[0]
            return max(self._profile_floor / shrink, _MIN_FLOOR)
        return estimate_noise_floor(distance)

    def _clean(self, raw: np.ndarray) -> np.ndarray:
        """The confident subject mask: speckle opened away, gaps closed, blobs and holes handled."""
        mask: np.ndarray = (raw >= 0.5).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(1))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _ellipse(2))
        mask = _remove_small_blobs(mask, self._config.min_blob_area * mask.size)
        return _fill_holes(mask, raw)

    def _refine(
        self,
        diff_r: np.ndarray,
        diff_s: np.ndarray,
        alpha_s: np.ndarray,
        sure: np.ndarray,
        window: _Window,
    ) -> np.ndarray:
        """Guided filter whose guide is the distance to the plate: where the background is known,
        alpha is locally proportional to that distance, so the filter's linear model fits it
        and carries full-resolution detail (hair) into the working-resolution alpha. Then the
        sure interior and exterior are restored so nothing leaks far from the subject."""
        radius = self._config.guided_radius
        if radius > 0:
            mean_a, mean_b = guided_coefficients(
                _length(diff_s) / 255, alpha_s, radius, self._config.guided_eps
            )
            mean_a, mean_b, lower, upper = cv2.split(
                window.upsample(cv2.merge([mean_a, mean_b, sure]))
            )
            alpha: np.ndarray = mean_a * (_length(diff_r) / 255) + mean_b
        else:
            alpha, lower, upper = cv2.split(window.upsample(cv2.merge([alpha_s, sure])))
        return np.clip(alpha, lower, upper)


def _floor_map(
    floor: float, variability: np.ndarray | None, shape: tuple[int, ...]
) -> float | np.ndarray:
    """The noise floor, raised per pixel where the plate's variability map says the background
    moves by itself; the scalar floor when there is no map."""
    if variability is None:
        return floor
    moving = cv2.resize(variability, shape[::-1], interpolation=cv2.INTER_AREA)
    moving = cv2.dilate(moving, _ellipse(_VARIABILITY_SPREAD)).astype(np.float32)
    moving[moving < _VARIABILITY_OVER_FLOOR * floor] = 0.0  # sensor noise: the floor has it
    return np.maximum(np.float32(floor), _VARIABILITY_WEIGHT * moving)


def _edge_alpha(
    diff: np.ndarray,
    towards: np.ndarray,
    raw: np.ndarray,
    inner: np.ndarray,
    outer: np.ndarray,
    floor: float,
) -> np.ndarray:
    """1 inside, 0 outside, and in the band between them the known-background estimate: the
    projection of I - B onto F - B, or the raw ramp where F and B are too alike to tell."""
    length = _dot(towards, towards)
    projected = _dot(diff, towards) / np.maximum(length, 1e-6)
    projected = np.where(length > (3 * floor) ** 2, projected, raw)
    return np.clip(projected, inner, outer)


def detection_distance(image: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """The distance map the engine compares with its noise floor (working resolution, gain
    compensated, 3x3 mean so it sees a third of the sensor noise): calibration measures the
    floor on this, e.g. a high percentile over empty frames."""
    img_s, plate_s, _ = _prepare(image, plate)
    return _length(_box(cv2.subtract(img_s, plate_s), 1))


def _prepare(image: np.ndarray, plate: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked inputs at the working resolution as float32, the plate gain-compensated, and the gain."""
    _check(image, plate)
    scale = min(1.0, _WORK_SIDE / max(image.shape[:2]))
    img_s, plate_s = (_shrink(x, scale) for x in (image, plate))
    gain = estimate_gain(img_s, plate_s)
    lit = cv2.multiply(plate_s, (*gain.tolist(), 0.0))  # type: ignore[call-overload]  # as above
    return img_s, lit, gain


def _check(image: np.ndarray, plate: np.ndarray) -> None:
    for name, array in (("image", image), ("plate", plate)):
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise EngineError(
                f"classic engine: {name} must be BGR uint8 HxWx3, got {array.dtype} {array.shape}"
            )
    if image.shape != plate.shape:
        raise EngineError(
            f"classic engine: plate size {plate.shape[1]}x{plate.shape[0]} differs from frame size {image.shape[1]}x{image.shape[0]}"
        )


def _shrink(image: np.ndarray, scale: float) -> np.ndarray:
    """Float32 copy at the working resolution."""
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return image.astype(np.float32)


def _unmix(img: np.ndarray, back: np.ndarray, alpha: np.ndarray, carried: np.ndarray) -> np.ndarray:
    """Foreground with the background's spill removed: F = B + (I - B) / a, which is
    (I - (1 - a) B) / a, where alpha is large enough to divide by; below that the subject
    colour carried out from the interior; where alpha is 0, the frame itself."""
    inverse = 1.0 / np.maximum(alpha, _MIN_SPILL_ALPHA)
    unmixed = cv2.add(back, cv2.multiply(cv2.subtract(img, back), cv2.merge([inverse] * 3)))
    foreground = cv2.convertScaleAbs(img)
    cv2.copyTo(cv2.convertScaleAbs(carried), (alpha > 0).astype(np.uint8), foreground)
    cv2.copyTo(
        cv2.convertScaleAbs(np.maximum(unmixed, 0)),
        (alpha >= _MIN_SPILL_ALPHA).astype(np.uint8),
        foreground,
    )
    return foreground
