"""BackgroundMattingV2 (Lin et al., CVPR 2021), MobileNetV2 variant: `MattingBase`, `MattingRefine`.

Mirrors the official `model/model.py` (PeterL1n/BackgroundMattingV2); the state-dict keys are
the official ones, so its `pytorch_mobilenetv2.pth` loads with `strict=True`.

The forward pass is split where TensorRT's static shapes end (see issue "Jetson acceleration"):

1. `MattingBase.base`: backbone -> ASPP -> decoder, one tensor (B, 6, h, w) at backbone scale to
   (B, 37, h, w). Static for a fixed input size; `BaseNetwork` wraps it as a module.
2. `Refiner.convs`: the refiner's two convolution stacks on a batch of fixed-size patches.
   Static for a fixed patch count; `PatchRefiner` wraps it as a module.
3. Everything else stays in torch: resizing, splitting the 37 channels, patch selection (top-k,
   threshold, nonzero), cropping and scattering. `MattingRefine.forward_with` runs the pipeline
   with any callables standing in for 1 and 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edge_matte.model.aspp import ASPP
from edge_matte.model.decoder import Decoder
from edge_matte.model.mobilenetv2 import MobileNetV2Encoder
from edge_matte.model.refiner import PATCH, ConvsFn, Refiner

BACKBONES = ("mobilenetv2",)
BASE_IN_CHANNELS = 6  # source RGB + background RGB
BASE_OUT_CHANNELS = 1 + 3 + 1 + 32  # alpha, foreground residual, error, hidden

BaseFn = Callable[[Tensor], Tensor]


class MattingBase(nn.Module):
    """
    MattingBase is used to produce coarse global results at a lower resolution.

    Args:
        backbone: ["mobilenetv2"] (the official ResNet variants are not implemented).

    Input:
        src: (B, 3, H, W) the source image. Channels are RGB values normalized to 0 ~ 1.
        bgr: (B, 3, H, W) the background image. Channels are RGB values normalized to 0 ~ 1.

    Output:
        pha: (B, 1, H, W) the alpha prediction. Normalized to 0 ~ 1.
        fgr: (B, 3, H, W) the foreground prediction. Channels are RGB values normalized to 0 ~ 1.
        err: (B, 1, H, W) the error prediction. Normalized to 0 ~ 1.
        hid: (B, 32, H, W) the hidden encoding. Used for connecting refiner module.

    Example:
        model = MattingBase()
        pha, fgr = model(src, bgr)[:2]
    """

    def __init__(self, backbone: str = "mobilenetv2") -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(
                f"backbone {backbone!r} is not supported; only mobilenetv2 is implemented"
            )
        self.backbone = MobileNetV2Encoder(BASE_IN_CHANNELS)
        self.aspp = ASPP(320, [3, 6, 9])
        self.decoder = Decoder(
            [256, 128, 64, 48, BASE_OUT_CHANNELS], [32, 24, 16, BASE_IN_CHANNELS]
        )

    def base(self, x: Tensor) -> Tensor:
        """The base network, static piece 1 (the official `Base.forward`).

        Input:
            x: (B, 6, h, w) source and background RGB in 0 ~ 1, concatenated on channels.
        Output:
            (B, 37, h, w) raw decoder output: alpha, foreground residual, error, hidden.
        """
        x, *shortcuts = self.backbone(x)
        x = self.aspp(x)
        return self.decoder(x, *shortcuts)

    def forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, ...]:  # 4 here, 6 refined
        _check_pair(src, bgr)
        pha, fgr, err, hid = split_base_output(self.base(torch.cat([src, bgr], dim=1)))
        return pha, fgr.add(src).clamp_(0.0, 1.0), err, hid


class MattingRefine(MattingBase):
    """
    MattingRefine includes the refiner module to upsample coarse result to full resolution.
    MattingRefine extends MattingBase.

    Args:
        backbone: ["mobilenetv2"]
        backbone_scale: The image downsample scale for passing through backbone, default 1/4 or 0.25.
                        Must be in (0, 1/2].
        refine_mode: refine area selection mode. Options:
            "full"         - No area selection, refine everywhere using regular Conv2d.
            "sampling"     - Refine fixed amount of pixels ranked by the top most errors.
            "thresholding" - Refine varying amount of pixels that has more error than the threshold.
        refine_sample_pixels: number of pixels to refine (capped at all of them). Only used when mode == "sampling".
        refine_threshold: error threshold ranged from 0 ~ 1. Refine where err > threshold (so -1 refines
                          everything). Only used when mode == "thresholding".
        refine_kernel_size: the refiner's convolutional kernel size. Options: [1, 3]
        refine_prevent_oversampling: prevent sampling more pixels than needed for sampling mode. Set False only for speedtest.

    Input:
        src: (B, 3, H, W) the source image. Channels are RGB values normalized to 0 ~ 1.
             H and W must be divisible by 4.
        bgr: (B, 3, H, W) the background image. Channels are RGB values normalized to 0 ~ 1.

    Output:
        pha: (B, 1, H, W) the alpha prediction. Normalized to 0 ~ 1.
        fgr: (B, 3, H, W) the foreground prediction. Channels are RGB values normalized to 0 ~ 1.
        pha_sm: (B, 1, Hc, Wc) the coarse alpha prediction from matting base. Normalized to 0 ~ 1.
        fgr_sm: (B, 3, Hc, Wc) the coarse foreground prediction from matting base. Normalized to 0 ~ 1.
        err_sm: (B, 1, Hc, Wc) the coarse error prediction from matting base. Normalized to 0 ~ 1.
        ref_sm: (B, 1, H/4, W/4) the quarter resolution refinement map. 1 indicates refined 4x4 patch locations.
        (Hc, Wc = floor(H * backbone_scale), floor(W * backbone_scale).)

    Example:
        model = MattingRefine(backbone_scale=1/4, refine_mode='sampling', refine_sample_pixels=80_000)
        model = MattingRefine(backbone_scale=1/4, refine_mode='thresholding', refine_threshold=0.1)
        model = MattingRefine(backbone_scale=1/4, refine_mode='full')

        pha, fgr = model(src, bgr)[:2]
        pha, fgr = model.forward_with(src, bgr, base_engine, refiner_engine)[:2]
    """

    def __init__(
        self,
        backbone: str = "mobilenetv2",
        backbone_scale: float = 1 / 4,
        refine_mode: str = "sampling",
        refine_sample_pixels: int = 80_000,
        refine_threshold: float = 0.1,
        refine_kernel_size: int = 3,
        refine_prevent_oversampling: bool = True,
    ) -> None:
        if not 0 < backbone_scale <= 1 / 2:
            raise ValueError(f"backbone_scale must be in (0, 0.5], got {backbone_scale!r}")
        super().__init__(backbone)
        self.backbone_scale = backbone_scale
        self.refiner = Refiner(
            refine_mode,
            refine_sample_pixels,
            refine_threshold,
            refine_kernel_size,
            refine_prevent_oversampling,
        )

    def base_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the base network's input for a (height, width) source."""
        return int(height * self.backbone_scale), int(width * self.backbone_scale)

    def forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, ...]:
        return self.forward_with(src, bgr, self.base, self.refiner.convs)

    def forward_with(
        self, src: Tensor, bgr: Tensor, base: BaseFn, convs: ConvsFn
    ) -> tuple[Tensor, ...]:
        """`forward` with stand-ins for the static pieces (same signatures as `base`, `Refiner.convs`)."""
        _check_pair(src, bgr)
        height, width = src.shape[2:]
        if height % PATCH or width % PATCH:
            raise ValueError(
                f"src and bgr height and width must be divisible by 4, got {height}x{width}"
            )
        size = self.base_size(height, width)
        if min(size) < 1:
            raise ValueError(
                f"{height}x{width} at backbone_scale {self.backbone_scale} leaves nothing for the base network"
            )

        # The official code resizes with scale_factor and recompute_scale_factor=True, which is
        # exactly this explicit size; an explicit size also exports with static shapes.
        src_sm = F.interpolate(src, size, mode="bilinear", align_corners=False)
        bgr_sm = F.interpolate(bgr, size, mode="bilinear", align_corners=False)
        pha_sm, fgr_sm, err_sm, hid_sm = split_base_output(base(torch.cat([src_sm, bgr_sm], dim=1)))

        pha, fgr, ref_sm = self.refiner(src, bgr, pha_sm, fgr_sm, err_sm, hid_sm, convs=convs)

        pha = pha.clamp_(0.0, 1.0)
        fgr = fgr.add_(src).clamp_(0.0, 1.0)
        fgr_sm = src_sm.add_(fgr_sm).clamp_(0.0, 1.0)
        return pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm


class BaseNetwork(nn.Module):
    """`model.base` as a module of its own, sharing the model's parameters (for torch2trt/ONNX)."""

    def __init__(self, model: MattingBase) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.base(x)


class PatchRefiner(nn.Module):
    """`refiner.convs` as a module of its own, sharing the refiner's parameters (for torch2trt/ONNX)."""

    def __init__(self, refiner: Refiner) -> None:
        super().__init__()
        self.refiner = refiner

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.refiner.convs(x, y)


def split_base_output(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split the base network's 37 channels into clamped alpha, foreground residual, clamped error, ReLU'd hidden (in place, as the official code)."""
    pha = x[:, 0:1].clamp_(0.0, 1.0)
    fgr = x[:, 1:4]
    err = x[:, 4:5].clamp_(0.0, 1.0)
    hid = x[:, 5:].relu_()
    return pha, fgr, err, hid


def _check_pair(src: Tensor, bgr: Tensor) -> None:
    if src.dim() != 4 or src.size(1) != 3:
        raise ValueError(f"src must be (B, 3, H, W), got {tuple(src.shape)}")
    if src.shape != bgr.shape:
        raise ValueError(
            f"src and bgr must have the same shape, got {tuple(src.shape)} and {tuple(bgr.shape)}"
        )
