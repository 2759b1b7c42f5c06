"""`edge-matte calibrate`: measure the empty scene once at install and write a profile.

Plate difference works only as well as its thresholds, and those depend on this camera in this
room: sensor noise, compression, mains flicker. Calibration locks the camera's automatic
exposure, gain and white balance (which would otherwise turn a light change into "foreground"),
watches the empty scene for some seconds and derives the thresholds from what it saw. All
figures are in 8-bit levels; d is the difference of two consecutive frames with each pair's
per-channel median removed (so a global brightness step is not counted as noise):

- noise_sigma[c] = 1.4826 * median(|d_c|) / sqrt(2): a robust (MAD) standard deviation; d holds
  two frames' noise, hence sqrt(2). Pixels near 0 or 255 in either frame are left out (clipped).
- noise_floor = q99.9(||d||) / sqrt(2): the 99.9th percentile of the BGR colour distance between
  a frame and a noise-free plate; 4.03 sigma for Gaussian noise (chi, 3 degrees of freedom), more
  when the noise has heavier tails (compression, hot pixels).
- empty_threshold = m + max(1, m / 2) + flicker * level / 2, with m the median over frame pairs
  of mean(|d|) / sqrt(2) (0.8 sigma for Gaussian noise: the mean absolute frame-to-plate
  difference of an empty scene) and level the mean frame level: noise, a margin, and half the
  flicker's peak-to-peak swing.
- flicker = (max - min) / mean of the per-frame mean level after removing a linear trend.
- fps = frames the source delivered (by index, so frames this loop missed still count) / time.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from edge_matte.capture import FrameSource
from edge_matte.capture.v4l2_controls import LOCKABLE, CameraControls, LockResult, v4l2_device
from edge_matte.config import profile as profile_mod
from edge_matte.config import schema as config_mod
from edge_matte.config.profile import Profile
from edge_matte.config.schema import format_errors
from edge_matte.errors import ConfigError, EdgeMatteError, SourceEnded, SourceError
from edge_matte.frames import Frame, SourceInfo

_LOG = logging.getLogger(__name__)

_READ_TIMEOUT_S = 5.0
_SAMPLE_PIXELS = 120_000  # pixels per frame the statistics use (a regular grid)
_CLIPPED = (2, 253)  # levels at or beyond these are saturated, not noise
_DIST_BINS = 4  # colour-distance histogram bins per level
_MAX_DIST = 442  # sqrt(3) * 255
_FLOOR_QUANTILE = 0.999
_MIN_PAIRS = 2


# -- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """What the empty scene showed."""

    width: int
    height: int
    fps: float
    frames: int
    noise_sigma: tuple[float, float, float]
    noise_floor: float
    mean_abs: float  # m: median over pairs of the mean |frame - plate| an empty scene gives
    flicker: float
    level: float  # mean frame level

    @property
    def empty_threshold(self) -> float:
        return self.mean_abs + max(1.0, self.mean_abs / 2) + self.flicker * self.level / 2


class NoiseMeter:
    """Accumulates frame-pair statistics in fixed-size histograms (no frames are kept)."""

    def __init__(self) -> None:
        self._abs_hist = np.zeros((3, 511), np.int64)  # |d| per channel, integer levels
        self._dist_hist = np.zeros(_MAX_DIST * _DIST_BINS + 1, np.int64)
        self._pair_means: list[float] = []
        self._levels: list[float] = []
        self._prev: np.ndarray | None = None
        self._prev_unclipped: np.ndarray | None = None
        self._first: Frame | None = None
        self._last: Frame | None = None

    @property
    def pairs(self) -> int:
        return len(self._pair_means)

    def add(self, frame: Frame) -> None:
        """Take one frame of the empty scene."""
        if self._first is None:
            self._first = frame
        elif frame.size != self._first.size:
            raise SourceError(
                f"frame size changed during calibration: {self._first.size} -> {frame.size}"
            )
        sample, unclipped = _sample(frame.image)
        self._levels.append(float(sample.mean()))
        if self._prev is not None:
            self._add_pair(self._prev, sample, self._prev_unclipped & unclipped)
        self._prev, self._prev_unclipped = sample, unclipped
        self._last = frame

    def _add_pair(self, prev: np.ndarray, cur: np.ndarray, valid: np.ndarray) -> None:
        d = (cur - prev)[:, valid]  # [3, N] int16
        if d.shape[1] < 100:
            return  # a saturated frame says nothing about noise
        # A global step (flicker, exposure) moves every pixel alike: it is not noise.
        d -= np.round(np.median(d, axis=1, keepdims=True)).astype(np.int16)
        np.abs(d, out=d)
        for c in range(3):
            self._abs_hist[c] += np.bincount(d[c], minlength=511)[:511]
        square = np.square(d, dtype=np.float32)
        dist = np.sqrt(square[0] + square[1] + square[2])
        bins = np.minimum((dist * _DIST_BINS).astype(np.int64), len(self._dist_hist) - 1)
        self._dist_hist += np.bincount(bins, minlength=len(self._dist_hist))
        self._pair_means.append(float(d.mean()))

    def result(self) -> Measurement:
        """The statistics; SourceError when too few usable frames arrived."""
        if self.pairs < _MIN_PAIRS or self._first is None or self._last is None:
            raise SourceError(
                f"calibration needs at least {_MIN_PAIRS + 1} unsaturated frames, got {self.pairs + 1 if self._first else 0}"
            )
        b, g, r = (
            round(1.4826 * _hist_median(self._abs_hist[c]) / math.sqrt(2), 3) for c in range(3)
        )
        floor = _hist_quantile(self._dist_hist, _FLOOR_QUANTILE) / _DIST_BINS / math.sqrt(2)
        means = np.asarray(self._pair_means)
        if means.max() > 2 * np.median(means) + 2:
            _LOG.warning(
                "the scene changed during calibration (something moved or the light changed): thresholds may be too high"
            )
        width, height = self._first.size
        return Measurement(
            width=width,
            height=height,
            fps=_fps(self._first, self._last),
            frames=self.pairs + 1,
            noise_sigma=(b, g, r),
            noise_floor=round(max(floor, 1.0), 3),
            mean_abs=float(np.median(means)) / math.sqrt(2),
            flicker=_flicker(np.asarray(self._levels)),
            level=float(np.mean(self._levels)),
        )


def _sample(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A regular grid of about _SAMPLE_PIXELS pixels as planar int16 [3, h, w] (for differences),
    and where no channel is clipped [h, w]."""
    step = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / _SAMPLE_PIXELS)))
    planes = np.moveaxis(image[::step, ::step], 2, 0).astype(np.int16)
    lo, hi = _CLIPPED
    unclipped = (
        (planes[0] > lo)
        & (planes[0] < hi)
        & (planes[1] > lo)
        & (planes[1] < hi)
        & (planes[2] > lo)
        & (planes[2] < hi)
    )
    return planes, unclipped


