"""Offline tools: `edge-matte matte` (images/videos -> alpha, foreground, composite) and
`edge-matte plate build` (a recording of the room -> plate).

They reuse the daemon's engine, compositor and plate logic so what an installer sees offline is
what the appliance will do live.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge_matte.config.schema import ComposeConfig, MattingConfig, PlateConfig
from edge_matte.engine import MattingEngine
from edge_matte.errors import MediaError, SourceEnded, SourceError
from edge_matte.frames import Frame, Matte
from edge_matte.output.media import is_video, load_image
from edge_matte.plate.health import UNUSABLE, mismatch
from edge_matte.tools.progress import Progress
from edge_matte.tools.video_out import VideoWriter, check_output

if TYPE_CHECKING:
    from edge_matte.output.compose import Compositor

# -- edge-matte matte ----------------------------------------------------------------------------


def add_matte_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="image or video to matte")
    parser.add_argument("--plate", type=Path, required=True, help="image of the empty background")
    parser.add_argument(
        "--weights",
        type=Path,
        help="BackgroundMattingV2 checkpoint (default: weight-free classic engine)",
    )
    parser.add_argument(
        "--backbone-scale", type=float, default=0.25, help="base network's input scale (<= 0.5)"
    )
    parser.add_argument(
        "--refine-mode",
        choices=["full", "sampling", "thresholding"],
        default="sampling",
        help="which patches the refiner sees",
    )
    parser.add_argument(
        "--refine-sample-pixels",
        type=int,
        default=80_000,
        help="pixels refined per frame in sampling mode",
    )
    parser.add_argument(
        "--refine-threshold",
        type=float,
        default=0.1,
        help="error above which a patch is refined in thresholding mode",
    )
    parser.add_argument(
        "--resize-plate",
        action="store_true",
        help="scale the plate to the input's size if they differ",
    )
    outputs = "an image name for an image input; for a video, a video name: .mp4/.mov/.mkv (H.264), .webm (VP9), .avi (MJPEG)"
    parser.add_argument("--alpha", type=Path, help=f"write alpha (8-bit grey): {outputs}")
    parser.add_argument("--foreground", type=Path, help=f"write the foreground: {outputs}")
    parser.add_argument(
        "--composite", type=Path, help=f"write the composite (needs --background): {outputs}"
    )
    parser.add_argument("--background", help="for --composite: an image, #RRGGBB or 'blur'")


def matte_command(args: argparse.Namespace) -> int:
    if args.composite is not None and args.background is None:
        raise MediaError("--composite needs --background IMG|#RRGGBB|blur")
    if not (args.alpha or args.foreground or args.composite):
        raise MediaError("nothing to write: give --alpha, --foreground and/or --composite")
    for option in ("alpha", "foreground", "composite"):
        if getattr(args, option) is not None:
            check_output(f"--{option}", getattr(args, option), is_video(args.input))
    engine = _engine(args)
    compositor = _compositor(args.background) if args.composite else None
    frames = _read_video(args.input) if is_video(args.input) else iter([load_image(args.input)])
    writers = _Writers(args, video=is_video(args.input))
    plate = None
    fit = _PlateFit()
    failed = True
    try:
        for index, image in enumerate(frames):
            plate = (
                plate
                if plate is not None
                else _fit_plate(load_image(args.plate), image, args.resize_plate)
            )
            fit.check(index, image, plate)
            matte = engine.matte(image, plate)
            composite = compositor.composite(image, matte) if compositor else None
            writers.write(matte, composite)
            writers.progress(index)
        failed = False
    finally:
        writers.close(failed)
        engine.close()
    return 0


def _engine(args: argparse.Namespace) -> MattingEngine:
    if args.weights is None:
        from edge_matte.engine.classic import ClassicEngine

        return ClassicEngine(MattingConfig().classic)
    import torch

    from edge_matte.engine.torch_engine import TorchEngine

    config = MattingConfig(
        weights=args.weights,
        backbone_scale=args.backbone_scale,
        refine_mode=args.refine_mode,
        refine_sample_pixels=args.refine_sample_pixels,
        refine_threshold=args.refine_threshold,
    )
    return TorchEngine(config, device="cuda" if torch.cuda.is_available() else "cpu")


def _compositor(background: str) -> Compositor:
    from edge_matte.output.compose import Compositor

    if background == "blur":
        return Compositor(ComposeConfig(mode="blur"), Path.cwd())
    if background.startswith("#"):
        return Compositor(ComposeConfig(mode="replace", background=background), Path.cwd())
    path = Path(background).resolve()
    if not path.is_file():
        raise MediaError(f"background {background}: no such file")
    return Compositor(ComposeConfig(mode="replace", background=path.name), path.parent)


def _fit_plate(plate: np.ndarray, image: np.ndarray, resize: bool) -> np.ndarray:
    if plate.shape == image.shape:
        return plate
    if not resize:
        raise MediaError(
            f"plate is {plate.shape[1]}x{plate.shape[0]} but the input is {image.shape[1]}x{image.shape[0]}; "
            "pass --resize-plate to scale it"
        )
    return cv2.resize(plate, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)


class _PlateFit:
    """Warns once when the plate does not fit the input (the daemon's check, `plate.health`):
    the engine would erase the subject or keep the room, and offline no other view can be shown."""

    def __init__(self) -> None:
        self._warned = False

    def check(self, index: int, image: np.ndarray, plate: np.ndarray) -> None:
        if self._warned:
            return
        share = mismatch(image, plate)
        if share >= UNUSABLE:
            self._warned = True
            print(
                f"warning: frame {index}: {share:.0%} of it differs from the plate (> {UNUSABLE:.0%}):"
                " wrong scene, moved camera or mostly inpainted plate; its matte cannot be trusted",
                file=sys.stderr,
            )


class UnpacedFile:
    """A FrameSource over every frame of a video file, as fast as it decodes: offline tools must
    neither wait for the file's frame rate nor skip frames as the live source does."""

    def __init__(self, path: Path) -> None:
        from edge_matte.capture.opencv_source import open_file

        try:
            self._grabber = open_file(path, str(path), loop=False)
        except SourceError as err:
            raise MediaError(str(err)) from err
        self.info = self._grabber.info
        self._index = 0

    def read(self, timeout: float) -> Frame:
        image = self._grabber.grab()
        self._index += 1
        return Frame(image, self._index, time.monotonic(), self._grabber.media_s)

    def close(self) -> None:
        self._grabber.close()


def _read_video(path: Path) -> Iterator[np.ndarray]:
    source = UnpacedFile(path)
    try:
        while True:
            yield source.read(0.0).image
    except SourceEnded:
        return
    finally:
        source.close()


class _Writers:
    """Image files for an image input, videos (same fps) for a video input, with progress."""

    def __init__(self, args: argparse.Namespace, video: bool) -> None:
        self._targets = {
            "alpha": args.alpha,
            "foreground": args.foreground,
            "composite": args.composite,
        }
        self._video = video
        self._fps = _video_fps(args.input) if video else 0.0
        self._progress = Progress(_video_frames(args.input)) if video else None
        self._writers: dict[str, VideoWriter] = {}

    def write(self, matte: Matte, composite: np.ndarray | None) -> None:
        images = {
            "alpha": (np.clip(matte.alpha, 0, 1) * 255 + 0.5).astype(np.uint8),
            "foreground": matte.foreground,
            "composite": composite,
        }
        for name, path in self._targets.items():
            if path is not None and images[name] is not None:
                self._write_one(name, path, images[name])

    def _write_one(self, name: str, path: Path, image: np.ndarray) -> None:
        if not self._video:
            if not cv2.imwrite(str(path), image):
                raise MediaError(f"cannot write {path}")
            return
        if name not in self._writers:
            height, width = image.shape[:2]
            self._writers[name] = VideoWriter(path, self._fps, width, height, image.ndim == 2)
        self._writers[name].write(image)

    def progress(self, index: int) -> None:
        if self._progress is not None:
            self._progress.update(index + 1)

    def close(self, failed: bool) -> None:
        """Finish every video (or drop them all when the job failed half-way)."""
        if self._progress is not None:
            self._progress.close()
        for writer in self._writers.values():
            if failed:
                writer.abort()
            else:
                writer.close()


def _video_fps(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    capture.release()
    return fps


def _video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return count


# -- edge-matte plate build ----------------------------------------------------------------------

EXIT_PARTIAL_PLATE = 3  # the plate was written, but less of it is known than a live install needs


def add_plate_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", type=Path, required=True, help="video (or image sequence URI) of the room"
    )
    parser.add_argument("--output", type=Path, required=True, help="plate PNG to write")
    parser.add_argument("--max-frames", type=int, default=900, help="frames to read at most")


class _Counted:
    """A FrameSource that reports each frame read to a Progress."""

    def __init__(self, source: UnpacedFile, progress: Progress) -> None:
        self._source = source
        self._progress = progress
        self._frames = 0
        self.info = source.info

    def read(self, timeout: float) -> Frame:
        frame = self._source.read(timeout)
        self._frames += 1
        self._progress.update(self._frames)
        return frame

    def close(self) -> None:
        self._source.close()


def plate_build_command(args: argparse.Namespace) -> int:
    from edge_matte import atomic
    from edge_matte.plate import build_plate
    from edge_matte.plate.maker import READY_KNOWN

    source = UnpacedFile(args.input)
    total = _video_frames(args.input) if is_video(args.input) else 0
    progress = Progress(min(total, args.max_frames) if total > 0 else args.max_frames)
    try:
        plate, status = build_plate(_Counted(source, progress), PlateConfig(), args.max_frames)
    finally:
        progress.close()
        source.close()
    ok, png = cv2.imencode(".png", plate)
    if not ok:
        raise MediaError("cannot encode the plate as PNG")
    atomic.write_bytes(args.output, png.tobytes(), mode=0o644)
    known = status.get("known_fraction", 1.0)
    height, width = plate.shape[:2]
    print(
        f"{args.output}: plate {width}x{height}, {known * 100:.1f}% known, made by {status.get('method')}"
    )
    if status.get("note"):
        print(f"note: {status['note']}")
    if known < READY_KNOWN:
        print(
            f"edge-matte: warning: only {known * 100:.1f}% of the background is known "
            f"(the daemon installs a plate from {READY_KNOWN * 100:.0f}%): the rest is a guess, "
            "so record longer or while the room is emptier",
            file=sys.stderr,
        )
        return EXIT_PARTIAL_PLATE
    return 0
