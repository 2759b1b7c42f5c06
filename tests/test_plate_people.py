"""Semantic evidence for the plate: a real pedestrian cut out of `vtest.avi` (frame minus the clip's
median, cleaned by morphology: real pixels, a real alpha) pasted standing perfectly still over the
street, which motion alone cannot tell from the room. Skipped, with the reason, where the opencv-doc
clips are missing (`real_clips`) or this OpenCV has no HOG people detector (OpenCV 5).
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np
import pytest
from real_clips import Clip, clip_path
from rtsp_tools import wait_until

from edge_matte.config.schema import PlateConfig
from edge_matte.events import Event
from edge_matte.plate import PlateKeeper, build_plate
from edge_matte.plate.detect import NoiseModel, StillnessDetector
from edge_matte.plate.estimator import BackgroundEstimator
from edge_matte.plate.grid import Grid, grey
from edge_matte.plate.people import PeopleDetector, PeopleWatch, missing_reason

FRAMES = 400  # 40 s at 10 fps: four times the span a still pixel needs to be known
CUT = (230, 190, 305, 335)  # x0, y0, x1, y1 around an isolated pedestrian in frame 0
PLACE = (120, 380)  # where he is pasted (top left): grass nobody crosses in the first 40 s


@pytest.fixture(scope="module")
def street() -> tuple[list[np.ndarray], float]:
    """The first `FRAMES` frames of vtest.avi and its rate."""
    capture = cv2.VideoCapture(str(clip_path("vtest.avi")))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while len(frames) < FRAMES:
        ok, image = capture.read()
        assert ok, "vtest.avi ended early"
        frames.append(image)
    capture.release()
    return frames, fps


def cut_out(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The pedestrian inside `CUT` of frame 0: his pixels and a 0..1 alpha (the largest blob
    that differs from the median of the frames, closed and opened, edges softened)."""
    median = np.median(np.stack(frames[::8]), axis=0).astype(np.uint8)
    x0, y0, x1, y1 = CUT
    difference = cv2.absdiff(frames[0], median).max(axis=2)[y0:y1, x0:x1]
    mask = cv2.morphologyEx((difference > 25).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    blob = labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])
    alpha = cv2.GaussianBlur(blob.astype(np.float32), (3, 3), 0)
    return frames[0][y0:y1, x0:x1].copy(), alpha


def pasted(frames: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every frame with him standing still at `PLACE`, and the mask of where he is."""
    sprite, alpha = cut_out(frames)
    height, width = alpha.shape
    x, y = PLACE
    where = np.zeros(frames[0].shape[:2], bool)
    where[y : y + height, x : x + width] = alpha > 0.5
    weight = alpha[..., None]
    out = []
    for frame in frames:
        image = frame.copy()
        region = image[y : y + height, x : x + width].astype(np.float32)
        mixed = weight * sprite.astype(np.float32) + (1.0 - weight) * region
        image[y : y + height, x : x + width] = np.round(mixed).astype(np.uint8)
        out.append(image)
    return out, where


def needs_hog() -> None:
    if missing_reason() is not None:
        pytest.skip(missing_reason())


def test_the_detector_finds_the_cut_out_pedestrian_where_he_is_pasted(street) -> None:
    needs_hog()
    frames, _ = street
    images, where = pasted(frames)
    ys, xs = np.nonzero(where)
    detector = PeopleDetector()

    def at_him(image: np.ndarray) -> bool:
        boxes = detector.boxes(image)
        return any(x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1 for x0, y0, x1, y1 in boxes)

    with_him = [at_him(image) for image in images[::40]]
    assert np.mean(with_him) >= 0.8, with_him  # the same pixels each time: misses are systematic
    assert not any(at_him(image) for image in frames[::40])  # the grass there is nobody


def test_a_person_standing_still_for_the_whole_clip_never_becomes_plate(street) -> None:
    """Without semantic evidence he is as still as the grass and becomes plate (the test can
    fail); with it, his place is painted in from around him: close to the clip's median there."""
    needs_hog()
    frames, fps = street
    images, where = pasted(frames)
    median = np.median(np.stack(frames[::4]), axis=0).astype(np.float32)
    him = images[0].astype(np.float32)
    figures = {}
    for evidence in (True, False):
        config = PlateConfig(people_evidence=evidence)
        plate, status = build_plate(Clip(images, fps), config, max_frames=FRAMES)
        plate = plate.astype(np.float32)
        figures[evidence] = (
            float(np.abs(plate - median)[where].mean()),
            float(np.abs(plate - him)[where].mean()),
            status["known_fraction"],
        )
    print(figures)
    contrast = float(np.abs(him - median)[where].mean())  # how far he is from the grass
    (to_median, to_him, known), (off_to_median, off_to_him, off_known) = (
        figures[True],
        figures[False],
    )
    assert off_to_him < 0.1 * contrast and off_to_median > 0.8 * contrast  # he became plate
    assert to_median < 0.35 * contrast and to_him > 0.7 * contrast  # painted in, not him
    assert known > 0.9 and known > off_known - 0.03  # unknown: his box (2% of the frame)


def test_a_detection_that_comes_late_from_the_worker_still_counts(street) -> None:
    """The daemon detects on a worker thread: a result names the frame it was found on and
    takes that frame's sample (and the later ones) out of the evidence when it arrives."""
    needs_hog()
    frames, fps = street
    images, where = pasted(frames[:150])
    grid = Grid(*frames[0].shape[1::-1])
    watch = PeopleWatch(grid, fps, threaded=True)
    estimator = BackgroundEstimator(grid, fps, NoiseModel(grid), watch)
    motion = StillnessDetector(grid, NoiseModel(grid))
    for index, image in enumerate(images):
        small = grid.shrink(image)
        motion.update(grey(small), index / fps)
        estimator.add(image, small, motion.moving, index / fps)
        wait_until(lambda: not _detecting(), timeout=30.0)  # each result arrives a frame late
    assert watch.calls >= 10
    plate = estimator.estimate().plate.astype(np.float32)
    him = images[0].astype(np.float32)
    assert float(np.abs(plate - him)[where].mean()) > 0.5 * float(
        np.abs(him - frames[0].astype(np.float32))[where].mean()
    )


def _detecting() -> bool:
    return any(thread.name == "plate-people" for thread in threading.enumerate())


def test_without_a_people_detector_the_plate_still_builds_and_state_says_so(
    street, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another OpenCV build (5.x) has no HOG: one warning, `people_evidence` off in the state,
    and the plate built from motion alone (he becomes plate, as the README says)."""
    monkeypatch.delattr(cv2, "HOGDescriptor", raising=False)
    assert missing_reason() is not None
    frames, fps = street
    images, _where = pasted(frames[:150])
    events: list[Event] = []
    caplog.set_level(logging.WARNING)
    keeper = PlateKeeper(PlateConfig(), None, "file://clip", events.append, fps=fps)
    source = Clip(images, fps)
    for _ in range(150):
        keeper.observe(source.read(0.0), None)
    status = keeper.status()
    assert status["people_evidence"].startswith("off: ") and "HOG" in status["people_evidence"]
    assert sum("people evidence off" in r.message for r in caplog.records) == 1
    assert status["state"] == "ready" and status["known_fraction"] >= 0.9
    plate, _ = build_plate(Clip(images, fps), PlateConfig(), max_frames=150)
    assert plate.shape == images[0].shape
