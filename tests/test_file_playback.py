"""Video files as they are: headers that miscount frames, rates that do not match the stamps.

tree.avi (opencv-doc) claims 444 frames at 15 fps and holds 68 over the same 29.6 s; such a
file must play to its real end at the pace of its timestamps and loop without counting as a
lost camera, while a file really cut short is still reported. A small clip with the same defect
(an AVI holding every second frame of a 15 fps timeline) keeps the looping tests short.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from fault_tools import slow
from real_clips import clip_path
from test_capture import Recorder, file_config, pump_until, read_until_end

from edge_matte.capture.opencv_source import Timeline, open_file
from edge_matte.capture.opener import open_source
from edge_matte.capture.resilient import ResilientSource
from edge_matte.errors import SourceEnded, SourceError

SPARSE_FRAMES = 8  # frames the sparse clip holds; its header counts 15
SPARSE_STEP_S = 2 / 15  # their timestamps are two header frames apart


def sparse_clip(path: Path, scene: str) -> Path:
    """A 160x120 MJPEG AVI of lavfi `scene` whose header says 15 frames at 15 fps; it holds
    every second one."""
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"{scene}:size=160x120:rate=15",
            "-vf", "select='not(mod(n,2))'", "-fps_mode", "passthrough",
            "-frames:v", str(SPARSE_FRAMES), "-c:v", "mjpeg", str(path),
        ],
        check=True,
    )  # fmt: skip
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    declared = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    assert declared == (2 * SPARSE_FRAMES - 1, 15.0)  # the defect this file stands for
    return path


@pytest.fixture(scope="module")
def sparse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The moving test card, sparse."""
    return sparse_clip(tmp_path_factory.mktemp("sparse") / "card.avi", "testsrc2=alpha=0")


def grab_all(path: Path) -> int:
    """Frames a file grabber delivers (unpaced, as the offline tools read) before SourceEnded."""
    grabber = open_file(path, str(path), loop=False)
    frames = 0
    try:
        with pytest.raises(SourceEnded):
            while True:
                grabber.grab()
                frames += 1
    finally:
        grabber.close()
    return frames


def test_tree_avi_plays_to_its_real_end() -> None:
    assert grab_all(clip_path("tree.avi")) == 68


def test_a_header_that_overcounts_frames_is_not_truncation(sparse: Path) -> None:
    assert grab_all(sparse) == SPARSE_FRAMES


