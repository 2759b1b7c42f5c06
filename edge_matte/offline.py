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

import cv2
import numpy as np

from .config import ComposeConfig, MattingConfig, PlateConfig
from .engine import MattingEngine
from .errors import MediaError, SourceEnded, SourceError
from .frames import Frame, Matte
from .media import is_video, load_image

# -- edge-matte matte ----------------------------------------------------------------------------


def add_matte_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="image or video to matte")
    parser.add_argument("--plate", type=Path, required=True, help="image of the empty background")
    parser.add_argument(
        "--weights",
        type=Path,
        help="BackgroundMattingV2 checkpoint (default: weight-free classic engine)",
    )
    parser.add_argument("--backbone-scale", type=float, default=0.25)
    parser.add_argument(
        "--refine-mode", choices=["full", "sampling", "thresholding"], default="sampling"
    )
    parser.add_argument("--refine-sample-pixels", type=int, default=80_000)
    parser.add_argument("--refine-threshold", type=float, default=0.1)
    parser.add_argument(
        "--resize-plate",
        action="store_true",
        help="scale the plate to the input's size if they differ",
    )
    parser.add_argument(
        "--alpha", type=Path, help="write alpha (8-bit grey PNG, or a video for video input)"
    )
    parser.add_argument("--foreground", type=Path, help="write the foreground")
    parser.add_argument("--composite", type=Path, help="write the composite (needs --background)")
    parser.add_argument("--background", help="for --composite: an image, #RRGGBB or 'blur'")


def matte_command(args: argparse.Namespace) -> int:
    if args.composite is not None and args.background is None:
        raise MediaError("--composite needs --background IMG|#RRGGBB|blur")
    if not (args.alpha or args.foreground or args.composite):
        raise MediaError("nothing to write: give --alpha, --foreground and/or --composite")
    engine = _engine(args)
    compositor = _compositor(args.background) if args.composite else None
    frames = _read_video(args.input) if is_video(args.input) else iter([load_image(args.input)])
    writers = _Writers(args, video=is_video(args.input))
    plate = None
    try:
        for index, image in enumerate(frames):
            plate = (
                plate
                if plate is not None
                else _fit_plate(load_image(args.plate), image, args.resize_plate)
            )
            matte = engine.matte(image, plate)
            composite = compositor.composite(image, matte) if compositor else None
            writers.write(matte, composite)
            writers.progress(index)
    finally:
        writers.close()
        engine.close()
    return 0


def _engine(args: argparse.Namespace) -> MattingEngine:
    if args.weights is None:
        from .engine.classic import ClassicEngine

        return ClassicEngine(MattingConfig().classic)
    import torch

    from .engine.torch_engine import TorchEngine

    config = MattingConfig(
        weights=args.weights,
        backbone_scale=args.backbone_scale,
        refine_mode=args.refine_mode,
        refine_sample_pixels=args.refine_sample_pixels,
        refine_threshold=args.refine_threshold,
    )
    return TorchEngine(config, device="cuda" if torch.cuda.is_available() else "cpu")


def _compositor(background: str):
    from .compose import Compositor

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


class UnpacedFile:
    """A FrameSource over every frame of a video file, as fast as it decodes: offline tools must
    neither wait for the file's frame rate nor skip frames as the live source does."""

    def __init__(self, path: Path) -> None:
        from .capture.opencv_source import open_file

        try:
            self._grabber = open_file(path, str(path), loop=False)
        except SourceError as err:
            raise MediaError(str(err)) from err
        self.info = self._grabber.info
        self._index = 0

    def read(self, timeout: float) -> Frame:
        image = self._grabber.grab()
        self._index += 1
        return Frame(image=image, index=self._index, time=time.monotonic())

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
    """PNG files for an image input, videos (same fps) for a video input."""

    def __init__(self, args: argparse.Namespace, video: bool) -> None:
        self._targets = {
            "alpha": args.alpha,
            "foreground": args.foreground,
            "composite": args.composite,
        }
        self._video = video
        self._fps = _video_fps(args.input) if video else 0.0
        self._total = _video_frames(args.input) if video else 1
        self._writers: dict[str, cv2.VideoWriter] = {}

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
            writer = cv2.VideoWriter(
                str(path),
                cv2.VideoWriter_fourcc(*"mp4v"),
                self._fps,
                (image.shape[1], image.shape[0]),
                image.ndim == 3,
            )
            if not writer.isOpened():
                raise MediaError(f"cannot open {path} for writing (use .mp4 or .avi)")
            self._writers[name] = writer
        self._writers[name].write(image)

    def progress(self, index: int) -> None:
        if not self._video:
            return
        done = index + 1
        width = 30
        filled = int(width * min(done / max(self._total, 1), 1.0))
        print(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self._total} frames",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        for writer in self._writers.values():
            writer.release()
        if self._video:
            print(file=sys.stderr)


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


def plate_build_command(args: argparse.Namespace) -> int:
    from . import atomic
    from .plate import build_plate
    from .plate.maker import READY_KNOWN

    source = UnpacedFile(args.input)
    try:
        plate, status = build_plate(source, PlateConfig(), args.max_frames)
    finally:
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
