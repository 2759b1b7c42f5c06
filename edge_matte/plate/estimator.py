"""Background from a scene that is never empty: per pixel, the median of the samples where it was still.

Ideas taken from the scene-background-initialisation work (LaBGen's "median of the frames where a
pixel is judged motionless", SBMnet) and OpenCV's MOG2/KNN (a per-pixel model that keeps learning):

* **Motion per pixel.** A sample counts for a pixel unless the grid cell under it (2-6 px wide)
  or a neighbouring cell moved within the last `_HOLD_S` (frame difference beyond the noise, see
  `detect`). Nothing is voided far from where something moved, so a street that always has
  someone in it still gives evidence almost everywhere. Every span here is plate time
  (`clock`): the frames' media time, so dropped frames change how many samples there are, never
  how long they span.
* **Samples spread over the whole history, in bounded memory.** At most one frame per sampling
  period (`1 / _SAMPLE_HZ` at first) is kept, up to `capacity` frames (`_MEMORY_BYTES` whatever
  the frame size: 56 at 576p, 27 at 720p, 12 at 1080p); when full, every other one is dropped
  and the period doubles, so the kept samples always span everything seen so far. A person who
  stands for a while covers a few samples, not most.
* **Exposure drift is taken out.** Each sample is divided by its per-channel gain against the
  estimate (median ratio over still cells) and the plate is given in the median light of the
  samples, so a few bright seconds do not bias it. Only where the gain explains the change (it
  shrinks the median difference by a fifth): light that changed in places or within the noise
  is left to the per-pixel median, which a global factor would only disturb (`vtest.avi`'s
  sun: 2.30 -> 2.13 levels after 100 frames).
* **Exact order statistics, cheaply.** The per-pixel median (and the spread around it) over a
  varying number of valid samples is found by a radix search on the bits of the uint8 values:
  8 passes of counting, no sort.
* **Confidence per pixel.** A pixel is known when it was still in at least `_MIN_STILL` samples
  and a share `_MIN_STILL_SHARE` of them, and half of the older and half of the newer ones
  each agree with the median within the noise (`_AGREE_SIGMAS`) (a person who stood for half the time leaves the pixel unknown, not wrong).
* **Nothing is known before the scene has shown enough of itself.** Until motion has touched
  `_MIN_REVEALED` of the frame, nothing tells a person who stays in view (and only sways) from
  the room, so nothing is known: this keeps a person present from the first frame out of the
  plate. A street or a lobby passes this within seconds (`vtest.avi`: 14 % after 4 s).
* **Visitors are outlasted.** Someone who walks in and stands still is as still as the room; a
  pixel is known only once the evidence spans `MIN_SPAN_S`, so a stay under half of it is
  outvoted (a stay of minutes is not: see the README).
* **People are not evidence** (with a `PeopleWatch`; see `people`). Each sample carries the
  grid cells where a person was detected (the detection of its frame, or the latest one while
  it holds, applied late when it comes from a worker thread). Where the samples without a
  person give enough still evidence and their median differs from the rest, only they count;
  where a person was detected in `_PERSON_SHARE` of the samples and the others are too few, the
  cell is *held*: unknown, painted in from around it, never a dynamic background, never the
  person. Elsewhere boxes change nothing: they are wider than people, and taking all boxed
  samples out only made the median noisier (vtest 300 frames 1.48 -> 1.51, 795: 0.31 -> 0.40).
* **Dynamic background.** A pixel that moved in more than `_DYNAMIC_SHARE` of the samples over a
  long span is not a passer-by but something that moves by itself (leaves, a screen): all its
  samples are evidence, it counts as known, and how much it moves is the **variability** (the `_SPREAD_QUANTILE`
  quantile of the deviation from the median), stored with the plate and used by the keeper's
  emptiness test and the classic engine's thresholds.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

import cv2
import numpy as np

from edge_matte.plate.clock import periods, reached
from edge_matte.plate.detect import NoiseModel
from edge_matte.plate.drift import gain_cells, measure_gain
from edge_matte.plate.grid import Grid
from edge_matte.plate.people import PeopleWatch

_LOG = logging.getLogger(__name__)
_MEMORY_BYTES = 72 * 2**20  # kept samples; with an estimate's working arrays < 150 MB at 1080p
_MIN_CAPACITY, _MAX_CAPACITY = 8, 64  # samples kept (the count must fit the uint8 counters)
_SAMPLE_HZ = 10.0  # at most this many samples a second: frames closer in time repeat evidence
_HOLD_S = 0.2  # a pixel that moved this recently is not evidence yet
_SPREAD_CELLS = 1  # motion also voids this many grid cells around (a moving edge blurs)
_MIN_STILL = 4  # still samples a pixel needs to be known...
_MIN_STILL_SHARE = 0.2  # ...and this share of the samples kept
_QUIET_RADIUS = 0.08  # "quiet": nothing moved within this share of the frame width...
_QUIET_S = 0.5  # ...for this long (a standing person sways; their middle is never quiet)
_QUIET_SHARE = 0.2  # quiet samples can stand alone where they are at least this share
MIN_SPAN_S = 10.0  # a still pixel is known only from evidence this long: visitors stay seconds
_MIN_REVEALED = 0.1  # motion must have touched this share of the frame before anything is known
_DYNAMIC_SHARE = 0.7  # moving in more than this share of the samples: it moves by itself
_DYNAMIC_MIN_SAMPLES = 8  # ...judged only once this many samples are kept
_AGREE_SIGMAS = (
    4.0  # agreement: the largest of 3 channels' full-resolution noise stays under 4 sigma
)
_AVERAGED = 4  # the grid's noise is the full-resolution noise averaged over up to 4x4 pixels
_DOMINANCE = 2 / 3  # share of a pixel's evidence that must agree with its median to know it
_SPREAD_QUANTILE = 0.9  # variability: this quantile of the deviation from the median
_GAIN_STEPS = 512  # gains closer to 1 than 1/512 are not applied
_GAIN_EXPLAINS = 0.8  # a gain is applied when it leaves at most this share of the difference
_GAIN_CELLS = 4096  # cells the residual is measured on
_STRIP_ROWS = 32  # the median is found this many rows at a time
_PERSON_SHARE = 0.5  # a cell where a person was detected in this share of the samples is theirs
_INPAINT_RADIUS = 5  # pixels around a never-free person cell that paint it in


def select(samples: list[np.ndarray], rank: np.ndarray) -> np.ndarray:
    """Element-wise, the `rank`-th smallest (0-based) of the uint8 `samples` (all the same shape).

    A radix search: bit by bit from the top, keep a bit set while fewer than rank + 1 samples lie
    below the candidate. Exact, 8 counting passes over the samples, no sort.
    """
    value = np.zeros_like(samples[0])
    count = np.empty(samples[0].shape, np.uint8)
    below = np.empty(samples[0].shape, bool)
    for bit in (128, 64, 32, 16, 8, 4, 2, 1):
        trial = value | np.uint8(bit)
        count.fill(0)
        for sample in samples:
            np.less(sample, trial, out=below)
            count += below
        np.copyto(value, trial, where=count <= rank)
    return value


def _explains(
    gain: np.ndarray, small: np.ndarray, reference: np.ndarray, usable: np.ndarray
) -> bool:
    """Whether a global gain explains the change from the reference: it shrinks the median
    difference over the usable cells by at least `_GAIN_EXPLAINS`. Light that changed only in
    places (sun on part of a street) or by less than the noise does not pass, and correcting it
    by one factor would move every pixel that did not change."""
    index = np.flatnonzero(usable)
    index = index[:: max(1, index.size // _GAIN_CELLS)]
    frame = small.reshape(-1, 3)[index].astype(np.float32)
    before = reference.reshape(-1, 3)[index]
    residual = np.median(np.abs(frame - before * gain))
    return bool(residual < _GAIN_EXPLAINS * np.median(np.abs(frame - before)))


def _count(masks: list[np.ndarray]) -> np.ndarray:
    """Per pixel, how many of the 0/1 uint8 masks are set (uint8: at most 64 masks)."""
    total = np.zeros_like(masks[0])
    for mask in masks:
        cv2.add(total, mask, dst=total)
    return total


class Estimate:
    """One evaluation of the kept samples: the plate and what is known about each pixel."""

    def __init__(
        self, plate: np.ndarray, known: np.ndarray, variability: np.ndarray, samples: int
    ) -> None:
        self.plate = plate  # BGR uint8, unknown pixels inpainted
        self.known = known  # bool per pixel
        self.variability = variability  # uint8 per pixel: how much it moves when empty (levels)
        self.samples = samples

    @property
    def known_fraction(self) -> float:
        return float(np.mean(self.known))


class BackgroundEstimator:
    """Keeps sub-sampled frames with their per-pixel stillness; estimates the plate on request."""

    def __init__(
        self, grid: Grid, fps: float, noise: NoiseModel, people: PeopleWatch | None = None
    ) -> None:
        """`fps`: the nominal rate, the share of time the first frame stands for; `people`:
        where a people detector runs (None: motion is the only evidence)."""
        self._grid = grid
        self._noise = noise
        width, height = grid.full
        self.capacity = int(
            np.clip(_MEMORY_BYTES // (width * height * 3), _MIN_CAPACITY, _MAX_CAPACITY)
        )
        self._interval = 1.0 / fps
        self._period = 1.0 / _SAMPLE_HZ  # plate seconds between samples; doubles when thinned
        self._kernel = np.ones((2 * _SPREAD_CELLS + 1,) * 2, np.uint8)
        self._revealed = np.zeros(grid.size[::-1], bool)  # cells where something ever moved
        self._last_moved = np.full(grid.size[::-1], -np.inf)  # plate time, per cell
        self._last_near = self._last_moved.copy()
        quiet = 2 * max(1, round(grid.size[0] * _QUIET_RADIUS)) + 1
        self._quiet_kernel = np.ones((quiet, quiet), np.uint8)
        self._images: list[np.ndarray] = []
        self._still: list[np.ndarray] = []  # uint8 grid masks, 1 = evidence
        self._quiet: list[np.ndarray] = []  # uint8 grid masks, 1 = nothing moved near for a while
        self._gains: list[np.ndarray] = []
        self._people: list[np.ndarray] = []  # uint8 grid masks, 1 = a person detected there
        self._indices: list[int] = []  # frame number of each sample
        self._watch = people
        self._detected: tuple[int, np.ndarray] | None = None  # the latest detection
        self._reference: np.ndarray | None = None  # grid image the gains are measured against
        self._frames = 0
        self._origin: float | None = None  # plate time the first frame's span starts at
        self._span_s = 0.0  # plate time the frames seen cover
        self._sampled_slot = -1  # the sampling period of the last sample kept
        self._lock = threading.Lock()  # `estimate` may run on a worker thread while frames come

    @property
    def samples(self) -> int:
        return len(self._images)

    @property
    def frames(self) -> int:
        return self._frames

    @property
    def span_s(self) -> float:
        """Plate seconds the frames seen so far cover (each frame stands for its step)."""
        return self._span_s

    @property
    def nbytes(self) -> int:
        """Memory held by the kept samples and the per-cell state (bytes)."""
        kept = self._images + self._still + self._quiet + self._people
        return sum(a.nbytes for a in kept) + self._last_moved.nbytes * 2 + self._revealed.nbytes

    def add(self, image: np.ndarray, small: np.ndarray, moving: np.ndarray, now: float) -> bool:
        """Take one frame (full-res BGR, its grid copy, uint8 grid mask of moving cells) at
        plate time `now` (seconds, never decreasing); True when it was kept as a sample."""
        with self._lock:
            return self._add(image, small, moving, now)

    def _add(self, image: np.ndarray, small: np.ndarray, moving: np.ndarray, now: float) -> bool:
        self._last_moved[cv2.dilate(moving, self._kernel).astype(bool)] = now
        self._last_near[cv2.dilate(moving, self._quiet_kernel).astype(bool)] = now
        self._frames += 1
        if self._watch is not None:
            self._watch.offer(self._frames - 1, image)
            self._take_people(self._watch)
        if self._origin is None:
            self._origin = now - self._interval
        self._span_s = now - self._origin
        # periods counted from the first frame, which is always a sample (so is each kept
        # sample's every other successor after a thinning)
        slot = periods(self._span_s - self._interval, self._period)
        if slot <= self._sampled_slot:
            return False
        self._sampled_slot = slot
        self._revealed |= moving.astype(bool)
        still = reached(now - self._last_moved, _HOLD_S).astype(np.uint8)
        self._quiet.append(reached(now - self._last_near, _QUIET_S).astype(np.uint8))
        gain = self._gain(small, still)
        if np.any(np.abs(gain - 1.0) * _GAIN_STEPS >= 1.0):
            image = cv2.transform(image, np.diag(1.0 / gain))
        self._images.append(image.copy())
        self._still.append(still)
        self._gains.append(gain)
        self._indices.append(self._frames - 1)
        self._people.append(self._people_at(self._frames - 1))
        if len(self._images) > self.capacity:
            self._thin()
        return True

    def _take_people(self, watch: PeopleWatch) -> None:
        """Take a finished detection: it stands for the samples from its frame on (replacing an
        older one's; on a worker thread it arrives a few frames late)."""
        found = watch.take()
        if found is None:
            return
        self._detected = found
        index, mask = found
        for position, kept in enumerate(self._indices):
            if kept >= index:
                self._people[position] = mask  # a new list entry: snapshots keep the old one

    def _people_at(self, index: int) -> np.ndarray:
        """The people mask for a sample of frame `index`: the latest detection while it holds."""
        watch, detected = self._watch, self._detected
        if watch is not None and detected is not None and index - detected[0] < watch.hold:
            return detected[1]
        return np.zeros(self._grid.size[::-1], np.uint8)

    def _gain(self, small: np.ndarray, still: np.ndarray) -> np.ndarray:
        """Per-channel light of this frame relative to the reference (1 when unmeasurable)."""
        if self._reference is None:
            self._reference = small.astype(np.float32)
            return np.ones(3, np.float32)
        usable = cv2.bitwise_and(still, gain_cells(self._reference))
        gain = measure_gain(small, self._reference, usable)
        if (
            gain is None
            or np.all(np.abs(gain - 1.0) * _GAIN_STEPS < 1.0)
            or not _explains(gain, small, self._reference, usable)
        ):
            return np.ones(3, np.float32)
        return gain

    def _thin(self) -> None:
        """Drop every other sample and double the period: the rest still spans the whole history."""
        every: tuple[list[Any], ...] = (
            self._images,
            self._still,
            self._quiet,
            self._gains,
            self._people,
            self._indices,
        )
        for kept in every:
            kept[:] = kept[::2]
        self._period *= 2
        self._sampled_slot //= 2
        _LOG.debug("plate evidence: a sample every %.1f s now", self._period)

    def estimate(self) -> Estimate:
        """The plate from the samples kept (see the module docstring); ValueError without samples.

        Works on a snapshot (the sample arrays are never changed once kept), so frames can keep
        coming meanwhile."""
        with self._lock:
            if not self._images:
                raise ValueError("no frames seen")
            snapshot = copy.copy(self)
            for name in ("_images", "_still", "_quiet", "_gains", "_people", "_indices"):
                setattr(snapshot, name, list(getattr(self, name)))
            snapshot._revealed = self._revealed.copy()
        estimate = snapshot._estimate()
        with self._lock:
            self._reference = snapshot._reference
        return estimate

    def _estimate(self) -> Estimate:
        count = len(self._images)
        moving_share = 1.0 - _count(self._still) / count
        dynamic = (count >= _DYNAMIC_MIN_SAMPLES) & (moving_share > _DYNAMIC_SHARE)
        held = self._held(count, dynamic.astype(np.uint8))
        evidence, median = self._evidence(count, dynamic.astype(np.uint8), held)
        valid = _count(evidence).astype(np.int32)
        deviation = self._deviations(median, evidence)
        agreeing = _count([(d <= self._agreement()).astype(np.uint8) for d in deviation])
        spread_rank = np.floor(_SPREAD_QUANTILE * np.maximum(valid - 1, 0)).astype(np.int32)
        moves = self._grid.expand((dynamic & ~held).astype(np.uint8)).astype(bool)
        long_enough = reached(self._span_s, MIN_SPAN_S)
        known = (
            (float(np.mean(self._revealed)) >= _MIN_REVEALED)
            & (valid >= max(_MIN_STILL, _MIN_STILL_SHARE * count))
            & (((agreeing >= _DOMINANCE * valid) & long_enough) | moves)
        )
        self._fill(median, valid == 0, held)
        self._reference = self._grid.shrink(median).astype(np.float32)
        return Estimate(self._light(median), known, select(deviation, spread_rank), count)

    def _held(self, count: int, dynamic: np.ndarray) -> np.ndarray:
        """Grid cells (bool) a person holds: detected there in `_PERSON_SHARE` of the samples,
        and the samples without a person too few to be evidence. Nothing there is evidence, so
        such a cell stays unknown and is painted in, never taken from the person."""
        boxed = _count(self._people)
        free_still = _count(
            [
                cv2.bitwise_and(cv2.bitwise_or(mask, dynamic), 1 - person)
                for mask, person in zip(self._still, self._people, strict=True)
            ]
        )
        enough = free_still >= max(_MIN_STILL, _MIN_STILL_SHARE * count)
        return ~enough & (boxed > 0) & (boxed >= _PERSON_SHARE * count)

    def _evidence(
        self, count: int, dynamic: np.ndarray, held: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Per pixel, the samples that are evidence and their median.

        Still samples by default; the quiet ones alone where there are enough of them and their
        median differs (beyond the noise) from the still samples': someone stood there, still
        but not quiet; and then those without a detected person alone where there are enough of
        them and their median differs: someone stood there, still and quiet. Elsewhere the
        larger set is less noisy (a person's box is wider than the person).
        """
        free = (~held).astype(np.uint8)

        def evidence(masks: list[np.ndarray]) -> list[np.ndarray]:
            return [
                self._grid.expand(cv2.bitwise_and(cv2.bitwise_or(mask, dynamic), free))
                for mask in masks
            ]

        still = evidence(self._still)
        median = self._median(still)
        quiet = evidence(self._quiet)
        chosen = self._prefer(still, median, quiet, _QUIET_SHARE * count)
        if not any(person.any() for person in self._people):
            return chosen, median  # nobody detected: no third median to compute
        unboxed = [
            cv2.bitwise_and(mask, self._grid.expand(1 - person))
            for mask, person in zip(chosen, self._people, strict=True)
        ]
        return self._prefer(chosen, median, unboxed, _MIN_STILL_SHARE * count), median

    def _prefer(
        self,
        chosen: list[np.ndarray],
        median: np.ndarray,
        candidates: list[np.ndarray],
        share: float,
    ) -> list[np.ndarray]:
        """The candidate evidence instead of the chosen where there are at least `share` (and
        `_MIN_STILL`) samples of it and its median differs beyond the noise; `median` updated."""
        enough = _count(candidates) >= max(_MIN_STILL, share)
        if not enough.any():
            return chosen
        other = self._median(candidates)
        differs = np.max(cv2.absdiff(other, median), axis=2) > self._agreement()
        use = (enough & differs).astype(np.uint8)
        np.copyto(median, other, where=use[..., None].astype(bool))
        return [
            np.where(use, c, s).astype(np.uint8) for c, s in zip(candidates, chosen, strict=True)
        ]

    def _fill(self, median: np.ndarray, unseen: np.ndarray, held: np.ndarray) -> None:
        """Pixels never still get the median of all their samples (the best guess left; they
        stay unknown); cells a person holds are painted in from around them, never taken from
        the person."""
        if unseen.any():
            everything = [np.ones_like(unseen, np.uint8)] * len(self._images)
            np.copyto(median, self._median(everything), where=unseen[..., None])
        if held.any():
            mask = self._grid.expand(held.astype(np.uint8))
            median[:] = cv2.inpaint(median, mask, _INPAINT_RADIUS, cv2.INPAINT_TELEA)

    def _agreement(self) -> float:
        """Deviation (largest channel, full resolution) within which a sample agrees with the median."""
        full_sigma = self._noise.sigma * min(self._grid.factor, _AVERAGED)
        return max(self._noise.plate_threshold, _AGREE_SIGMAS * full_sigma)

    def _median(self, evidence: list[np.ndarray]) -> np.ndarray:
        """Per pixel and channel, the median of the samples that are evidence there (strip by
        strip: the masked copies of a strip are small, the samples are never copied whole)."""
        median = np.empty_like(self._images[0])
        for top in range(0, median.shape[0], _STRIP_ROWS):
            rows = slice(top, top + _STRIP_ROWS)
            masks = [mask[rows] for mask in evidence]
            strip = [
                np.where(mask[..., None] > 0, image[rows], np.uint8(255))  # 255: never below
                for image, mask in zip(self._images, masks, strict=True)
            ]
            rank = np.maximum(_count(masks).astype(np.int32) - 1, 0)[..., None]
            low = select(strip, rank // 2).astype(np.uint16)
            high = select(strip, (rank + 1) // 2).astype(np.uint16)
            median[rows] = ((low + high + 1) // 2).astype(np.uint8)
        return median

    def _deviations(self, median: np.ndarray, evidence: list[np.ndarray]) -> list[np.ndarray]:
        """Per sample, the largest channel deviation from the median (255 where not evidence)."""
        deviations = []
        for image, mask in zip(self._images, evidence, strict=True):
            deviation = np.max(cv2.absdiff(image, median), axis=2)
            deviation[mask == 0] = 255
            deviations.append(deviation)
        return deviations

    def _light(self, median: np.ndarray) -> np.ndarray:
        """The median plate in the median light of the samples."""
        gain = np.median(np.stack(self._gains), axis=0)
        if np.all(np.abs(gain - 1.0) * _GAIN_STEPS < 1.0):
            return median
        return cv2.transform(median, np.diag(gain))