def test_a_file_cut_short_is_still_reported(tmp_path: Path) -> None:
    tree = clip_path("tree.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(tree.read_bytes()[: tree.stat().st_size // 2])
    grabber = open_file(cut, str(cut), loop=True)  # looping must not hide it either
    try:
        with pytest.raises(SourceError, match=r"broke off after \d+ of 444 frames.*truncated"):
            for _ in range(1000):
                grabber.grab()
    finally:
        grabber.close()


def test_frames_are_paced_by_their_timestamps_not_the_header_rate(sparse: Path) -> None:
    source = open_source(file_config(sparse, width=160, height=120, loop=False))
    try:
        frames = read_until_end(source)
    finally:
        source.close()
    assert [frame.index for frame in frames] == list(range(SPARSE_FRAMES))
    # Paced by their stamps from the clock's start (a late first frame only shortens the first
    # span); at the header's 15 fps the clip would take half as long.
    times = [frame.time for frame in frames]
    assert times[-1] - times[0] >= 0.95 * (SPARSE_FRAMES - 1) * SPARSE_STEP_S, times
    # and each carries its timestamp, for the plate's clock
    stamps = [frame.media_time for frame in frames]
    assert stamps == pytest.approx([index * SPARSE_STEP_S for index in range(SPARSE_FRAMES)])


def test_media_time_is_the_files_own_and_runs_on_across_loops(sparse: Path) -> None:
    """The plate's clock for a file: its timestamps (two header frames apart here, not the
    header's 1/15 s), continued one nominal interval after the last frame when it loops."""
    grabber = open_file(sparse, str(sparse), loop=True)
    try:
        stamps = []
        for _ in range(2 * SPARSE_FRAMES):
            grabber.grab()
            stamps.append(grabber.media_s)
    finally:
        grabber.close()
    steps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    loop = SPARSE_FRAMES - 1  # the step from the last frame of a pass to the first of the next
    assert stamps[0] == 0.0
    assert steps[:loop] == pytest.approx([SPARSE_STEP_S] * loop)
    assert steps[loop] == pytest.approx(1 / 15)
    assert steps[loop + 1 :] == pytest.approx([SPARSE_STEP_S] * loop)


def test_a_looping_file_with_a_lying_header_is_never_a_lost_camera(sparse: Path) -> None:
    events = Recorder()
    config = file_config(sparse, width=160, height=120, loop=True)
    source = ResilientSource(lambda: open_source(config), config, events)
    source.start()
    try:
        frames = pump_until(source, lambda got: got and got[-1].index >= 3 * SPARSE_FRAMES)
    finally:
        source.close()
    assert events.kinds() == ["source.connected"]  # once; no source.lost at each loop's end
    assert source.reconnects == 0 and source.last_error is None
    assert frames[-1].index >= 3 * SPARSE_FRAMES


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """`edge-matte ARGS` in a child process, as an installer would run it."""
    command = [sys.executable, "-m", "edge_matte.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_plate_build_reads_a_file_with_a_lying_header(tmp_path: Path) -> None:
    room = sparse_clip(tmp_path / "room.avi", "color=c=0x506070")  # an empty, still room
    plate = tmp_path / "plate.png"
    built = run_cli("plate", "build", "--input", room, "--output", plate)
    assert built.returncode == 0, built.stderr
    assert "nothing moved" in built.stdout
    assert (
        abs(cv2.imread(str(plate)).astype(float).mean(axis=(0, 1)) - (0x70, 0x60, 0x50)).max() < 3
    )


def test_matte_reads_tree_avi_to_its_end(tmp_path: Path) -> None:
    tree = clip_path("tree.avi")
    plate, alpha = tmp_path / "plate.png", tmp_path / "alpha.avi"
    capture = cv2.VideoCapture(str(tree))
    cv2.imwrite(str(plate), capture.read()[1])  # the first frame: leaves, no hand yet
    capture.release()
    matted = run_cli("matte", "--input", tree, "--plate", plate, "--alpha", alpha)
    assert matted.returncode == 0, matted.stderr
    capture = cv2.VideoCapture(str(alpha))
    written = 0
    while capture.read()[0]:
        written += 1
    capture.release()
    assert written == 68


def test_pacing_falls_back_to_the_nominal_interval_where_stamps_cannot_be_trusted() -> None:
    timeline = Timeline(declared_frames=100, fps=10.0)
    stamps_ms = [0.0, 400.0, float("nan"), 800.0, 500.0, 9000.0, 9100.0]
    delays = [timeline.add(stamp) for stamp in stamps_ms]
    # first at once; a 0.4 s step kept; no stamp, a step back and a 8.5 s hole: 0.1 s each
    assert delays == pytest.approx([0.0, 0.4, 0.1, 0.4, 0.1, 0.1, 0.1])
    timeline.restart()
    assert timeline.add(0.0) == pytest.approx(0.1)  # a loop's first frame follows the last


@slow
def test_tree_avi_loops_live_without_a_lost_camera() -> None:
    """The real file, live: one pass takes its 29.6 s, then it must simply start again."""
    events = Recorder()
    config = file_config(clip_path("tree.avi"), loop=True)
    source = ResilientSource(lambda: open_source(config), config, events)
    source.start()
    try:
        frames = pump_until(source, lambda got: got and got[-1].index >= 68 + 5, timeout=90)
    finally:
        source.close()
    assert events.kinds() == [] and source.reconnects == 0
    assert frames[-1].index >= 73
