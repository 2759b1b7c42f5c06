"""Compositing on synthetic inputs whose correct output can be computed exactly."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_media import CLIP_COLOURS, write_clip

from edge_matte.config.schema import ComposeConfig
from edge_matte.errors import MediaError
from edge_matte.frames import Matte
from edge_matte.output.compose import (
    Compositor,
    alpha_view,
    cover,
    debug_view,
    no_signal,
    parse_colour,
)

H, W = 48, 64
BLUE = "#1e5aa0"


def scene(alpha: float | np.ndarray, seed: int = 0) -> tuple[np.ndarray, Matte]:
    """A random source and a matte whose foreground deliberately differs from the source."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    foreground = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha_map = np.broadcast_to(np.float32(alpha), (H, W)).astype(np.float32)
    return image, Matte(alpha_map, foreground, "test")


def compositor(tmp_path: Path, **settings: object) -> Compositor:
    return Compositor(ComposeConfig(**settings), tmp_path)


@pytest.fixture
def photo(tmp_path: Path) -> np.ndarray:
    """A 4:1 panorama saved as tmp_path/photo.png: x-gradient in blue, y-gradient in green."""
    x = np.linspace(0, 255, 400, dtype=np.float32)
    y = np.linspace(0, 255, 100, dtype=np.float32)
    image = np.zeros((100, 400, 3), np.uint8)
    image[:, :, 0] = np.round(x)[None, :]
    image[:, :, 1] = np.round(y)[:, None]
    image[:, :, 2] = 200
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    return image


# -- replace ----------------------------------------------------------------------------------------


def test_colour_background_where_alpha_is_zero(tmp_path: Path) -> None:
    image, matte = scene(0.0)
    out = compositor(tmp_path, background=BLUE).composite(image, matte)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out == np.array(parse_colour(BLUE), np.uint8)).all()
    assert parse_colour(BLUE) == (0xA0, 0x5A, 0x1E)


def test_foreground_not_source_where_alpha_is_one(tmp_path: Path) -> None:
    image, matte = scene(1.0)
    out = compositor(tmp_path, background=BLUE).composite(image, matte)
    np.testing.assert_array_equal(out, matte.foreground)
    assert (out != image).any()


def test_half_alpha_mixes_foreground_and_background(tmp_path: Path) -> None:
    image, matte = scene(0.5)
    out = compositor(tmp_path, background="#000000").composite(image, matte)
    expected = matte.foreground.astype(np.float64) * 0.5
    assert np.abs(out - expected).max() <= 1


def test_graded_alpha_follows_the_formula(tmp_path: Path, photo: np.ndarray) -> None:
    ramp = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    image, matte = scene(ramp)
    out = compositor(tmp_path, background="photo.png").composite(image, matte)
    background = cover(photo, W, H).astype(np.float64)
    a = ramp[:, :, None]
    expected = a * matte.foreground + (1 - a) * background
    assert np.abs(out - expected).max() <= 1


def test_image_background_is_the_covered_photo(tmp_path: Path, photo: np.ndarray) -> None:
    image, matte = scene(0.0)
    out = compositor(tmp_path, background="photo.png").composite(image, matte)
    np.testing.assert_array_equal(out, cover(photo, W, H))


def test_cover_fills_and_keeps_the_aspect_ratio() -> None:
    source = np.full((100, 400, 3), 50, np.uint8)
    cv2.circle(source, (200, 50), 40, (255, 255, 255), -1)
    source[:, :, 0] = np.arange(400, dtype=np.uint16)[None, :] * 255 // 399
    out = cover(source, 200, 200)
    assert out.shape == (200, 200, 3)
    assert (out[:, :, 2] >= 50).all()  # filled edge to edge, no letterbox bars
    rows, cols = np.nonzero(out[:, :, 2] > 150)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(height - 160) <= 2 and abs(width - 160) <= 2  # the circle is still round, scaled x2
    # The centre 100 columns of the source, scaled x2: output column j shows source x = 150 + j/2.
    expected = (150 + np.arange(200) / 2 - 0.25) * 255 / 399
    assert np.abs(out[100, :, 0] - expected).max() <= 1.5


def test_cover_of_a_tall_image_crops_top_and_bottom() -> None:
    tall = np.zeros((300, 100, 3), np.uint8)
    tall[100:200] = 255
    np.testing.assert_array_equal(cover(tall, 50, 50), np.full((50, 50, 3), 255, np.uint8))


