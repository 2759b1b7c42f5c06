"""Asset loading: path confinement, header checks before decoding, format normalisation, videos."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_matte.errors import MediaError
from edge_matte.output.media import (
    VideoLoop,
    decode_image,
    is_video,
    load_image,
    read_header,
    resolve_asset,
)

CLIP_COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)]


def write_clip(
    path: Path, colours: list[tuple[int, int, int]], size: tuple[int, int] = (64, 48)
) -> Path:
    """A short MJPEG clip whose frame i is the solid colour colours[i]."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for colour in colours:
        writer.write(np.full((size[1], size[0], 3), colour, np.uint8))
    writer.release()
    return path


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def crafted_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A 1-bit greyscale PNG written by hand; `rows` < height leaves the pixel data short."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    pixels += compressor.flush()
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


@pytest.fixture
def picture() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)


@pytest.fixture
def media(tmp_path: Path, picture: np.ndarray) -> Path:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "bg.png"), picture)
    cv2.imwrite(str(root / "sub" / "inner.png"), picture)
    cv2.imwrite(str(tmp_path / "secret.png"), picture)
    return root


# -- resolve_asset ---------------------------------------------------------------------------------


def test_plain_and_nested_names_resolve_inside(media: Path) -> None:
    assert resolve_asset("bg.png", media) == (media / "bg.png").resolve()
    assert resolve_asset("sub/inner.png", media) == (media / "sub" / "inner.png").resolve()
    assert resolve_asset(str(media / "bg.png"), media) == (media / "bg.png").resolve()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../secret.png", "'..'"),
        ("sub/../../secret.png", "'..'"),
        ("../../../../../../etc/passwd", "'..'"),
        ("/etc/passwd", "outside the media directory"),
        ("bg.png\x00.jpg", "NUL"),
        ("", "empty"),
        ("missing.png", "not found"),
        ("sub", "not a regular file"),
    ],
)
def test_bad_names_are_refused(media: Path, name: str, reason: str) -> None:
    with pytest.raises(MediaError, match=reason):
        resolve_asset(name, media)


def test_absolute_paths_need_the_flag(media: Path) -> None:
    outside = media.parent / "secret.png"
    with pytest.raises(MediaError, match="outside the media directory"):
        resolve_asset(str(outside), media)
    assert resolve_asset(str(outside), media, allow_absolute=True) == outside.resolve()


def test_symlink_escaping_the_media_dir_is_refused(media: Path) -> None:
    (media / "escape.png").symlink_to(media.parent / "secret.png")
    (media / "linked_dir").symlink_to(media.parent)
    (media / "alias.png").symlink_to("bg.png")
    with pytest.raises(MediaError, match="outside the media directory"):
        resolve_asset("escape.png", media)
    with pytest.raises(MediaError, match="outside the media directory"):
        resolve_asset("linked_dir/secret.png", media)
    assert resolve_asset("alias.png", media) == (media / "bg.png").resolve()


# -- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "params"),
    [(".png", ()), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101))],  # lossless both
)
def test_lossless_formats_round_trip(
    picture: np.ndarray, ext: str, params: tuple[int, ...]
) -> None:
    decoded = decode_image(encode(picture, ext, *params))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, picture)


def test_jpeg_decodes_close_to_the_original(picture: np.ndarray) -> None:
    smooth = cv2.GaussianBlur(picture, (0, 0), 3)
    decoded = decode_image(encode(smooth, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 98))
    assert decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 2


def test_headers_report_format_and_size(picture: np.ndarray) -> None:
    for ext, name in ((".png", "png"), (".jpg", "jpeg"), (".webp", "webp")):
        header = read_header(encode(picture, ext))
        assert (header.format, header.width, header.height) == (name, 40, 30)


def test_grey_image_becomes_bgr(picture: np.ndarray) -> None:
    grey = picture[:, :, 1]
    decoded = decode_image(encode(grey, ".png"))
    assert decoded.shape == (30, 40, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], grey)


def test_alpha_is_flattened_onto_black(picture: np.ndarray) -> None:
    alpha = np.zeros((30, 40), np.uint8)
    alpha[:, :20] = 255
    alpha[:, 20:30] = 128
    decoded = decode_image(encode(np.dstack([picture, alpha]), ".png"))
    assert decoded.shape == (30, 40, 3)
    np.testing.assert_array_equal(decoded[:, :20], picture[:, :20])
    expected_half = np.rint(picture[:, 20:30] * (128 / 255)).astype(np.uint8)
    np.testing.assert_array_equal(decoded[:, 20:30], expected_half)
    assert not decoded[:, 30:].any()


