"""Compositing: the subject over a new background, plus the alpha, debug and no-signal views.

The composite is out = a*F + (1-a)*B with F the engine's foreground, not the raw source: the
source still carries colour spill from the old background along hair and edges, and that spill
would show as a fringe over the new background. The replacement can be swapped while frames
flow: `update()` loads the new asset completely on the caller's thread and only then swaps it
in under the lock `composite()` holds, so no frame ever sees a half-prepared background.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge_matte.config.schema import ComposeConfig
from edge_matte.frames import Matte
from edge_matte.output.media import VideoLoop, is_video, load_image, resolve_asset

_LOG = logging.getLogger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE = (255, 255, 255)
_BLUR_MIN_WEIGHT = 1e-3  # below this much background nearby, the subject covers the pixel anyway
_PRIVACY_SIGMA = 1 / 40  # of the frame width: the until-ready blur
_PRIVACY_FACTOR = 8  # the until-ready blur runs at 1/8 size


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fill width x height with its aspect ratio kept, centre-cropped."""
    src_h, src_w = image.shape[:2]
    scale = max(width / src_w, height / src_h)
    crop_w = min(src_w, max(1, round(width / scale)))
    crop_h = min(src_h, max(1, round(height / scale)))
    x, y = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(
        image[y : y + crop_h, x : x + crop_w], (width, height), interpolation=interpolation
    )


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#RRGGBB' as an OpenCV (B, G, R) tuple."""
    red, green, blue = (int(text[i : i + 2], 16) for i in (1, 3, 5))
    return blue, green, red


class Backdrop(Protocol):
    """A replacement background, rendered at the frame size."""

    def frame(self, width: int, height: int) -> np.ndarray:
        """BGR uint8 [H, W, 3]; owned by the backdrop, callers must not modify it."""
        ...

    def close(self) -> None: ...


class StillBackdrop:
    """An image (or a 1x1 colour) scaled to cover; rescaled only when the frame size changes."""

    def __init__(self, image: np.ndarray) -> None:
        self._image = image
        self._scaled: np.ndarray | None = None

    def frame(self, width: int, height: int) -> np.ndarray:
        if self._scaled is None or self._scaled.shape[:2] != (height, width):
            self._scaled = cover(self._image, width, height)
        return self._scaled

    def close(self) -> None:
        """Nothing to release."""


class VideoBackdrop:
    """A looping video, one frame per call, scaled to cover."""

    def __init__(self, loop: VideoLoop) -> None:
        self._loop = loop

    def frame(self, width: int, height: int) -> np.ndarray:
        return cover(self._loop.read(), width, height)

    def close(self) -> None:
        self._loop.close()


def open_backdrop(
    background: str, media_dir: Path, *, allow_absolute: bool = False
) -> StillBackdrop | VideoBackdrop:
    """Load a '#RRGGBB' colour, or an image or video asset, fully; MediaError if unusable."""
    if background.startswith("#"):
        return StillBackdrop(np.array([[parse_colour(background)]], np.uint8))
    path = resolve_asset(background, media_dir, allow_absolute=allow_absolute)
    if is_video(path):
        return VideoBackdrop(VideoLoop(path))
    return StillBackdrop(load_image(path))