def test_video_background_advances_per_frame_and_loops(tmp_path: Path) -> None:
    write_clip(tmp_path / "loop.avi", CLIP_COLOURS)
    comp = compositor(tmp_path, background="loop.avi")
    image, matte = scene(0.0)
    seen = []
    for _ in range(len(CLIP_COLOURS) + 2):
        mean = comp.composite(image, matte).reshape(-1, 3).mean(axis=0)
        seen.append(tuple(round(v / 255) * 255 for v in mean))
    comp.close()
    assert seen == CLIP_COLOURS + CLIP_COLOURS[:2]


# -- blur and passthrough ---------------------------------------------------------------------------


def textured_room(height: int = 180, width: int = 320) -> np.ndarray:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def test_blur_with_no_subject_is_the_blurred_frame(tmp_path: Path) -> None:
    room = textured_room()
    matte = Matte(np.zeros(room.shape[:2], np.float32), room, "test")
    out = compositor(tmp_path, mode="blur", blur_sigma=12).composite(room, matte)
    reference = cv2.GaussianBlur(room, (0, 0), 12)
    assert np.abs(out.astype(int) - reference).mean() < 1.0
    assert np.abs(out.astype(int) - room).mean() > 10  # it really is blurred


def test_blur_keeps_the_subject_out_of_the_background(tmp_path: Path) -> None:
    room = np.full((180, 320, 3), 60, np.uint8)
    image = room.copy()
    alpha = np.zeros((180, 320), np.float32)
    alpha[60:120, 140:180] = 1.0
    image[alpha > 0] = 250  # a bright subject
    matte = Matte(alpha, image, "test")
    out = compositor(tmp_path, mode="blur", blur_sigma=12).composite(image, matte)
    np.testing.assert_array_equal(out[alpha > 0], image[alpha > 0])
    ring = cv2.dilate(alpha, np.ones((21, 21), np.uint8)) - alpha > 0  # background next to it
    assert np.abs(out[ring].astype(int) - 60).max() <= 2  # no halo
    naive = cv2.GaussianBlur(image, (0, 0), 12)
    assert naive[ring].mean() > 90  # what a plain blur would have smeared in
    far = (slice(0, 20), slice(0, 60))
    np.testing.assert_allclose(out[far], naive[far], atol=1)  # away from the subject: same blur


def test_passthrough_returns_the_source(tmp_path: Path) -> None:
    image, matte = scene(0.3)
    out = compositor(tmp_path, mode="passthrough").composite(image, matte)
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_mismatched_matte_is_refused(tmp_path: Path) -> None:
    image, matte = scene(0.5)
    small = Matte(matte.alpha[:10], matte.foreground, "test")
    with pytest.raises(ValueError, match="does not fit"):
        compositor(tmp_path).composite(image, small)


# -- live updates -----------------------------------------------------------------------------------


def test_update_switches_mode_and_background(tmp_path: Path, photo: np.ndarray) -> None:
    comp = compositor(tmp_path, background=BLUE)
    image, matte = scene(0.0)
    comp.update(ComposeConfig(background="photo.png"))
    np.testing.assert_array_equal(comp.composite(image, matte), cover(photo, W, H))
    comp.update(ComposeConfig(mode="passthrough", background="photo.png"))
    np.testing.assert_array_equal(comp.composite(image, matte), image)
    assert comp.config.mode == "passthrough"


@pytest.mark.parametrize(
    "bad", ["junk.png", "truncated.png", "../outside.png", "missing.png", "noise.mp4"]
)
def test_bad_asset_keeps_the_old_one(tmp_path: Path, photo: np.ndarray, bad: str) -> None:
    media = tmp_path / "media"
    media.mkdir()
    cv2.imwrite(str(media / "photo.png"), photo)
    cv2.imwrite(str(tmp_path / "outside.png"), photo)
    (media / "junk.png").write_bytes(b"this is not an image")
    (media / "truncated.png").write_bytes((media / "photo.png").read_bytes()[:200])
    (media / "noise.mp4").write_bytes(np.random.default_rng(3).bytes(2048))
    comp = Compositor(ComposeConfig(background="photo.png"), media)
    image, matte = scene(0.4)
    before = comp.composite(image, matte).tobytes()
    with pytest.raises(MediaError):
        comp.update(ComposeConfig(background=bad))
    assert comp.composite(image, matte).tobytes() == before
    assert comp.config.background == "photo.png"


