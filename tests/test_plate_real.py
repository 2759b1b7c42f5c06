"""The plate on real footage: Debian opencv-doc's `vtest.avi` (a busy street, MPEG-4) and
`tree.avi` (leaves in the wind, Cinepak), against OpenCV's MOG2 measured in the same test.

Figures are mean absolute errors (8-bit levels) against the clip's per-pixel temporal median,
on every second row and column (the same measure, a quarter of the work). The clips are decoded
once per session. Skipped, with the reason, where the opencv-doc clips are not installed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from real_clips import Clip

from edge_matte.capture import scene as synth
from edge_matte.config.schema import MattingConfig, PlateConfig
from edge_matte.engine.classic import ClassicEngine
from edge_matte.events import Event
from edge_matte.frames import PlateImage
from edge_matte.plate import PlateKeeper, PlateState, build_plate

CLIPS = Path("/usr/share/doc/opencv-doc/examples/data")
pytestmark = pytest.mark.skipif(
    not (CLIPS / "vtest.avi").is_file() or not (CLIPS / "tree.avi").is_file(),
    reason=f"real clips missing: {CLIPS} (scripts/setup.sh installs opencv-doc)",
)
TREE_EMPTY = 53  # tree.avi: a hand enters at frame 53


def decode(name: str) -> tuple[list[np.ndarray], float]:
    """All frames, and their real rate: the header's duration over the frames the file holds
    (tree.avi's header claims 444 frames at 15 fps and holds 68)."""
    capture = cv2.VideoCapture(str(CLIPS / name))
    fps, claimed = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames, fps * len(frames) / max(claimed, len(frames))


@pytest.fixture(scope="session")
def vtest() -> tuple[list[np.ndarray], float]:
    return decode("vtest.avi")


@pytest.fixture(scope="session")
def tree() -> tuple[list[np.ndarray], float]:
    return decode("tree.avi")


def strided(image: np.ndarray) -> np.ndarray:
    return image[::2, ::2].astype(np.float32)


def temporal_median(frames: list[np.ndarray]) -> np.ndarray:
    return np.median(np.stack([strided(f) for f in frames]), axis=0)


def errors(plate: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean and 99th percentile of the absolute error, 8-bit levels."""
    error = np.abs(strided(plate) - reference)
    return float(error.mean()), float(np.quantile(error, 0.99))


def mog2_background(frames: list[np.ndarray]) -> np.ndarray:
    """OpenCV's MOG2 (defaults) fed every frame: its background image."""
    mog2 = cv2.createBackgroundSubtractorMOG2()
    for image in frames:
        mog2.apply(image)
    return mog2.getBackgroundImage()


def built(frames: list[np.ndarray], fps: float) -> tuple[np.ndarray, dict]:
    return build_plate(Clip(frames, fps), PlateConfig(), max_frames=len(frames))


def test_vtest_plate_converges_in_a_street_that_is_never_empty(vtest) -> None:
    frames, fps = vtest
    reference = temporal_median(frames)
    figures = {}
    for horizon in (100, 300, len(frames)):
        plate, status = built(frames[:horizon], fps)
        assert status["method"] == "per-pixel" and status["frames"] == horizon
        ours, mog2 = errors(plate, reference), errors(mog2_background(frames[:horizon]), reference)
        figures[horizon] = (ours, mog2, status["known_fraction"])
    print(figures)
    (mae, p99), (mog2_mae, _), known = figures[len(frames)]
    assert mae <= 0.35 and p99 <= 6 and mae < mog2_mae and known > 0.9  # 0.31, 2, 0.55, 0.98
    (mae, _), (mog2_mae, _), _ = figures[300]
    assert mae <= 1.5 and mae < mog2_mae  # measured 1.48, MOG2 1.61
    (mae, _), (mog2_mae, _), _ = figures[100]
    # measured 1.88 (2.13 without people evidence: a group standing 10 s was kept), MOG2 2.07
    assert mae <= 1.95 and mae < mog2_mae


def test_tree_leaves_are_background(tree) -> None:
    frames, fps = tree
    empty = frames[:TREE_EMPTY]
    plate, status = built(empty, fps)
    assert errors(plate, temporal_median(empty))[0] <= 2.2  # measured 0.94
    assert status["known_fraction"] > 0.9 and status["variability"] is not None
    engine = ClassicEngine(MattingConfig().classic)
    with_map = PlateImage.of(plate, status["variability"])
    ours = np.mean([np.mean(engine.matte(f, with_map).alpha > 0.5) for f in empty])
    without = np.mean([np.mean(engine.matte(f, plate).alpha > 0.5) for f in empty])
    mog2 = cv2.createBackgroundSubtractorMOG2()
    masks = [mog2.apply(f) for f in empty]
    mog2_share = np.mean([np.mean(m == 255) for m in masks[TREE_EMPTY // 2 :]])  # once learnt
    assert ours <= 0.018 and ours <= mog2_share  # measured 0.0, without the map 0.027
    assert ours < without
    hand = [np.mean(engine.matte(f, with_map).alpha > 0.5) for f in frames[TREE_EMPTY + 3 :]]
    assert min(hand) > 0.02  # the hand that enters is still matted (measured 6 % and more)


def test_semi_real_subjects_matted_against_the_plate_built_from_the_street(vtest) -> None:
    """Synthetic subjects with known alpha over real frames (real noise, real compression),
    matted by the classic engine with the plate built from the clip and with the clip median."""
    frames, fps = vtest
    plate, _ = built(frames[:300], fps)
    median = np.median(np.stack(frames[::8]), axis=0).astype(np.uint8)
    engine = ClassicEngine(MattingConfig().classic)
    height, width = frames[0].shape[:2]
    sprite = synth.subject(height // 2, seed=1)
    scores = {"plate": [], "median": []}
    for index in range(300, len(frames), 50):
        canvas, truth = frames[index].astype(np.float32), np.zeros((height, width), np.float32)
        x = (index * 7) % (width - sprite.size[0])
        synth.paste_over(canvas, truth, sprite, x, height - sprite.size[1])
        image = synth.to_uint8(canvas)
        far = cv2.dilate((truth > 0).astype(np.uint8), np.ones((81, 81), np.uint8)) == 0
        for name, background in (("plate", plate), ("median", median)):
            alpha = engine.matte(image, background).alpha
            near = ~far
            sad = float(np.abs(alpha - truth)[near].sum()) / 1000
            mse = float(np.mean((alpha - truth)[near] ** 2))
            scores[name].append((sad, mse, float(np.mean(alpha[far] > 0.5))))
    ours, reference = np.mean(scores["plate"], axis=0), np.mean(scores["median"], axis=0)
    print(ours, reference)
    assert ours[0] <= 1.2 * reference[0] + 0.5 and ours[1] <= 1.2 * reference[1] + 0.005
    assert ours[2] <= reference[2] + 0.005  # false foreground far from the subject


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_vtest_live_keeper_installs_a_plate_within_30_s(vtest, keep: int) -> None:
    """What the daemon does on file://vtest.avi at 10 fps (the estimates inline instead of on a
    worker thread, so the test is deterministic): a plate within 30 s, close to the clip median.
    With every 2nd or 3rd frame dropped (a loaded machine) the plate still comes after 10 s of
    the clip, as with every frame (counting frames it came at 20 s, and not in 30 s)."""
    frames, fps = vtest
    events: list[Event] = []
    keeper = PlateKeeper(PlateConfig(), None, "file://vtest.avi", events.append, fps=fps)
    source, installed = Clip(frames, fps, keep), None
    for _ in range(round(30 * fps / keep)):
        frame = source.read(0.0)
        keeper.observe(frame, None)
        if installed is None and keeper.state is PlateState.READY:
            installed = frame.media_time
    assert installed is not None and installed <= 10.0 + 2 * keep / fps  # 10.0, 10.2, 10.2
    assert keeper.state is PlateState.READY and keeper.status()["method"] == "per-pixel"
    assert [e.kind for e in events][:2] == ["plate.capturing", "plate.captured"]
    # measured 1.29 / 1.40 / 1.34 at 30 s (1.88 when installed at 10 s)
    assert errors(keeper.plate, temporal_median(frames))[0] <= 2.0
