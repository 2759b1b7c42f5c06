"""Frame rows: the matting stage's whole per-frame work when nobody is in view and when someone is,
and the per-frame stages around the model.

An idle frame (the frame matches the plate) skips the network: the plate check, plate upkeep and
a copy of the background. An active frame adds the matte and the composite. Each row keeps its
own PlateKeeper and gives every call a new frame index (the keeper caches per frame).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_matte.bench.measure import Row, Spec
from edge_matte.bench.scenes import Scene, coverage_scene
from edge_matte.capture.synthetic import SceneScript, SyntheticSource
from edge_matte.config.schema import ComposeConfig, PlateConfig
from edge_matte.engine import MattingEngine
from edge_matte.engine.region import RegionEngine
from edge_matte.errors import EdgeMatteError
from edge_matte.events import log_only
from edge_matte.frames import Frame, Matte
from edge_matte.output.compose import Compositor
from edge_matte.plate import PlateKeeper
from edge_matte.plate.detect import NoiseModel
from edge_matte.plate.estimator import BackgroundEstimator
from edge_matte.plate.grid import Grid
from edge_matte.plate.people import HZ as PEOPLE_HZ
from edge_matte.plate.people import PeopleDetector, missing_reason


def frame_specs(
    baseline: MattingEngine,
    fast: MattingEngine | None,
    backbone_scale: float,
    width: int,
    height: int,
) -> list[Spec]:
    """Idle, active over the baseline, active over fast + region (when fast runs), the stages."""
    empty, busy = coverage_scene(width, height, 0.0), coverage_scene(width, height, 0.25)
    compositor = Compositor(ComposeConfig(), Path("/nonexistent"))  # a colour: no media needed
    specs = [
        _idle_spec(empty, compositor),
        _active_spec(
            "active frame, baseline (+ matte + composite)", baseline.matte, busy, compositor
        ),
    ]
    if fast is not None:
        region = RegionEngine(fast, backbone_scale)

        def region_matte(image: np.ndarray, plate: np.ndarray) -> Matte:
            region.reset()  # random weights put alpha everywhere: keep the region from the plate
            return region.matte(image, plate)

        specs.append(_active_spec("active frame, fast + region", region_matte, busy, compositor))
    return specs + _stage_specs(busy, compositor)


PEOPLE_ROW = "stage plate people detector (one call)"
_CAMERA_FPS = 30.0  # the detector's share of a frame is given for a camera at this rate


def add_people_share(rows: list[Row]) -> None:
    """Beside each people-detector row: its cost spread over the frames of a 30 fps camera
    (it runs `PEOPLE_HZ` times a second, on a worker thread) and that as a share of the same
    size's fastest active frame, measured in the same run."""
    active: dict[str, float] = {}
    for row in rows:
        if row.kind == "active":
            active[row.size] = min(active.get(row.size, row.median_ms), row.median_ms)
    for row in rows:
        if row.row == PEOPLE_ROW and row.size in active:
            per_frame = row.median_ms * PEOPLE_HZ / _CAMERA_FPS
            row.notes["per_frame_ms_at_30fps"] = round(per_frame, 2)
            row.notes["active_frame_percent"] = round(100.0 * per_frame / active[row.size], 1)


def _keeper(plate: np.ndarray) -> PlateKeeper:
    keeper = PlateKeeper(PlateConfig(), None, "test://", log_only)
    keeper.load_array(plate)
    return keeper


def _frames(image: np.ndarray) -> Callable[[], Frame]:
    """`image` as a new frame on each call: the keeper caches its work per frame index."""
    indices = itertools.count()

    def frame() -> Frame:
        now = time.monotonic()
        return Frame(image, next(indices), now, now)  # a camera: media time is the clock

    return frame


def _idle_spec(scene: Scene, compositor: Compositor) -> Spec:
    keeper, frames = _keeper(scene.plate), _frames(scene.image)
    height, width = scene.alpha.shape

    def idle() -> None:
        frame = frames()
        if not keeper.is_idle(frame):
            raise EdgeMatteError("bench: the empty scene is not idle; the idle row would be wrong")
        keeper.observe(frame, None)
        compositor.background(width, height)

    return Spec("idle frame (is_idle + observe + background)", "idle", idle)


def _active_spec(
    name: str,
    matte_fn: Callable[[np.ndarray, np.ndarray], Matte],
    scene: Scene,
    compositor: Compositor,
) -> Spec:
    keeper, frames = _keeper(scene.plate), _frames(scene.image)

    def active() -> None:
        frame = frames()
        keeper.is_idle(frame)
        matte = matte_fn(scene.image, scene.plate)
        keeper.observe(frame, matte)
        compositor.composite(scene.image, matte)

    return Spec(name, "active", active)


def _stage_specs(scene: Scene, compositor: Compositor) -> list[Spec]:
    """The stages around the model, each alone: capture render, plate upkeep, composite."""
    height, width = scene.alpha.shape
    source = SyntheticSource(
        SceneScript(width=width, height=height, present_from_start=True), realtime=False
    )
    indices = itertools.count(40)
    matte = Matte(scene.alpha, scene.image, "truth")
    keeper, frames = _keeper(scene.plate), _frames(scene.image)
    return [
        Spec("stage test:// render", "stage", lambda: source.frame_at(next(indices))),
        Spec("stage plate upkeep", "stage", lambda: keeper.observe(frames(), matte)),
        Spec("stage composite replace", "stage", lambda: compositor.composite(scene.image, matte)),
        *_builder_specs(scene),
    ]


def _builder_specs(scene: Scene) -> list[Spec]:
    """The per-pixel plate builder's cost per frame, next to OpenCV MOG2's apply on the same
    frames (the subject in view, then not); its memory once full and one estimate, in notes."""
    height, width = scene.alpha.shape
    grid = Grid(width, height)
    estimator = BackgroundEstimator(grid, 30.0, NoiseModel(grid))
    views = [(image, grid.shrink(image)) for image in (scene.image, scene.plate)]
    moving = (grid.shrink(scene.alpha) > 0.02).astype(np.uint8)
    turns = itertools.cycle(views)
    times = (index / 30.0 for index in itertools.count())  # plate seconds at 30 fps
    while estimator.samples < estimator.capacity:  # full: the memory it holds from now on
        estimator.add(*next(turns), moving, next(times))
    started = time.perf_counter()
    estimator.estimate()
    notes = {
        "builder_mb": round(estimator.nbytes / 2**20, 1),
        "samples_kept": estimator.capacity,
        "estimate_ms": round((time.perf_counter() - started) * 1000.0, 1),
    }
    mog2 = cv2.createBackgroundSubtractorMOG2()
    people = [] if missing_reason() is not None else [_people_spec(scene)]
    return [
        Spec(
            "stage plate builder add",
            "stage",
            lambda: estimator.add(*next(turns), moving, next(times)),
            notes,
        ),
        Spec("stage MOG2 apply (builder baseline)", "stage", lambda: mog2.apply(next(turns)[0])),
        *people,
    ]


def _people_spec(scene: Scene) -> Spec:
    """One call of the people detector on the scene's frame (scaled to its working width)."""
    detector = PeopleDetector()
    notes = {"calls_per_s": PEOPLE_HZ}
    return Spec(PEOPLE_ROW, "stage", lambda: detector.boxes(scene.image), notes)
