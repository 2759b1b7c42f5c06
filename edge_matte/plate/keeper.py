"""The plate keeper: makes, corrects, realigns, refreshes and saves the background plate by itself.

States: none -> capturing -> ready -> (stale | misaligned) -> capturing -> ready ...; every change is
logged and emitted as an `Event` ("plate.<what>") with its reason.

When is the scene empty (so a capture may start)?
  * It has been still for `stillness_s`: no grid cell changed beyond the noise threshold against
    the frame a few frames back (see `detect`).
  * With a plate: the matte covers (almost) nothing, or (almost) no cell differs from the plate.
  * Without a plate: **the scene must have changed at least once since the camera started.** A
    person standing perfectly still in front of a fresh camera is indistinguishable from furniture
    by stillness alone; requiring motion first means the first capture follows someone leaving,
    not someone who was there all along. The same rule gates the per-pixel builder. A camera
    shift counts as change. With a plate, coverage zero is enough (no motion needed).
  * Optionally (`person_veto`) OpenCV's HOG detector finds nobody in the frame.

Making a plate: the temporal median of `capture_frames` frames once the scene is empty (aborted
if motion returns); a capture requested by hand takes the median of the still samples of a few
seconds. While no plate exists, a per-pixel estimator (`estimator`) runs in parallel for scenes
that are never empty; its plate is installed once `maker.READY_KNOWN` of the frame is known (the
rest from the median of all samples), and it keeps learning afterwards: every few seconds a
better estimate replaces the plate ("plate.improved") until another method replaces it.
`status()` says how much is known and what the keeper waits for.

Keeping it: every frame the per-channel gain is re-measured on background cells (a +-30%
light ramp keeps the plate right); every few frames background pixels (alpha ~ 0, not moving,
not changed beyond the noise) are pulled towards the frame at `update_rate` per frame; the
translation to the frame is checked by phase correlation and, once confirmed on two checks,
compensated by warping (<= `max_shift_px`) or answered by dropping the plate and recapturing.
Drift (mean difference over background cells) above `refresh_threshold` for half a second marks
the plate stale; a stale plate is still served and recaptured as soon as the scene is empty.

Every span above (stillness, the per-pixel plate's 10 s, half a second of drift) is plate time
(`clock`): the frames' media time, so a daemon dropping frames under load, or a camera faster or
slower than its nominal rate, waits the same seconds of scene; `fps` (nominal) only fills in
for frames whose step is unusable (the first, a loop, an outage).

`freeze` stops everything that would replace or repaint the plate (capture, refresh, slow update);
gain correction and small realignments continue because they keep the same plate valid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edge_matte.config.profile import Profile
from edge_matte.config.schema import PlateConfig
from edge_matte.errors import MediaError, StorageError
from edge_matte.events import Emit, Event
from edge_matte.frames import Frame, Matte
from edge_matte.plate import store
from edge_matte.plate.align import Shift
from edge_matte.plate.clock import PlateClock, reached
from edge_matte.plate.detect import NoiseModel, PersonVeto, StillnessDetector, coverage
from edge_matte.plate.estimator import BackgroundEstimator, Estimate
from edge_matte.plate.grid import Grid, grey
from edge_matte.plate.live import LivePlate
from edge_matte.plate.maker import READY_KNOWN, Estimates, Evaluator, NewPlate, PlateMaker
from edge_matte.plate.people import PeopleWatch, missing_reason
from edge_matte.plate.upkeep import Upkeep, View, compare

_LOG = logging.getLogger(__name__)
_EMPTY_COVERAGE = 0.002  # matte coverage under which nobody is in view
_EMPTY_CHANGED = 0.002  # fraction of cells differing from the plate under which it matches
_IDLE_CHANGED = 0.001
_STALE_S = 0.5
_IMPROVED_SAVE_S = 60.0  # an improving plate is saved at most this often (flash wear)
_TIMING_WINDOW = 300


class PlateState(str, Enum):
    """Where the keeper is with its plate (published as `plate.state`)."""

    NONE = "none"
    CAPTURING = "capturing"
    READY = "ready"
    STALE = "stale"
    MISALIGNED = "misaligned"


def _people_off(config: PlateConfig) -> str | None:
    """Why the people detector gives no evidence to the per-pixel plate (None: it does)."""
    if not config.people_evidence:
        return "plate.people_evidence is false"
    reason = missing_reason()
    if reason is not None:
        _LOG.warning("people evidence off: %s; a person standing still may become plate", reason)
    return reason


class PlateKeeper:
    """Keeps the background plate right with nobody at the keyboard (see module docstring).

    Thread-safe: the pipeline calls `observe` per frame while control commands arrive from MQTT.
    """

    def __init__(
        self,
        config: PlateConfig,
        path: Path | None,
        source_uri: str,
        emit: Emit,
        profile: Profile | None = None,
        fps: float = 30.0,
        estimates: Estimates = "inline",
    ) -> None:
        """`estimates`: when the per-pixel estimator is evaluated (see `maker.Evaluator`)."""
        self._config = config
        self._estimates = estimates
        self._file = (
            None
            if path is None
            else store.PlateFile(path, source_uri, profile.name if profile else None)
        )
        self._emit = emit
        self._profile = profile
        self._fps = fps
        self._lock = threading.RLock()
        self._veto = PersonVeto()
        self._people_off = _people_off(config)
        self._timings: deque[float] = deque(maxlen=_TIMING_WINDOW)
        self.state = PlateState.NONE
        self.frozen = False
        self._grid: Grid | None = None
        self._live: LivePlate | None = None
        self._maker: PlateMaker | None = None  # while capturing
        self._improving: Evaluator | None = None  # a per-pixel plate still learning
        self._view_cache: View | None = None
        self._clock = PlateClock(fps)
        self._stale_s = 0.0  # plate seconds the drift has been over the threshold
        self._saved_at = -float("inf")  # time.monotonic() of the last save

    # -- what the pipeline reads ------------------------------------------------------------------

    @property
    def plate(self) -> np.ndarray | None:
        """The plate aligned and gain-corrected to the current frame (read-only), or None."""
        with self._lock:
            return self._live.image() if self._live is not None else None

    @property
    def motion_seen(self) -> bool:
        """Whether the scene has changed at least once since frames started arriving."""
        with self._lock:
            return self._grid is not None and self._detector.motion_seen

    def scene_difference(self, frame: Frame) -> float:
        """Mean absolute frame-to-plate difference (8-bit levels, on the grid); inf without a plate."""
        with self._lock:
            return self._view(frame).mean_difference

    def is_idle(self, frame: Frame) -> bool:
        """True when the plate is ready and the frame matches it within the noise: skip the network."""
        with self._lock:
            if self.state is not PlateState.READY:
                return False
            view = self._view(frame)
            return (
                view.mean_difference <= self._noise.empty_difference
                and view.changed <= _IDLE_CHANGED
            )

    def observe(self, frame: Frame, matte: Matte | None) -> None:
        """Per frame, after matting (`matte` None when there was no plate or the engine was skipped)."""
        with self._lock:
            started = time.perf_counter()
            now = self._clock.tick(frame.media_time)
            view = self._view(frame)
            moving = self._detector.update(view.luma, now)
            alpha = self._sized_grid.shrink(matte.alpha) if matte is not None else None
            if self._live is not None:
                self._keep(self._live, frame, view, alpha)
            self._step(frame, view, alpha, moving)
            if self._improving is not None and self._live is not None and not self.frozen:
                self._improve(self._improving, self._live, frame, view)
            self._timings.append(time.perf_counter() - started + view.cost_s)

    # -- per-frame work ---------------------------------------------------------------------------

    @property
    def _sized_grid(self) -> Grid:
        """The grid of the current frame size, which the first frame or plate sets."""
        if self._grid is None:
            raise RuntimeError("the plate keeper has no frame size yet")
        return self._grid

    def _setup(self, width: int, height: int) -> None:
        self._grid = Grid(width, height)
        self._noise = NoiseModel(self._grid, self._profile)
        self._detector = StillnessDetector(self._grid, self._noise)
        self._upkeep = Upkeep(self._grid, self._noise, self._config, self._fps)
        self._view_cache = None

    def _view(self, frame: Frame) -> View:
        key = (frame.index, frame.time)
        if self._view_cache is not None and self._view_cache.key == key:
            return self._view_cache
        started = time.perf_counter()
        width, height = frame.size
        if self._grid is None or self._grid.full != (width, height):
            self._resize(width, height)
        small = self._sized_grid.shrink(frame.image)
        view = View(key, small, grey(small))
        compare(view, self._live, self._noise)
        view.cost_s = time.perf_counter() - started
        self._view_cache = view
        return view

    def _resize(self, width: int, height: int) -> None:
        if self._grid is not None:
            _LOG.warning("frame size changed to %dx%d: the plate is rebuilt", width, height)
            self._drop_plate()
            if self.state is not PlateState.NONE:
                self._change(
                    PlateState.NONE, "plate.cleared", f"frame size changed to {width}x{height}"
                )
        self._setup(width, height)

    def _keep(self, live: LivePlate, frame: Frame, view: View, alpha: np.ndarray | None) -> None:
        moved = self._upkeep.step(
            live, frame, view, alpha, self._detector.moving, self.frozen, self._clock.now
        )
        if moved is not None:
            self._follow(live, moved)

    def _follow(self, live: LivePlate, shift: Shift) -> None:
        """The camera moved: warp the plate along, or drop it when the move is too large."""
        where = f"{shift.dx:+.1f},{shift.dy:+.1f} px"
        if shift.length <= self._config.max_shift_px:
            live.warp(shift.dx, shift.dy)
            self._change(
                self.state,
                "plate.realigned",
                f"camera moved {where}: plate warped to follow",
                dx=shift.dx,
                dy=shift.dy,
            )
            self._save()
            return
        self._drop_plate()
        self._change(
            PlateState.MISALIGNED,
            "plate.misaligned",
            f"camera moved {where} (> {self._config.max_shift_px:g} px): plate discarded, recapturing",
            dx=shift.dx,
            dy=shift.dy,
        )

    def _step(self, frame: Frame, view: View, alpha: np.ndarray | None, moving: bool) -> None:
        """Advance the state machine by one frame."""
        automatic = self._config.auto and not self.frozen
        if self.state in (PlateState.NONE, PlateState.MISALIGNED) and automatic:
            reason = "camera moved" if self.state is PlateState.MISALIGNED else "no plate yet"
            self._start_capturing(f"{reason}: waiting for an empty scene")
        elif self.state is PlateState.READY and automatic:
            self._watch_drift()
            if self._improving is not None and self._empty(frame, view, alpha):
                self._start_capturing("scene empty: a median replaces the per-pixel plate")
        elif self.state is PlateState.STALE:
            self._watch_stale(frame, view, alpha, automatic)
        if self.state is PlateState.CAPTURING:
            self._capture(frame, view, alpha, moving, automatic)

    def _watch_drift(self) -> None:
        drifted = self._upkeep.drift > self._config.refresh_threshold
        self._stale_s = self._stale_s + self._clock.step if drifted else 0.0
        if reached(self._stale_s, _STALE_S):
            self._change(
                PlateState.STALE,
                "plate.stale",
                f"plate drifted {self._upkeep.drift:.1f} levels from the scene (> {self._config.refresh_threshold:g}): "
                "recapturing when the scene is empty",
                drift=self._upkeep.drift,
            )

    def _watch_stale(
        self, frame: Frame, view: View, alpha: np.ndarray | None, automatic: bool
    ) -> None:
        if self._upkeep.drift <= self._config.refresh_threshold / 2:
            self._stale_s = 0.0
            self._change(
                PlateState.READY,
                "plate.refreshed",
                "drift back within threshold: plate ready",
                drift=self._upkeep.drift,
            )
        elif automatic and self._empty(frame, view, alpha):
            self._start_capturing("plate stale and scene empty: recapturing")

    def _improve(self, improving: Evaluator, live: LivePlate, frame: Frame, view: View) -> None:
        """Feed the per-pixel estimator behind the installed plate; install what it learns."""
        improving.estimator.add(frame.image, view.small, self._detector.moving, self._clock.now)
        estimate = improving.poll()
        if estimate is not None and estimate.known_fraction >= min(
            READY_KNOWN, live.known_fraction
        ):
            new = NewPlate(
                estimate.plate, "per-pixel", estimate.known_fraction, "", estimate.variability
            )
            how = f"{estimate.known_fraction * 100:.1f}% known from {estimate.samples} samples"
            self._install(new, f"per-pixel plate improved: {how}", "plate.improved")
            self._improving = improving

    def _new_maker(self) -> PlateMaker:
        return PlateMaker(self._config.capture_frames, self._fps, self._estimates)

    def _start_capturing(self, reason: str) -> None:
        self._maker = self._maker or self._new_maker()
        self._change(PlateState.CAPTURING, "plate.capturing", reason)

    def _still_long_enough(self) -> bool:
        """Still for `stillness_s` of plate time, and for one frame at least."""
        still = self._detector.still_s
        return still > 0.0 and reached(still, self._config.stillness_s)

    def _empty(self, frame: Frame, view: View, alpha: np.ndarray | None) -> bool:
        """Is the scene empty? See the module docstring for the rule."""
        if not self._still_long_enough():
            return False
        if self._live is not None:
            nobody = (
                alpha is not None and coverage(alpha) <= _EMPTY_COVERAGE
            ) or view.changed <= _EMPTY_CHANGED
        else:
            nobody = self._detector.motion_seen
        if nobody and self._config.person_veto and self._veto.present(frame.image):
            self._detector.restart()
            return False
        return nobody

    def _capture(
        self, frame: Frame, view: View, alpha: np.ndarray | None, motion: bool, automatic: bool
    ) -> None:
        maker = self._maker = self._maker or self._new_maker()
        if self._live is None and self._detector.motion_seen and maker.building is None:
            maker.build(self._new_estimator())
        new = maker.step(
            frame.image,
            view.small,
            self._detector.moving,
            self._clock.now,
            motion,
            automatic,
            lambda: self._empty(frame, view, alpha),
        )
        if new is not None:
            improving = maker.building if new.method == "per-pixel" else None
            self._install(new, None)
            self._improving = improving

    def _new_estimator(self) -> BackgroundEstimator:
        people = None
        if self._people_off is None:
            threaded = self._estimates == "background"
            people = PeopleWatch(self._sized_grid, self._fps, threaded)
        return BackgroundEstimator(self._sized_grid, self._fps, self._noise, people)

    def _install(self, new: NewPlate, message: str | None, kind: str | None = None) -> None:
        replaced = self._live is not None
        live = LivePlate(new.image, self._sized_grid, new.method, new.known_fraction)
        live.variability = new.variability
        self._live = live
        self._maker = None
        self._improving = None
        self._stale_s = 0.0
        self._view_cache = None
        self._upkeep.reset()
        kind = kind or ("plate.refreshed" if replaced else "plate.captured")
        self._change(
            PlateState.READY,
            kind,
            message or f"plate {'refreshed' if replaced else 'captured'}: {new.how}",
            method=live.method,
            known_fraction=live.known_fraction,
        )
        if kind != "plate.improved" or time.monotonic() - self._saved_at >= _IMPROVED_SAVE_S:
            self._save()

    def _drop_plate(self) -> None:
        self._live = None
        self._maker = None
        self._improving = None
        self._view_cache = None
        if self._grid is not None:
            self._upkeep.reset()

    def _change(self, state: PlateState, kind: str, message: str, **data: Any) -> None:
        if state is not self.state:
            _LOG.info("plate %s -> %s: %s", self.state.value, state.value, message)
        self.state = state
        self._emit(Event(kind, message, {"state": state.value, **data}))

    def _save(self) -> None:
        if self._file is None or self._live is None:
            return
        live = self._live
        self._saved_at = time.monotonic()
        try:
            self._file.save(
                live.image(), live.method, live.known_fraction, live.created, live.variability
            )
        except (StorageError, MediaError) as err:
            _LOG.warning("plate not saved: %s", err)
            self._emit(
                Event(
                    "plate.save_failed", f"plate not saved: {err}", {"path": str(self._file.path)}
                )
            )

    # -- control ----------------------------------------------------------------------------------

    def capture_now(self) -> None:
        """Estimate the plate from the next few seconds (at least `capture_frames` frames),
        without waiting for stillness."""
        with self._lock:
            self._maker = self._maker or self._new_maker()
            self._maker.request(self._new_estimator)
            self._change(PlateState.CAPTURING, "plate.capturing", "manual capture requested")

    def freeze(self) -> None:
        """Stop automatic capture, refresh and slow update (gain and small realignments continue)."""
        with self._lock:
            self.frozen = True
            _LOG.info("plate frozen")

    def unfreeze(self) -> None:
        """Resume automatic capture, refresh and slow update."""
        with self._lock:
            self.frozen = False
            _LOG.info("plate unfrozen")

    def load_file(self, path: Path) -> None:
        """Use an image file as the plate; MediaError (state unchanged) if unreadable or the wrong size."""
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise MediaError(f"{path}: cannot read plate: {err.strerror}") from err
        self.load_array(store.decode(data, Path(path)), f"loaded from {path}")

    def load_array(self, image: np.ndarray, how: str = "loaded from an array") -> None:
        """Use a BGR uint8 image as the plate; MediaError (state unchanged) if the size is wrong."""
        with self._lock:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise MediaError(f"plate must be BGR uint8, got {image.dtype} {image.shape}")
            width, height = image.shape[1], image.shape[0]
            if self._grid is None:
                self._setup(width, height)
            elif self._grid.full != (width, height):
                raise MediaError(
                    f"plate is {width}x{height} but frames are {self._grid.full[0]}x{self._grid.full[1]}"
                )
            self._drop_plate()
            self._live = LivePlate(image, self._sized_grid, "file")
            self._change(PlateState.READY, "plate.loaded", f"plate {how}", method="file")
            self._save()

    def clear(self) -> None:
        """Forget the plate (and its saved file); with `auto` a new one is made when the scene allows."""
        with self._lock:
            self._drop_plate()
            self._change(PlateState.NONE, "plate.cleared", "plate cleared")
            if self._file is not None:
                try:
                    self._file.remove()
                except OSError as err:
                    _LOG.warning("cannot delete saved plate %s: %s", self._file.path, err.strerror)

    def restore(self, width: int, height: int) -> bool:
        """At start: reuse the saved plate if it fits this source and size; else warn and start afresh."""
        with self._lock:
            if self._grid is None or self._grid.full != (width, height):
                self._setup(width, height)
            try:
                saved = None if self._file is None else self._file.load(width, height)
            except MediaError as err:
                _LOG.warning("saved plate discarded: %s", err)
                return False
            if saved is None:
                return False
            image, meta = saved
            self._drop_plate()
            self._live = LivePlate(
                image, self._sized_grid, meta.method, meta.known_fraction, meta.created
            )
            self._live.variability = meta.variability
            age = time.time() - meta.created
            message = f"restored saved plate ({meta.method}, {age:.0f} s old)"
            self._change(PlateState.READY, "plate.loaded", message, method=meta.method)
            return True

    # -- reporting --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """State and quality figures for telemetry and the control API."""
        with self._lock:
            live, view = self._live, self._view_cache
            building = self._improving or (None if self._maker is None else self._maker.building)
            latest = None if building is None else building.latest
            difference = None if view is None or live is None else round(view.mean_difference, 2)
            return {
                "state": self.state.value,
                "age_s": None if live is None else round(time.time() - live.created, 1),
                "known_fraction": None if live is None else round(live.known_fraction, 4),
                "frozen": self.frozen,
                "method": None if live is None else live.method,
                "difference": difference,
                "drift": None if live is None else round(self._upkeep.drift, 2),
                "shift": None if live is None else [round(v, 2) for v in live.shift],
                "gain": None if live is None else [round(float(g), 4) for g in live.gain],
                "building_known_fraction": None
                if latest is None
                else round(latest.known_fraction, 4),
                "ready_known_fraction": READY_KNOWN,
                "people_evidence": "on" if self._people_off is None else f"off: {self._people_off}",
                "waiting_for": self._waiting_for(latest),
            }

    def _waiting_for(self, latest: Estimate | None) -> str | None:
        """What the keeper needs before it can install (or keep improving) a plate, in words."""
        if self.state is PlateState.READY and self._improving is None:
            return None
        if self.state is PlateState.READY:
            return "more evidence: the per-pixel plate keeps improving"
        if self.state is not PlateState.CAPTURING and (self.frozen or not self._config.auto):
            return "a manual capture (automatic capture is off or frozen)"
        if self._live is None and not (self._grid is not None and self._detector.motion_seen):
            return "the scene to change once (a still person must not become the plate)"
        known = (
            "nothing estimated yet" if latest is None else f"{latest.known_fraction * 100:.1f}% now"
        )
        return f"an empty scene, or {READY_KNOWN * 100:.0f}% of the background seen still ({known})"

    def stats(self) -> dict[str, float]:
        """Plate maintenance cost per frame over the last few hundred frames."""
        with self._lock:
            if not self._timings:
                return {"maintenance_ms": 0.0, "maintenance_ms_max": 0.0, "frames": 0}
            samples = np.array(self._timings) * 1000.0
            return {
                "maintenance_ms": round(float(samples.mean()), 3),
                "maintenance_ms_max": round(float(samples.max()), 3),
                "frames": len(samples),
            }

    def partial_plate(self) -> NewPlate | None:
        """The per-pixel plate from all the evidence so far (offline use); None if none."""
        with self._lock:
            building = self._improving or (None if self._maker is None else self._maker.building)
            if building is None or building.estimator.samples == 0:
                return None
            estimate = building.estimator.estimate()
            if estimate.known_fraction == 0.0:
                return None
            return NewPlate(
                estimate.plate, "per-pixel", estimate.known_fraction, "", estimate.variability
            )