def _hist_median(hist: np.ndarray) -> float:
    """Median of integer-valued |d|, interpolated inside its bin (bin k spans k-0.5..k+0.5, 0 spans 0..0.5)."""
    cdf = np.cumsum(hist) / hist.sum()
    k = int(np.searchsorted(cdf, 0.5))
    below = cdf[k - 1] if k > 0 else 0.0
    low = max(k - 0.5, 0.0)
    width = (k + 0.5) - low
    return float(low + (0.5 - below) / max(cdf[k] - below, 1e-12) * width)


def _hist_quantile(hist: np.ndarray, q: float) -> float:
    """Upper edge of the histogram bin where the cumulative share reaches q."""
    cdf = np.cumsum(hist) / hist.sum()
    return float(np.searchsorted(cdf, q) + 1)


def _flicker(levels: np.ndarray) -> float:
    if len(levels) < 3 or levels.mean() <= 0:
        return 0.0
    x = np.arange(len(levels), dtype=np.float64)
    residual = levels - np.polyval(np.polyfit(x, levels, 1), x)
    return round(min(float(np.ptp(residual) / levels.mean()), 1.0), 5)


def _fps(first: Frame, last: Frame) -> float:
    span = last.time - first.time
    return round((last.index - first.index) / span, 3) if span > 0 else 0.0


def _read_for(source: FrameSource, seconds: float, meter: NoiseMeter | None) -> None:
    """Read frames for `seconds` of frame time, feeding `meter` (None: discard them)."""
    start = None
    while True:
        try:
            frame = source.read(_READ_TIMEOUT_S)
        except SourceEnded as err:
            if meter is not None and meter.pairs < _MIN_PAIRS:
                raise SourceError(
                    f"{err}: calibration needs at least {_MIN_PAIRS + 1} frames"
                ) from err
            return
        start = frame.time if start is None else start
        if meter is not None:
            meter.add(frame)
        if frame.time - start >= seconds:
            return


