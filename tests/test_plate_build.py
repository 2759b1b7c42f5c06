"""Plate making: the incremental temporal median, and `build_plate` over recordings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_matte.capture.synthetic import SceneScript, SyntheticSource
from edge_matte.cli import main
from edge_matte.config.schema import PlateConfig
from edge_matte.errors import MediaError, SourceEnded
from edge_matte.frames import Frame, SourceInfo
from edge_matte.plate import build_plate
from edge_matte.plate.build import MedianCapture
from edge_matte.plate.maker import READY_KNOWN

WIDTH, HEIGHT = 320, 180
CONFIG = PlateConfig(stillness_s=1.0)


class Recording:
    """A FrameSource playing the first `length` frames of a synthetic scene, then ending."""

    def __init__(self, length: int, **script: object) -> None:
        self.scene = SyntheticSource(
            SceneScript(width=WIDTH, height=HEIGHT, **script), realtime=False
        )
        self.length = length
        self.last: Frame | None = None
        self._next = 0

    @property
    def info(self) -> SourceInfo:
        return self.scene.info

    def read(self, timeout: float) -> Frame:
        if self._next >= self.length:
            raise SourceEnded("end of recording")
        self.last = self.scene.frame_at(self._next)
        self._next += 1
        return self.last

    def close(self) -> None:
        self.scene.close()


def error(plate: np.ndarray, frame: Frame) -> float:
    return float(np.abs(plate.astype(np.float32) - frame.truth_background).mean())


@pytest.mark.parametrize("count", [1, 2, 7, 15, 40])
def test_incremental_median_is_exact(count: int) -> None:
    rng = np.random.default_rng(count)
    frames = rng.integers(0, 256, (count, 9, 11, 3), dtype=np.uint8)
    capture = MedianCapture(count, 1.0)
    for index, frame in enumerate(frames, 1):
        assert not capture.done
        capture.add(frame, float(index))
    assert capture.done
    kept = frames[:: -(-count // 31)]  # more than 31 frames are subsampled evenly
    expected = np.median(kept.astype(np.float64), axis=0)
    assert np.abs(capture.median().astype(np.float64) - expected).max() <= 0.5


def test_median_of_noisy_frames_is_closer_to_the_room_than_any_frame() -> None:
    source = SyntheticSource(SceneScript(width=WIDTH, height=HEIGHT), realtime=False)
    capture = MedianCapture(15, 1 / 30)
    for index in range(15):
        frame = source.frame_at(index)
        capture.add(frame.image, frame.media_time)
    frame = source.frame_at(0)
    assert error(capture.median(), frame) < 0.6 * error(frame.image, frame)  # measured 0.50 vs 1.6


def test_recording_with_a_visit_gives_a_median_plate() -> None:
    recording = Recording(400)
    plate, status = build_plate(recording, CONFIG, max_frames=400)
    assert status["method"] == "median" and status["known_fraction"] == 1.0
    assert status["frames"] < 400  # stops as soon as the plate exists
    assert error(plate, recording.last) < 1.0


def test_recording_that_is_never_empty_gives_a_per_pixel_plate() -> None:
    recording = Recording(700, subjects=3)
    plate, status = build_plate(recording, CONFIG, max_frames=700)
    assert status["method"] == "per-pixel" and status["frames"] == 700  # every frame is evidence
    assert status["known_fraction"] > 0.6  # measured 0.72: where visitors stood a third of the time
    assert error(plate, recording.last) < 1.5  # measured 0.75
    assert status["variability"].shape == (HEIGHT, WIDTH)


def test_short_busy_recording_gives_a_partial_plate_and_says_so() -> None:
    recording = Recording(360, subjects=3)  # 11 s after the first motion: just over 10 s
    plate, status = build_plate(recording, CONFIG, max_frames=1000)
    assert status["method"] == "per-pixel" and 0.3 < status["known_fraction"] < READY_KNOWN
    assert "known" in status["note"] and status["frames"] == 360
    assert plate.shape == (HEIGHT, WIDTH, 3)


def test_still_recording_is_taken_as_the_empty_room() -> None:
    recording = Recording(90, enter_frame=10_000)
    plate, status = build_plate(recording, CONFIG, max_frames=1000)
    assert status["method"] == "median" and "nothing moved" in status["note"]
    assert error(plate, recording.last) < 1.0


def test_recording_without_frames_is_an_error() -> None:
    with pytest.raises(MediaError, match="no frames"):
        build_plate(Recording(0), CONFIG, max_frames=10)


def test_short_busy_recording_knows_nothing_and_is_an_error() -> None:
    with pytest.raises(MediaError, match="record longer"):  # visitors could not be outlasted
        build_plate(Recording(200, subjects=3), CONFIG, max_frames=1000)


def test_recording_that_never_settles_is_an_error() -> None:
    recording = Recording(40)  # the subject walks in and the clip ends
    with pytest.raises(MediaError, match="record longer"):
        build_plate(recording, CONFIG, max_frames=100)


def write_clip(path: Path, length: int, **script: object) -> None:
    scene = SyntheticSource(SceneScript(width=WIDTH, height=HEIGHT, **script), realtime=False)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (WIDTH, HEIGHT))
    for index in range(length):
        writer.write(scene.frame_at(index).image)
    writer.release()


def test_plate_build_exits_3_when_too_little_is_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy, visit = tmp_path / "busy.avi", tmp_path / "visit.avi"
    write_clip(busy, 360, subjects=3)
    write_clip(visit, 400)
    output = tmp_path / "plate.png"
    assert main(["plate", "build", "--input", str(busy), "--output", str(output)]) == 3
    assert output.is_file() and "warning: only" in capsys.readouterr().err  # written, and said
    assert main(["plate", "build", "--input", str(visit), "--output", str(output)]) == 0
