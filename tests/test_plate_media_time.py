"""Plate spans in media seconds, not frame counts (issue 15).

A daemon that drops frames under load, or a camera faster than its nominal rate, must see its
plate installed after the same seconds of scene as one that gets every frame at the nominal
rate: stillness, the per-pixel plate's 10 s, the median capture are measured on the frames'
media time. An outage (the camera lost and back) or a restart (a file opened again, a camera
with a new clock) makes no span negative or huge: such a step counts one nominal interval.
The synthetic scene's media time is its own clock (index / fps), so dropping frames is feeding
every k-th index.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from test_plate_keeper import CONFIG, Trace, drive, keeper_for, last_occupied, scene

from edge_matte.config.schema import PlateConfig
from edge_matte.frames import Frame
from edge_matte.plate import PlateState
from edge_matte.plate.clock import MAX_STEP_S, PlateClock
from edge_matte.plate.detect import NoiseModel
from edge_matte.plate.grid import Grid, grey
from edge_matte.plate.live import LivePlate
from edge_matte.plate.upkeep import Upkeep, View, compare

SCENE_FPS = 30.0


def ready_at(
    fps: float = SCENE_FPS, keep: int = 1, frames: int = 600, **script: object
) -> tuple[float | None, Trace]:
    """Feed a keeper at nominal `fps` the scene's frames (every `keep`-th of the first `frames`)
    and return the media time of the first frame with a ready plate, and what happened."""
    source, trace = scene(**script), Trace()
    keeper = keeper_for(source, trace, CONFIG, fps=fps)
    drive(keeper, source, trace, range(0, frames, keep))
    ready = trace.first(PlateState.READY)
    return (None if ready is None else ready / SCENE_FPS), trace


def test_plate_time_follows_the_stamps_and_never_goes_back_or_leaps() -> None:
    clock = PlateClock(fps=10.0)
    stamps = [5.0, 5.3, 5.3, 2.0, 2.05, 2.05 + 100.0, 102.55, math.nan, 103.05]
    times = [clock.tick(stamp) for stamp in stamps]
    # the first frame: one nominal interval; a real 0.3 s step; a repeated stamp, a restart
    # (file opened again) and an outage of 100 s: one interval each; no stamp: one interval,
    # and the next step is measured from the last frame that had one
    steps = [0.1, 0.3, 0.1, 0.1, 0.05, 0.1, 0.5, 0.1, 0.5]
    assert times == pytest.approx(list(itertools.accumulate(steps)))
    assert clock.tick(103.05 + MAX_STEP_S) - times[-1] == pytest.approx(MAX_STEP_S)


@pytest.mark.parametrize("keep", [2, 3])
@pytest.mark.parametrize(
    ("script", "method", "bound"),
    [({}, "median", 1.0), ({"subjects": 3}, "per-pixel", 1.5)],
    ids=["empties", "never-empty"],
)
def test_dropped_frames_install_the_plate_after_the_same_media_time(
    keep: int, script: dict, method: str, bound: float
) -> None:
    """Every 2nd or 3rd frame of the scene delivered: the plate comes after the same seconds of
    scene (within two delivered frames) as with every frame. Counting frames, no plate came in
    20 s of either scene: stillness and the median took 2-3x the time (the subject was back
    before the median was in) and the per-pixel plate's 10 s became 20-30 s."""
    every, _ = ready_at(**script)
    dropped, trace = ready_at(keep=keep, **script)
    assert every is not None and dropped is not None  # measured 7.5 / 11.0 s with every frame
    assert abs(dropped - every) <= 2 * keep / SCENE_FPS
    ready = round(dropped * SCENE_FPS)
    assert trace.events[1].data["method"] == method and trace.errors[ready] < bound


def test_a_camera_faster_than_its_nominal_rate_does_not_install_early() -> None:
    """A camera configured at 10 fps that delivers 30: the stillness and the median capture
    last the seconds the settings mean at 10 fps (1 s, 15 frames = 1.5 s), not a third."""
    script = {"empty_frames": 180, "frames": 400}  # room for a 1.5 s median after 1 s still
    nominal, _ = ready_at(fps=10.0, keep=3, **script)
    faster, trace = ready_at(fps=10.0, **script)
    assert nominal is not None and faster is not None
    assert abs(faster - nominal) <= 3 / SCENE_FPS  # 8.5 s both; counting frames: 3.0 s
    assert trace.events[1].data["method"] == "median"


@pytest.mark.parametrize("jump_s", [120.0, -50.0], ids=["outage", "restart"])
def test_an_outage_or_a_restart_counts_one_interval(jump_s: float) -> None:
    """While the scene is still (the subject has left), the media clock leaps forward two
    minutes (the camera was lost and came back) or back (a reopened file starts at 0 again):
    the stillness neither completes at once nor breaks; the plate comes one interval of
    stillness later, not at once and not never."""
    source, reference = scene(), Trace()
    drive(keeper_for(source, reference), source, reference, range(330))
    ready = reference.first(PlateState.READY)
    left = last_occupied(source, range(ready)) + 1
    jump_at = left + 10  # still for a third of a second, 1 s needed
    watched = keeper_for(source, Trace())
    for index in range(330):
        frame = source.frame_at(index)
        if index >= jump_at:
            frame = dataclasses.replace(frame, media_time=frame.media_time + jump_s)
        watched.observe(frame, None)
        if watched.state is PlateState.READY:
            break
    # the frame after the jump counted one interval (taken at face value, the outage would
    # have completed the stillness at once, the restart would have held it back for 50 s)
    assert index == ready


def slow_update_pull(keep: int) -> float:
    """How far (levels) the slow update pulls a plate towards a quarter of the room lit 3 levels
    brighter (within the noise: background, not a change) in 3 s of frames, every `keep`-th."""
    grid, config = Grid(320, 180), PlateConfig()
    noise = NoiseModel(grid)
    room = np.random.default_rng(1).integers(60, 180, (180, 320, 3)).astype(np.uint8)
    lit = room.copy()
    lit[:90, :160] += 3
    live, upkeep = LivePlate(room, grid, "median"), Upkeep(grid, noise, config, SCENE_FPS)
    small, still = grid.shrink(lit), np.zeros(grid.size[::-1], np.uint8)
    for index in range(0, 90, keep):
        view = View((index, index / SCENE_FPS), small, grey(small))
        compare(view, live, noise)
        frame = Frame(lit, index, index / SCENE_FPS, index / SCENE_FPS)
        assert upkeep.step(live, frame, view, None, still, False, index / SCENE_FPS) is None
    assert np.abs(live.base[90:, 160:] - room[90:, 160:]).max() < 0.1  # the rest stays
    return float(np.mean(live.base[:90, :160] - room[:90, :160]))


def test_the_slow_update_pulls_as_far_per_second_with_dropped_frames() -> None:
    """`plate.update_rate` is per nominal frame: with a third of the frames each update makes up
    for the time since the last (counting frames, it pulled 1.4 levels instead of 2.5)."""
    every, dropped = slow_update_pull(1), slow_update_pull(3)
    assert every == pytest.approx(3 * (1 - 0.98**88), abs=0.05)  # 88 frames up to the last update
    assert dropped == pytest.approx(every, abs=0.15)  # 84 frames' time up to the last update