class _Buffers:
    """Scratch arrays reused while the frame shape stays the same."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._arrays[name] = np.empty(shape, dtype)
        return array


@dataclass(frozen=True)
class _State:
    config: ComposeConfig
    backdrop: Backdrop


class Compositor:
    """Composites mattes onto the configured background; `update()` may run on another thread.

    The initial config comes from the operator's file, so absolute asset paths are allowed
    there by default; `update()` confines assets to `media_dir` unless told otherwise.
    """

    def __init__(
        self, config: ComposeConfig, media_dir: Path, *, allow_absolute: bool = True
    ) -> None:
        self._media_dir = Path(media_dir)
        self._lock = threading.Lock()  # guards _state, _size and the buffers
        self._update_lock = threading.Lock()  # one update at a time: each retires what it replaced
        self._buffers = _Buffers()
        self._size: tuple[int, int] | None = None
        backdrop = open_backdrop(config.background, self._media_dir, allow_absolute=allow_absolute)
        self._state = _State(config, backdrop)

    @property
    def config(self) -> ComposeConfig:
        """The settings in effect."""
        return self._state.config

    def update(self, config: ComposeConfig, *, allow_absolute: bool = False) -> None:
        """Switch settings live; on MediaError the previous background stays in use.

        An unchanged `background` keeps the loaded asset (a video carries on playing); a new one
        is loaded and scaled to the current frame size before the swap, so the swap is instant.
        Pass `allow_absolute=True` only for settings read from the operator's config file.
        """
        with self._update_lock:
            current = self._state
            backdrop = current.backdrop
            if config.background != current.config.background:
                backdrop = open_backdrop(
                    config.background, self._media_dir, allow_absolute=allow_absolute
                )
                if self._size is not None:
                    backdrop.frame(*self._size)
            with self._lock:
                self._state = _State(config, backdrop)
            if backdrop is not current.backdrop:
                current.backdrop.close()
        _LOG.info("compositing: mode %s, background %s", config.mode, config.background)

    def background(self, width: int, height: int) -> np.ndarray:
        """A copy of the current replacement background (for idle and no-signal frames)."""
        with self._lock:
            return self._state.backdrop.frame(width, height).copy()

    def until_ready(self, image: np.ndarray, view: str) -> np.ndarray:
        """What viewers see while nothing can be matted (`plate.until_ready`): "replacement"
        (the background alone), "blur" (the room past recognition) or "room" (as it is)."""
        if view == "room":
            return image
        if view == "blur":
            return privacy_blur(image)
        return self.background(image.shape[1], image.shape[0])

    def composite(self, image: np.ndarray, matte: Matte) -> np.ndarray:
        """The output frame (a new BGR uint8 array) for `image` and its matte."""
        _check_shapes(image, matte)
        height, width = image.shape[:2]
        alpha = np.ascontiguousarray(matte.alpha, dtype=np.float32)
        with self._lock:
            self._size = (width, height)
            config = self._state.config
            if config.mode == "passthrough":
                return image.copy()
            if config.mode == "blur":
                background = self._blurred(image, alpha, config.blur_sigma)
            else:
                background = self._state.backdrop.frame(width, height)
            inverse = self._buffers.get("inverse", alpha.shape, np.float32)
            np.subtract(1.0, alpha, out=inverse)
            # Per-pixel (a*F + (1-a)*B) / (a + (1-a) + 1e-5), rounded: exact at a = 0 and a = 1.
            return cv2.blendLinear(matte.foreground, background, alpha, inverse)

    def _blurred(self, image: np.ndarray, alpha: np.ndarray, sigma: float) -> np.ndarray:
        """The frame's background blurred, with the subject's own pixels left out.

        A normalised blur, G((1-a)*I) / G(1-a), so the subject does not smear a halo into the
        background around it. Computed at a reduced size (the result is smooth at the scale of
        sigma anyway): a sigma-15 Gaussian at full 720p costs ~30 ms here, this ~3 ms.
        """
        height, width = image.shape[:2]
        factor = max(1, int(sigma // 3))
        small_size = (max(1, width // factor), max(1, height // factor))
        small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA).astype(np.float32)
        weight = 1.0 - cv2.resize(alpha, small_size, interpolation=cv2.INTER_AREA)
        small_sigma = sigma / factor
        numerator: np.ndarray = cv2.GaussianBlur(small * weight[:, :, None], (0, 0), small_sigma)
        denominator = cv2.GaussianBlur(weight, (0, 0), small_sigma)
        numerator /= np.maximum(denominator, _BLUR_MIN_WEIGHT)[:, :, None]
        blurred = self._buffers.get("blurred", image.shape, np.uint8)
        small_result = np.clip(numerator, 0, 255).round().astype(np.uint8)
        return cv2.resize(
            small_result, (width, height), dst=blurred, interpolation=cv2.INTER_LINEAR
        )

    def close(self) -> None:
        """Release the background (a video decoder)."""
        with self._update_lock:
            self._state.backdrop.close()


def privacy_blur(image: np.ndarray) -> np.ndarray:
    """The whole frame blurred so that faces and writing cannot be made out: a Gaussian with
    sigma 1/40 of the frame width (32 px at 720p, where a face is ~100 px wide), computed at 1/8
    size (the result is smooth at that scale anyway) and scaled back."""
    height, width = image.shape[:2]
    small_size = (max(1, width // _PRIVACY_FACTOR), max(1, height // _PRIVACY_FACTOR))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    sigma = width * _PRIVACY_SIGMA / _PRIVACY_FACTOR
    small = cv2.GaussianBlur(small, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _check_shapes(image: np.ndarray, matte: Matte) -> None:
    if matte.alpha.shape != image.shape[:2] or matte.foreground.shape != image.shape:
        raise ValueError(
            f"matte does not fit the image: image {image.shape}, alpha {matte.alpha.shape}, "
            f"foreground {matte.foreground.shape}"
        )


def alpha_view(matte: Matte) -> np.ndarray:
    """The alpha matte as a grey BGR uint8 image (white = subject)."""
    return _grey_bgr(matte.alpha)


def _grey_bgr(alpha: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.convertScaleAbs(alpha, alpha=255.0), cv2.COLOR_GRAY2BGR)


def debug_view(
    image: np.ndarray, matte: Matte, composite: np.ndarray, timings: dict[str, float]
) -> np.ndarray:
    """Source | alpha | composite side by side, with the stage timings, at the source's size.

    Each panel is a third of the width (aspect kept) along the top; the timings in ms are
    written below. The output has the source's size so it streams like the composite.
    Panels are scaled bilinearly: INTER_AREA at a non-integer factor costs ~4 ms a panel at 720p.
    """
    height, width = image.shape[:2]
    size = (width // 3, max(1, round(height * (width // 3) / width)))
    canvas = np.zeros_like(image)
    panels = (image, matte.alpha, composite)
    for column, panel in enumerate(panels):
        small = cv2.resize(panel, size, interpolation=cv2.INTER_LINEAR)
        x = column * size[0]
        canvas[: size[1], x : x + size[0]] = small if small.ndim == 3 else _grey_bgr(small)
    lines = [f"engine {matte.engine}", *(f"{name} {ms:.1f} ms" for name, ms in timings.items())]
    scale = max(0.4, width / 1280)
    line_h = int(32 * scale)
    for row, line in enumerate(lines):
        origin = (int(12 * scale), size[1] + line_h * (row + 1))
        cv2.putText(
            canvas, line, origin, _FONT, scale, _WHITE, max(1, round(scale * 1.5)), cv2.LINE_AA
        )
    return canvas


def no_signal(background: np.ndarray, text: str) -> np.ndarray:
    """A 'NO SIGNAL' card with `text` under it, over the darkened replacement background."""
    card = cv2.convertScaleAbs(background, alpha=0.3)
    height, width = card.shape[:2]
    scale = width / 480
    _put_centred(card, "NO SIGNAL", height // 2, scale, max(2, round(scale * 2.5)))
    _put_centred(card, text, height // 2 + int(40 * scale), scale * 0.35, max(1, round(scale)))
    return card


def _put_centred(
    canvas: np.ndarray, text: str, baseline: int, scale: float, thickness: int
) -> None:
    """Draw `text` centred horizontally, shrunk to fit 90% of the width."""
    (text_w, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    limit = 0.9 * canvas.shape[1]
    if text_w > limit:
        scale *= limit / text_w
        (text_w, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    x = (canvas.shape[1] - text_w) // 2
    cv2.putText(canvas, text, (x, baseline), _FONT, scale, _WHITE, thickness, cv2.LINE_AA)