def test_sixteen_bit_png_becomes_eight_bit(picture: np.ndarray) -> None:
    deep = picture.astype(np.uint16) * 257
    decoded = decode_image(encode(deep, ".png"))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, picture)


@pytest.mark.parametrize(
    "data", [b"", b"hello, not an image", b"GIF89a" + b"\x00" * 64, b"\x89PNG"]
)
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(MediaError):
        decode_image(data)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.97])
def test_truncated_images_are_refused(picture: np.ndarray, ext: str, fraction: float) -> None:
    data = encode(picture, ext)
    with pytest.raises(MediaError, match=r"truncated|corrupt"):
        decode_image(data[: int(len(data) * fraction)])


def test_png_missing_its_end_chunk_is_refused(picture: np.ndarray) -> None:
    with pytest.raises(MediaError, match="IEND"):
        decode_image(encode(picture, ".png")[:-12])


def test_crafted_png_is_a_real_image_and_a_bomb_past_the_limit() -> None:
    bomb = crafted_png(2000, 2000)
    assert len(bomb) < 5000  # 4 megapixels in a few kilobytes
    assert decode_image(bomb).shape == (2000, 2000, 3)
    with pytest.raises(MediaError, match="2000x2000 = 4000000 pixels, above the limit of 1000000"):
        decode_image(bomb, max_pixels=1_000_000)


def test_huge_png_header_is_refused_before_decoding() -> None:
    # 20000x20000 is under OpenCV's own 2^30-pixel limit: it would allocate 1.2 GB for it.
    with pytest.raises(MediaError, match="20000x20000"):
        decode_image(crafted_png(20000, 20000, rows=4))


def test_huge_jpeg_header_is_refused(picture: np.ndarray) -> None:
    data = bytearray(encode(picture, ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    with pytest.raises(MediaError, match="30000x30000"):
        decode_image(bytes(data))


def test_load_image_names_the_file(media: Path, picture: np.ndarray) -> None:
    np.testing.assert_array_equal(load_image(media / "bg.png"), picture)
    (media / "fake.png").write_bytes(b"not really a png")
    with pytest.raises(MediaError, match=r"fake.png: not a supported image"):
        load_image(media / "fake.png")
    with pytest.raises(MediaError, match=r"nope.png: cannot read"):
        load_image(media / "nope.png")
    with pytest.raises(MediaError, match="above the limit of 100"):
        load_image(media / "bg.png", max_bytes=100)


# -- video ------------------------------------------------------------------------------------------


def test_is_video_by_extension() -> None:
    assert is_video("clip.MP4") and is_video(Path("a/b.webm")) and is_video("x.avi")
    assert not is_video("still.png") and not is_video("noext")


def _colour_of(frame: np.ndarray) -> tuple[int, ...]:
    return tuple(round(v / 255) * 255 for v in frame.reshape(-1, 3).mean(axis=0))


def test_video_loops_back_to_the_first_frame(tmp_path: Path) -> None:
    loop = VideoLoop(write_clip(tmp_path / "clip.avi", CLIP_COLOURS))
    try:
        assert loop.size == (64, 48)
        seen = [_colour_of(loop.read()) for _ in range(2 * len(CLIP_COLOURS) + 1)]
    finally:
        loop.close()
    assert seen == CLIP_COLOURS * 2 + CLIP_COLOURS[:1]


def test_closed_video_repeats_its_last_frame(tmp_path: Path) -> None:
    loop = VideoLoop(write_clip(tmp_path / "clip.avi", CLIP_COLOURS))
    loop.read()
    second = loop.read()
    loop.close()
    np.testing.assert_array_equal(loop.read(), second)


def test_unreadable_videos_are_refused_at_open(tmp_path: Path, picture: np.ndarray) -> None:
    (tmp_path / "noise.mp4").write_bytes(os.urandom(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name in ("noise.mp4", "empty.mp4", "missing.mp4"):
        with pytest.raises(MediaError, match=name):
            VideoLoop(tmp_path / name)


def test_oversized_video_frames_are_refused(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", CLIP_COLOURS)
    with pytest.raises(MediaError, match="64x48 = 3072 pixels, above the limit of 1000"):
        VideoLoop(clip, max_pixels=1000)
