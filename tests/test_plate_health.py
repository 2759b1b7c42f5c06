"""A bad plate is caught at matte time: an event, the until-ready view, recovery when it fits.

On real footage (vtest.avi, opencv-doc): matted against a mostly inpainted plate (like the one
`plate build` made of it before issue 15) the classic engine erased the pedestrians without a
word; the check sees within half a second of frames that such a plate does not fit. End to end on the synthetic room: a daemon restoring another room's plate
says `plate.unusable` and shows viewers the replacement only, then mattes again once the right
plate is loaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_tools import (
    STILL_SCENE,
    Truth,
    assert_composite,
    mean_error,
    rgb_hex_to_bgr,
    scene_truth,
)
from fault_tools import output_url, running, small_config
from real_clips import clip_path
from rtsp_tools import read_frames
from test_capture import Recorder
from test_file_playback import run_cli

from edge_matte.plate.health import PlateHealth
from edge_matte.plate.store import PlateFile
from edge_matte.runtime.daemon import Daemon

VTEST_FPS = 10.0
GREEN = "#00ff00"


@pytest.fixture(scope="module")
def street() -> tuple[list[np.ndarray], np.ndarray]:
    """vtest.avi's first 200 frames and the per-pixel median of every second one (a good plate)."""
    capture = cv2.VideoCapture(str(clip_path("vtest.avi")))
    frames = [capture.read()[1] for _ in range(200)]
    capture.release()
    return frames, np.median(np.stack(frames[::2]), axis=0).astype(np.uint8)


def mostly_inpainted(plate: np.ndarray) -> np.ndarray:
    """`plate` known in twenty 16x16 patches (~1 % of the frame), the rest inpainted (Telea)."""
    rng = np.random.default_rng(0)
    unknown = np.ones(plate.shape[:2], np.uint8)
    height, width = unknown.shape
    for y, x in zip(rng.integers(0, height - 16, 20), rng.integers(0, width - 16, 20), strict=True):
        unknown[y : y + 16, x : x + 16] = 0
    return cv2.inpaint(plate, unknown, 5, cv2.INPAINT_TELEA)


def judge(
    health: PlateHealth, frames: list[np.ndarray], plate: np.ndarray, start: int = 0
) -> list[bool]:
    """The verdict per frame, frames timed at the clip's 10 fps from frame index `start`."""
    return [
        health.check(image, plate, (start + index) / VTEST_FPS)
        for index, image in enumerate(frames)
    ]


def test_a_good_plate_of_a_busy_street_stays_usable(street) -> None:
    frames, median = street
    events = Recorder()
    assert all(judge(PlateHealth(events), frames, median))
    assert events.kinds() == []


@pytest.mark.parametrize("kind", ["mostly inpainted", "camera moved"])
def test_a_bad_plate_is_reported_instead_of_erasing_the_pedestrians(street, kind: str) -> None:
    frames, median = street
    bad = (
        mostly_inpainted(median)
        if kind == "mostly inpainted"
        else np.roll(median, (40, 60), (0, 1))
    )
    events = Recorder()
    health = PlateHealth(events)
    verdicts = judge(health, frames[:20], bad)
    assert verdicts.index(False) <= 0.5 * VTEST_FPS + 1  # within half a second of frames
    assert events.kinds() == ["plate.unusable"]
    assert events.events[0].data["mismatch"] > 0.6
    # The right plate again: usable after a second of frames that fit it, and said so.
    verdicts = judge(health, frames[20:60], median, start=20)
    assert verdicts[-1] and not verdicts[0]
    assert verdicts.index(True) <= 1.0 * VTEST_FPS + 1
    assert events.kinds() == ["plate.unusable", "plate.usable"]


def test_a_daemon_with_another_rooms_plate_falls_back_and_recovers(tmp_path: Path) -> None:
    truth: Truth = scene_truth()
    other = scene_truth(f"{STILL_SCENE}&seed=9").background  # a different room
    state = tmp_path / "state"
    state.mkdir()
    PlateFile(state / "plate.png", STILL_SCENE, None).save(other, "median", 1.0, time.time())
    config = small_config(
        state,
        STILL_SCENE,
        matting={"engine": "classic"},
        compose={"mode": "replace", "background": GREEN},
        # The keeper keeps the wrong plate (it would recapture it, or drop it if it took the
        # other room for a moved camera): only the check can act.
        plate={"auto": False, "max_shift_px": 512},
    )
    daemon = Daemon(config)
    with running(daemon) as events:
        url = output_url(daemon)
        unusable = events.wait_for("plate.unusable")
        assert unusable.data["mismatch"] > 0.6
        assert daemon.state()["plate"] == "ready" and daemon.state()["plate_usable"] is False
        frames = read_frames(url, 3)
        everywhere = np.ones(truth.image.shape[:2], bool)
        assert mean_error(frames, everywhere, rgb_hex_to_bgr(GREEN)) <= 4.0  # until_ready view

        daemon.pipeline.plate.load_array(truth.background, "loaded by the test")
        events.wait_for("plate.usable")
        assert daemon.state()["plate_usable"] is True
        assert_composite(read_frames(url, 3), truth, GREEN)  # the subject over the replacement


def test_offline_matte_warns_when_the_plate_does_not_fit(tmp_path: Path) -> None:
    truth = scene_truth()
    image, right, wrong = tmp_path / "frame.png", tmp_path / "right.png", tmp_path / "wrong.png"
    cv2.imwrite(str(image), truth.image)
    cv2.imwrite(str(right), truth.background)
    cv2.imwrite(str(wrong), scene_truth(f"{STILL_SCENE}&seed=9").background)
    warnings = {}
    for plate in (right, wrong):
        done = run_cli("matte", "--input", image, "--plate", plate, "--alpha", tmp_path / "a.png")
        assert done.returncode == 0, done.stderr
        warnings[plate.stem] = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warnings["right"] == []
    assert len(warnings["wrong"]) == 1 and "differs from the plate" in warnings["wrong"][0]
