"""BackgroundMattingV2 on torch: OpenCV BGR uint8 frame and plate in, `Matte` out.

CPU runs FP32, CUDA runs FP16. Frames of any size are padded (edge pixels repeated) to what the
model accepts and cropped back, so callers never see the network's size rules. Input tensors
are preallocated and reused while the frame size stays the same; outputs are fresh arrays
(callers keep them across frames). A plate that is immutable (read-only and owning its pixels,
as the plate keeper publishes it) is converted once and reused until another plate comes.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import cv2
import numpy as np
import torch
from torch import Tensor

from edge_matte.config.schema import MattingConfig
from edge_matte.errors import EngineError, MediaError
from edge_matte.frames import Matte
from edge_matte.model.checkpoint import load_model
from edge_matte.model.model import MattingRefine
from edge_matte.model.refiner import PATCH

_LOG = logging.getLogger(__name__)


_Engine = TypeVar("_Engine", bound="TorchEngine")  # `from_model` makes the class it is called on


class TorchEngine:
    """The MattingEngine for BackgroundMattingV2 in eager torch ("torch-cpu" or "torch-cuda").

    Args:
        config: the matting section; `weights` names the checkpoint, the refine settings and
            `threads` (0 = torch's default) apply.
        device: "cpu", "cuda" or "cuda:N".
        dtype: default FP32 on the CPU, FP16 on CUDA.

    Raises CheckpointError for weights that do not load, EngineError when there are no weights
    or the device cannot be used. `TorchEngine.from_model` wraps a model already in memory.
    """

    def __init__(
        self, config: MattingConfig, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        if config.weights is None:
            raise EngineError(
                "no weights configured (matting.weights); the torch engine needs them"
            )
        model = load_model(
            config.weights,
            backbone_scale=config.backbone_scale,
            refine_mode=config.refine_mode,
            refine_sample_pixels=config.refine_sample_pixels,
            refine_threshold=config.refine_threshold,
            refine_kernel_size=config.refine_kernel_size,
        )
        self._start(model, device, config.threads, dtype)

    @classmethod
    def from_model(
        cls: type[_Engine], model: MattingRefine, device: str = "cpu", threads: int = 0
    ) -> _Engine:
        """An engine around `model` as it is (its refine settings apply); it is moved to `device`."""
        engine = cls.__new__(cls)
        engine._start(model, device, threads)
        return engine

    def _start(
        self, model: MattingRefine, device: str, threads: int, dtype: torch.dtype | None = None
    ) -> None:
        self.device = _resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.name = f"torch-{self.device.type}"
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            self.model: MattingRefine | None = model.to(self.device, self.dtype).eval()
        except RuntimeError as err:
            raise EngineError(f"cannot move the model to {self.device}: {err}") from err
        self._src: Tensor | None = None
        self._bgr: Tensor | None = None
        self._bgr_of: np.ndarray | None = None  # the immutable plate now in `_bgr`
        _LOG.info(
            "torch engine on %s (%s, %d threads, backbone_scale %s, refine %s)",
            self.device,
            self.dtype,
            torch.get_num_threads(),
            model.backbone_scale,
            model.refiner.mode,
        )

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (height, width) at least as large that the model accepts.

        Multiples of 4 (the refiner's 4x4 patches); the backbone itself takes any size (its
        strided convolutions round up and the decoder resizes to each skip), so the only other
        need is a base input of at least one pixel at the backbone scale.
        """
        model = self._require_model()
        padded_h, padded_w = _round_up(max(height, 1)), _round_up(max(width, 1))
        while model.base_size(padded_h, padded_w)[0] < 1:
            padded_h += PATCH
        while model.base_size(padded_h, padded_w)[1] < 1:
            padded_w += PATCH
        return padded_h, padded_w

    @torch.inference_mode()
    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        """Matte one BGR uint8 frame against a BGR uint8 plate of the same size."""
        check_images(image, plate)
        height, width = image.shape[:2]
        try:
            src, bgr = self._buffers(height, width)
            _load_rgb(src, image)
            if plate is not self._bgr_of:
                _load_rgb(bgr, plate)
                self._bgr_of = plate if immutable(plate) else None
            pha, fgr = self.infer(src, bgr)
            alpha = pha[0, 0, :height, :width].float().contiguous().cpu().numpy()
            foreground = _to_bgr_uint8(fgr[0, :, :height, :width])
        except RuntimeError as err:
            raise EngineError(f"{self.name} failed on a {width}x{height} frame: {err}") from err
        return Matte(alpha=alpha, foreground=foreground, engine=self.name)

    def infer(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor]:
        """(1, 3, H, W) RGB 0..1 source and plate, already padded -> alpha, foreground (RGB).

        The seam for accelerated engines: override this to run the model with static engines
        (`MattingRefine.forward_with`) and keep all the frame handling here.
        """
        pha, fgr = self._require_model()(src, bgr)[:2]
        return pha, fgr

    def close(self) -> None:
        """Release the model and buffers (and cached CUDA memory)."""
        self.model = self._src = self._bgr = self._bgr_of = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _require_model(self) -> MattingRefine:
        if self.model is None:
            raise EngineError(f"{self.name} engine is closed")
        return self.model

    def _buffers(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The padded input tensors for this frame size, reallocated only when the size changes."""
        shape = (1, 3, *self.padded_size(height, width))
        if self._src is None or self._bgr is None or tuple(self._src.shape) != shape:
            _LOG.debug("allocating %s input buffers for %dx%d frames", shape, width, height)
            self._src = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._bgr = torch.empty(shape, dtype=self.dtype, device=self.device)
            self._bgr_of = None
        return self._src, self._bgr


def _resolve_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise EngineError(f"invalid torch device {device!r}: {err}") from err
    if resolved.type not in ("cpu", "cuda"):
        raise EngineError(f"torch device {device!r} is not supported; use cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"torch device {device!r} requested but CUDA is not available")
    return resolved


def check_images(image: np.ndarray, plate: np.ndarray) -> None:
    for what, array in (("frame", image), ("plate", plate)):
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
            kind = getattr(array, "dtype", type(array).__name__)
            raise MediaError(f"{what} must be a uint8 numpy array, got {kind}")
        if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            raise MediaError(f"{what} must be H x W x 3 (BGR), got shape {array.shape}")
    if image.shape != plate.shape:
        raise MediaError(
            f"plate is {plate.shape[1]}x{plate.shape[0]} but the frame is "
            f"{image.shape[1]}x{image.shape[0]}; resize or recapture the plate"
        )


def immutable(array: np.ndarray) -> bool:
    """Nobody can change these pixels: read-only and not a view of some other, writable array.

    What an engine may cache a conversion of (the plate changes a few times an hour)."""
    return not array.flags.writeable and array.flags.owndata


def _load_rgb(buffer: Tensor, image: np.ndarray) -> None:
    """Write a BGR uint8 image into a (1, 3, Hp, Wp) buffer as RGB 0..1, repeating edges into the padding."""
    height, width = image.shape[:2]
    # One SIMD pass on the host; a torch flip would be a full copy too.
    rgb = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)
    pixels = torch.from_numpy(rgb).to(buffer.device, non_blocking=True)
    region = buffer[0, :, :height, :width]
    region.copy_(pixels.permute(2, 0, 1))
    region.div_(255)
    buffer[0, :, height:, :width] = buffer[0, :, height - 1 : height, :width]
    buffer[0, :, :, width:] = buffer[0, :, :, width - 1 : width]


def _to_bgr_uint8(fgr: Tensor) -> np.ndarray:
    """(3, H, W) RGB 0..1 -> H x W x 3 BGR uint8 on the host."""
    rgb = fgr.float().mul(255).round_().to(torch.uint8)
    return rgb.permute(1, 2, 0).flip(2).contiguous().cpu().numpy()


def _round_up(size: int) -> int:
    return -(-size // PATCH) * PATCH
