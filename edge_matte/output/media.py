"""Loading replacement backgrounds safely: confined paths, checked headers, looping videos.

Asset names arrive over MQTT, so a name is confined to the media directory, and an image is
only handed to OpenCV after its header has been read here: OpenCV allocates the full bitmap
from the header before decoding (a 12 KB PNG claiming 10000x10000 costs 300 MB), and its own
limit (OPENCV_IO_MAX_IMAGE_PIXELS, 2^30 by default, read once per process) is far too high
for an appliance. Only PNG, JPEG and WebP are accepted, the formats whose headers are parsed.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_matte.config.redact import shorten
from edge_matte.errors import MediaError

_LOG = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 64 * 1024 * 1024
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not SOFs.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class ImageHeader:
    """What an image file claims to be, read before decoding."""

    format: str  # "png", "jpeg" or "webp"
    width: int
    height: int


def is_video(path: Path | str) -> bool:
    """True when the file extension names a video container."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def resolve_asset(name: str, media_dir: Path, *, allow_absolute: bool = False) -> Path:
    """The real path of asset `name`, which must stay inside `media_dir` (symlinks resolved).

    Absolute paths outside the media directory are accepted only with `allow_absolute`,
    which is meant for the operator's own config file, never for names received remotely.
    """
    shown = shorten(repr(name), 100)  # names come from the network: never echoed at length
    if not name or "\x00" in name:
        raise MediaError(f"asset name {shown} is empty or contains a NUL byte")
    root = Path(media_dir).resolve()
    candidate = Path(name)
    if not candidate.is_absolute() and ".." in candidate.parts:
        raise MediaError(f"asset name {shown} must not contain '..'")
    try:
        path = (root / candidate).resolve()
        if not (allow_absolute and candidate.is_absolute()) and not path.is_relative_to(root):
            raise MediaError(f"asset {shown} is outside the media directory {root}")
        if not path.exists():
            raise MediaError(f"asset {shown} not found in {root}")
        if not path.is_file():
            raise MediaError(f"asset {shown} is not a regular file")
    except OSError as err:  # a name too long, a symlink loop
        raise MediaError(f"asset {shown} cannot be looked up: {err.strerror}") from err
    return path


def read_header(data: bytes) -> ImageHeader:
    """Format and size from the header; MediaError for unknown formats or truncated files."""
    if data.startswith(_PNG_SIGNATURE):
        return _png_header(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_header(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    raise MediaError("not a supported image (expected PNG, JPEG or WebP)")


def _png_header(data: bytes) -> ImageHeader:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise MediaError("PNG is truncated or has no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    if b"IEND" not in data[-12:]:
        raise MediaError("PNG is truncated (no IEND chunk at the end)")
    return ImageHeader("png", width, height)


def _jpeg_header(data: bytes) -> ImageHeader:
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            raise MediaError(f"JPEG is corrupt (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            # The end-of-image marker must follow the frame; an earlier one belongs to a thumbnail.
            if data.rfind(b"\xff\xd9") < pos:
                raise MediaError("JPEG is truncated (no end-of-image marker)")
            return ImageHeader("jpeg", width, height)
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    raise MediaError("JPEG is truncated (no frame header found)")


def _webp_header(data: bytes) -> ImageHeader:
    (riff_size,) = struct.unpack("<I", data[4:8])
    if len(data) < 30 or riff_size + 8 > len(data):
        raise MediaError("WebP is truncated")
    kind = data[12:16]
    if kind == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif kind == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif kind == b"VP8 ":
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
    else:
        raise MediaError(f"WebP has an unknown chunk {kind!r}")
    return ImageHeader("webp", width, height)


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse empty frames and frames above `max_pixels` (decompression bombs)."""
    if width <= 0 or height <= 0:
        raise MediaError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise MediaError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
        )


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/WebP bytes into BGR uint8 [H, W, 3], checking the header first."""
    header = read_header(data)
    check_size(header.width, header.height, max_pixels)
    # JPEG: IMREAD_COLOR applies the EXIF orientation. PNG/WebP: keep alpha to flatten it below.
    flags = cv2.IMREAD_COLOR if header.format == "jpeg" else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise MediaError(f"{header.format.upper()} data is corrupt and could not be decoded")
    return _to_bgr8(image)


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    """Grey, grey+alpha, BGRA and 16-bit images as BGR uint8; transparency becomes black."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        # The colour under transparent pixels is undefined; premultiplying makes it black.
        alpha = image[:, :, 3:].astype(np.float32) * (1.0 / 255.0)
        return np.rint(image[:, :, :3] * alpha).astype(np.uint8)
    return image


def load_image(
    path: Path, max_pixels: int = MAX_PIXELS, *, max_bytes: int = MAX_FILE_BYTES
) -> np.ndarray:
    """Read and decode an image file; MediaError names the file and the problem."""
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            raise MediaError(f"{path}: file is {size} bytes, above the limit of {max_bytes}")
        data = Path(path).read_bytes()
    except OSError as err:
        raise MediaError(f"{path}: cannot read: {err.strerror}") from err
    try:
        return decode_image(data, max_pixels)
    except MediaError as err:
        raise MediaError(f"{path}: {err}") from err


class VideoLoop:
    """A video file played in a loop, one frame per `read()` (one per composited frame).

    The file is checked when opened: it must decode at least one frame within `max_pixels`.
    If it later becomes unreadable, the last good frame is repeated rather than failing the
    pipeline, and a warning is logged.
    """

    def __init__(self, path: Path, max_pixels: int = MAX_PIXELS) -> None:
        # Absolute, so FFmpeg never reads a leading "name:" as a protocol (http:, concat:, ...).
        self.path = Path(path).absolute()
        capture = self._open()
        try:
            width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            check_size(width, height, max_pixels)
            ok, first = capture.read()
            if not ok:
                raise MediaError("not a readable video (no frame decoded)")
        except MediaError as err:
            capture.release()
            raise MediaError(f"{self.path}: {err}") from err
        self._capture: cv2.VideoCapture | None = capture
        self._pending: np.ndarray | None = first
        self._last: np.ndarray = first

    def _open(self) -> cv2.VideoCapture:
        # FFmpeg takes the name as a file; CAP_ANY could read "%d" in it as an image sequence.
        api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        capture = cv2.VideoCapture(str(self.path), api)
        if not capture.isOpened():
            capture.release()
            raise MediaError(f"{self.path}: cannot open as a video")
        return capture

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return self._last.shape[1], self._last.shape[0]

    def read(self) -> np.ndarray:
        """The next frame (BGR uint8), starting again from the first after the last."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        if self._capture is not None:
            ok, image = self._capture.read()
            frame = image if ok else self._restart()
            if frame is not None:
                self._last = frame
        return self._last

    def _restart(self) -> np.ndarray | None:
        """Reopen at the start (more reliable than seeking with every codec); None if gone."""
        self.close()
        try:
            self._capture = self._open()
            ok, frame = self._capture.read()
            if not ok:
                raise MediaError(f"{self.path}: no frame after restarting")
        except MediaError as err:
            _LOG.warning("video background stopped, repeating its last frame: %s", err)
            self.close()
            return None
        return frame

    def close(self) -> None:
        """Release the decoder; `read()` then repeats the last frame."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None