def calibrate(
    source: FrameSource,
    seconds: float,
    name: str,
    controls: CameraControls | None = None,
    *,
    warmup_s: float = 2.0,
    settle_s: float = 0.5,
) -> Profile:
    """Measure the empty scene: warm up (auto exposure converges), lock the controls, let the
    image settle, then measure for `seconds`. Controls that could not be locked (all of them
    when `controls` is None) are listed in Profile.unlocked."""
    _check_name(name)
    if seconds <= 0:
        raise ConfigError(f"calibration time must be positive, got {seconds}")
    if warmup_s > 0:
        _read_for(source, warmup_s, None)
    lock = controls.lock() if controls is not None else LockResult({}, list(LOCKABLE))
    if controls is not None and settle_s > 0:
        _read_for(source, settle_s, None)
    meter = NoiseMeter()
    _read_for(source, seconds, meter)
    return _profile(name, source.info, meter.result(), lock)


def _check_name(name: str) -> None:
    pattern = Profile.model_json_schema()["properties"]["name"]["pattern"]
    if not re.match(pattern, name):
        raise ConfigError(f"profile name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")


def _profile(name: str, info: SourceInfo, m: Measurement, lock: LockResult) -> Profile:
    from edge_matte.config.redact import (
        mask_uri,  # keeps rtsp:// passwords out of the profile
    )

    try:
        return Profile(
            name=name,
            created=datetime.now(timezone.utc),
            source_uri=mask_uri(info.uri),
            width=m.width,
            height=m.height,
            fps=m.fps,
            noise_sigma=m.noise_sigma,
            flicker=m.flicker,
            noise_floor=m.noise_floor,
            empty_threshold=round(m.empty_threshold, 3),
            controls=lock.controls,
            unlocked=lock.unlocked,
        )
    except ValidationError as err:
        raise ConfigError(
            "calibration measured values a profile cannot hold: " + "; ".join(format_errors(err))
        ) from err


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-matte calibrate`."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file naming the source (default: built-in defaults)",
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="how long to measure the empty scene"
    )
    parser.add_argument("--name", default="default", help="profile name (letters, digits, . _ -)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the profile (default: <state_dir>/calibration/<name>.yaml)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds to let automatic exposure settle before locking",
    )
    parser.add_argument(
        "--no-lock", action="store_true", help="leave the camera's automatic controls alone"
    )


def main_calibrate(args: argparse.Namespace) -> int:
    """Run `edge-matte calibrate`; print the profile's figures; 0 on success, 1 on failure."""
    from edge_matte.capture.opener import open_source

    try:
        config = config_mod.load(args.config)
        _check_name(args.name)
        output = args.output or config.resolved_state_dir() / "calibration" / f"{args.name}.yaml"
        device = None if args.no_lock else v4l2_device(config.source.uri)
        source = open_source(config.source)
        try:
            profile = calibrate(
                source,
                args.seconds,
                args.name,
                CameraControls(device) if device else None,
                warmup_s=args.warmup,
            )
            delivered = getattr(source, "native", source.info)
        finally:
            source.close()
        profile_mod.save(profile, output)
        if args.output is None:
            _give_to_service_user(config.resolved_state_dir(), output)
    except EdgeMatteError as err:
        print(f"edge-matte: calibrate: {err}", file=sys.stderr)
        return 1
    for line in _report(profile, delivered, config.source, output):
        print(line)
    return 0


def _report(
    profile: Profile, delivered: SourceInfo, asked: config_mod.SourceConfig, output: Path
) -> list[str]:
    lines = [
        f"profile {profile.name} written to {output}",
        f"  delivered {delivered.width}x{delivered.height} at {profile.fps:.1f} fps (asked {asked.width}x{asked.height} at {asked.fps:g})",
        "  noise sigma B/G/R "
        + " / ".join(f"{s:.2f}" for s in profile.noise_sigma)
        + f" levels, flicker {profile.flicker:.2%}",
        f"  noise_floor {profile.noise_floor:.2f}, empty_threshold {profile.empty_threshold:.2f}",
        f"  locked: {', '.join(profile.controls) or 'nothing'}; not locked: {', '.join(profile.unlocked) or 'nothing'}",
    ]
    if (delivered.width, delivered.height) != (asked.width, asked.height):
        lines.append(
            "  warning: the camera does not deliver the configured size; frames are resized"
        )
    if profile.fps < 0.9 * asked.fps:
        lines.append("  warning: the camera delivers fewer frames per second than configured")
    lines.append(f"  use it: set `calibration: {output}` in the config")
    return lines


def _give_to_service_user(state_dir: Path, output: Path) -> None:
    """Run as root, hand <state_dir>/calibration and the profile to the state directory's owner
    (the service user), so the daemon can read it."""
    if os.geteuid() != 0:
        return
    owner = state_dir.stat()
    for path in (output.parent, output):
        os.chown(path, owner.st_uid, owner.st_gid)