def test_absolute_paths_only_from_the_operator(tmp_path: Path, photo: np.ndarray) -> None:
    media = tmp_path / "media"
    media.mkdir()
    absolute = str(tmp_path / "photo.png")
    comp = Compositor(ComposeConfig(background=absolute), media)  # the config file may name it
    comp.update(ComposeConfig(mode="blur", background=absolute))  # unchanged asset: kept
    comp.update(ComposeConfig(background=BLUE))
    with pytest.raises(MediaError, match="outside the media directory"):
        comp.update(ComposeConfig(background=absolute))
    comp.update(ComposeConfig(background=absolute), allow_absolute=True)
    np.testing.assert_array_equal(comp.background(W, H), cover(photo, W, H))


def test_update_is_atomic_while_compositing(tmp_path: Path, photo: np.ndarray) -> None:
    """Every frame composited during many swaps shows exactly one of the two backgrounds."""
    comp = compositor(tmp_path, background=BLUE)
    image, matte = scene(0.0)
    expected = {
        cover(np.array([[parse_colour(BLUE)]], np.uint8), W, H).tobytes(),
        cover(photo, W, H).tobytes(),
    }
    outputs: list[bytes] = []
    stop = threading.Event()

    def pipeline() -> None:
        while not stop.is_set():
            outputs.append(comp.composite(image, matte).tobytes())

    thread = threading.Thread(target=pipeline)
    thread.start()
    try:
        for _ in range(50):
            comp.update(ComposeConfig(background="photo.png"))
            comp.update(ComposeConfig(background=BLUE))
    finally:
        stop.set()
        thread.join(10)
    assert outputs and set(outputs) <= expected


def test_background_is_a_copy_of_the_replacement(tmp_path: Path, photo: np.ndarray) -> None:
    comp = compositor(tmp_path, background="photo.png")
    first = comp.background(W, H)
    first[:] = 0
    np.testing.assert_array_equal(comp.background(W, H), cover(photo, W, H))


# -- views ------------------------------------------------------------------------------------------


def test_alpha_view_is_grey_alpha(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    view = alpha_view(scene(ramp)[1])
    assert view.shape == (H, W, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(view[:, :, 0], view[:, :, 2])
    np.testing.assert_array_equal(view[:, :, 1], np.rint(ramp * 255).astype(np.uint8))


def test_debug_view_panels_and_timings() -> None:
    height, width = 360, 640
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = np.zeros((height, width), np.float32)
    alpha[90:270, 200:440] = 1.0
    matte = Matte(alpha, image, "classic")
    composite = 255 - image
    view = debug_view(image, matte, composite, {"capture": 1.5, "infer": 20.25})
    assert view.shape == image.shape
    panel = (213, 120)  # a third of the width, aspect kept
    np.testing.assert_array_equal(
        view[:120, :213], cv2.resize(image, panel, interpolation=cv2.INTER_LINEAR)
    )
    alpha_panel = cv2.resize(alpha, panel, interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(
        view[:120, 213:426, 1], cv2.convertScaleAbs(alpha_panel, alpha=255.0)
    )
    np.testing.assert_array_equal(
        view[:120, 426:639], cv2.resize(composite, panel, interpolation=cv2.INTER_LINEAR)
    )
    text = view[120:]
    assert (text > 200).sum() > 200  # three lines of white text under the panels
    with_more = debug_view(image, matte, composite, {"capture": 1.5, "infer": 20.25, "output": 3.0})
    assert (with_more[120:] > 200).sum() > (text > 200).sum()


def test_no_signal_card_darkens_and_writes(tmp_path: Path, photo: np.ndarray) -> None:
    background = compositor(tmp_path, background="photo.png").background(640, 360)
    original = background.copy()
    card = no_signal(background, "csi://0: camera unplugged")
    np.testing.assert_array_equal(background, original)  # input untouched
    assert card.shape == background.shape
    corner = (slice(0, 40), slice(0, 40))
    assert card[corner].astype(int).mean() < 0.5 * background[corner].astype(int).mean()
    title, detail = card[100:185], card[190:]
    assert (title.min(axis=2) > 240).sum() > 2000  # big white "NO SIGNAL" lettering
    without_text = no_signal(background, "")
    np.testing.assert_array_equal(title, without_text[100:185])
    # the detail line is drawn under it (thin anti-aliased strokes: OpenCV 4 keeps few of
    # them above 240, 28 here; OpenCV 5 draws them whiter)
    assert (detail.min(axis=2) > 200).sum() > 200
    assert not (without_text[190:].min(axis=2) > 200).any()
