"""Offline outputs: the container and codec come from the file name, checked before any work.

`.mp4`/`.m4v`/`.mov` get H.264 (yuv420p, faststart) in MP4/QuickTime, which browsers and Home
Assistant's media player play; `.mkv` H.264 in Matroska; `.webm` VP9; `.avi` Motion JPEG. Encoding
goes through the ffmpeg command line (scripts/setup.sh installs it; the libx264 build), fed raw
frames on a pipe, writing a temp file beside the target that replaces it only once complete.
Image names (`.png`, `.jpg`, ...) are for image inputs; a video input with an image name, or an
image input with a video name, is refused with a message that says what to use instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edge_matte.errors import MediaError

# suffix -> (ffmpeg muxer, encoder arguments)
VIDEO_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    ".mp4": ("mp4", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart")),
    ".m4v": ("mp4", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart")),
    ".mov": ("mov", ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart")),
    ".mkv": ("matroska", ("-c:v", "libx264", "-pix_fmt", "yuv420p")),
    ".webm": ("webm", ("-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-b:v", "0", "-crf", "30")),
    ".avi": ("avi", ("-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-q:v", "3")),
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_QUALITY = ("-preset", "veryfast", "-crf", "18")  # x264: visually lossless, quick
_EVEN = "pad=ceil(iw/2)*2:ceil(ih/2)*2"  # yuv420p needs even sizes


def check_output(option: str, path: Path, video_input: bool) -> None:
    """MediaError unless `path`'s name suits the input (a video for a video, an image for an image)."""
    suffix = path.suffix.lower()
    if video_input and suffix not in VIDEO_FORMATS:
        kind = "an image" if suffix in IMAGE_SUFFIXES else f"an unknown ({suffix or 'no'}) format"
        raise MediaError(
            f"{option} {path}: the input is a video, so the output must be one too "
            f"({', '.join(VIDEO_FORMATS)}), not {kind}"
        )
    if not video_input and suffix not in IMAGE_SUFFIXES:
        kind = "a video" if suffix in VIDEO_FORMATS else f"an unknown ({suffix or 'no'}) format"
        raise MediaError(
            f"{option} {path}: the input is an image, so the output must be one too "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}), not {kind}"
        )


class VideoWriter:
    """Frames (BGR or grey uint8, all one size) -> a video file named by `path`'s suffix."""

    def __init__(self, path: Path, fps: float, width: int, height: int, grey: bool) -> None:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise MediaError("ffmpeg is not installed (scripts/setup.sh installs it)")
        muxer, codec = VIDEO_FORMATS[path.suffix.lower()]
        self._path = path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        command = [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "gray" if grey else "bgr24",
            "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-",
            "-an", "-vf", _EVEN, *codec, *(_QUALITY if "libx264" in codec else ()),
            "-f", muxer, str(self._tmp),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )

    def write(self, image: np.ndarray) -> None:
        if self._process.stdin is None:  # stdin=PIPE: never, but Popen's type cannot say so
            raise MediaError("no pipe to ffmpeg")
        try:
            self._process.stdin.write(np.ascontiguousarray(image).tobytes())
        except BrokenPipeError:
            self.close()  # raises with ffmpeg's own message

    def close(self) -> None:
        """Finish the file and put it in place; MediaError (and no file) if ffmpeg failed."""
        if self._process.stdin and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        error = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
        code = self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        if code != 0:
            self._tmp.unlink(missing_ok=True)
            raise MediaError(f"encoding {self._path} failed: {' '.join(error.split()) or code}")
        if self._tmp.exists():
            self._tmp.chmod(0o644)
            self._tmp.replace(self._path)

    def abort(self) -> None:
        """Stop encoding and leave no file behind (an earlier failure)."""
        self._process.kill()
        self._process.wait()
        self._tmp.unlink(missing_ok=True)
