"""The BackgroundMattingV2 refiner: full-resolution alpha and foreground on selected 4x4 patches.

Split for static-shape accelerators (TensorRT cannot express top-k over 5,000 patches or the
data-dependent `nonzero`): `Refiner.convs` is the whole learned part, two convolution stacks
applied to a batch of fixed-size patches; selecting, cropping and scattering patches stay in
torch (`select_refinement_regions`, `crop_patch`, `replace_patch`). `forward(..., convs=...)`
accepts any callable with `convs`' signature, e.g. an engine built from `PatchRefiner`.
Patches are independent along the batch axis, so a fixed-count engine can take the selected
patches padded up to its count (or in chunks of it) and the padding rows dropped afterwards.
In "full" mode the same `convs` runs once on the whole (padded) image instead of on patches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

REFINE_MODES = ("full", "sampling", "thresholding")
PATCH = 4  # side of a refined patch at full resolution, in pixels

# The refiner's learned part: (half-resolution patches, full-resolution patches) -> 4 channels.
ConvsFn = Callable[[Tensor, Tensor], Tensor]
Index = tuple[Tensor, Tensor, Tensor]


class Refiner(nn.Module):
    """
    Refiner refines the coarse output to full resolution.

    Args:
        mode: area selection mode. Options:
            "full"         - No area selection, refine everywhere using regular Conv2d.
            "sampling"     - Refine fixed amount of pixels ranked by the top most errors.
            "thresholding" - Refine varying amount of pixels that have greater error than the threshold.
        sample_pixels: number of pixels to refine (sample_pixels // 16 patches of 4x4, at most
            all of them). Only used when mode == "sampling".
        threshold: refine where the error > threshold (the error is in 0 ~ 1, so a negative
            threshold selects every patch). Only used when mode == "thresholding".
        kernel_size: the convolution kernel size. Options: [1, 3]
        prevent_oversampling: in sampling mode, skip patches whose error is 0. True for regular
            cases, False for speed tests.

    Input:
        src: (B, 3, H, W) full resolution source image, H and W divisible by 4.
        bgr: (B, 3, H, W) full resolution background image.
        pha: (B, 1, Hc, Wc) coarse alpha prediction.
        fgr: (B, 3, Hc, Wc) coarse foreground residual prediction.
        err: (B, 1, Hc, Wc) coarse error prediction.
        hid: (B, 32, Hc, Wc) coarse hidden encoding.
        convs: optional stand-in for `self.convs` (same signature), e.g. a static engine.

    Output:
        pha: (B, 1, H, W) full resolution alpha prediction (not clamped).
        fgr: (B, 3, H, W) full resolution foreground residual prediction.
        ref: (B, 1, H/4, W/4) quarter resolution refinement selection map. 1 indicates refined
            4x4 patch locations.

    Differences from the official code: only its default patch methods ("unfold" crop,
    "scatter_nd" replace) exist here, sampling mode caps the patch count at the number of
    patches instead of failing in `topk`, and invalid arguments raise ValueError.
    """

    def __init__(
        self,
        mode: str,
        sample_pixels: int,
        threshold: float,
        kernel_size: int = 3,
        prevent_oversampling: bool = True,
    ) -> None:
        super().__init__()
        if mode not in REFINE_MODES:
            raise ValueError(f"refine mode {mode!r} is not one of {', '.join(REFINE_MODES)}")
        if kernel_size not in (1, 3):
            raise ValueError(f"refine kernel size must be 1 or 3, got {kernel_size!r}")
        if sample_pixels < PATCH * PATCH:
            raise ValueError(f"refine sample pixels must be >= 16 (one patch), got {sample_pixels}")
        self.mode = mode
        self.sample_pixels = sample_pixels
        self.threshold = threshold
        self.kernel_size = kernel_size
        self.prevent_oversampling = prevent_oversampling

        channels = [32, 24, 16, 12, 4]
        self.conv1 = nn.Conv2d(channels[0] + 6 + 4, channels[1], kernel_size, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[1])
        self.conv2 = nn.Conv2d(channels[1], channels[2], kernel_size, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[2])
        self.conv3 = nn.Conv2d(channels[2] + 6, channels[3], kernel_size, bias=False)
        self.bn3 = nn.BatchNorm2d(channels[3])
        self.conv4 = nn.Conv2d(channels[3], channels[4], kernel_size, bias=True)
        self.relu = nn.ReLU(True)

    def settings(self) -> tuple[str, int, float, int, bool]:
        """The constructor's arguments: `type(self)(*other.settings())` is configured like `other`."""
        return (
            self.mode,
            self.sample_pixels,
            self.threshold,
            self.kernel_size,
            self.prevent_oversampling,
        )

    @property
    def patch_shapes(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(C, h, w) of one patch of each `convs` input: 42x8x8 and 6x8x8 (kernel 3), 42x2x2 and 6x4x4 (kernel 1)."""
        half, full = self._paddings()
        half_side, full_side = PATCH // 2 + 2 * half, PATCH + 2 * full
        return (42, half_side, half_side), (6, full_side, full_side)

    def convs(self, x: Tensor, y: Tensor) -> Tensor:
        """The learned part; static-shape for a fixed patch count (the TensorRT/ONNX piece).

        Input:
            x: (P, 42, h, w) hidden, coarse alpha, coarse foreground and source+background, all
               at half resolution; h = w = 8 (kernel 3) or 2 (kernel 1) for patches.
            y: (P, 6, 2h - 8, 2w - 8) for kernel 3, (P, 6, 2h, 2w) for kernel 1: source and
               background at full resolution.

        Output:
            (P, 4, 2h - 12, 2w - 12) for kernel 3, (P, 4, 2h, 2w) for kernel 1: alpha and
            foreground residual, 4x4 per patch. The same code refines the whole image in "full"
            mode, with P = B and h, w the padded half-resolution size.
        """
        return self.full_resolution(self.after_conv1(self.conv1(x)), y)

    # `convs` in two parts, for a fast path that computes conv1, or the half-resolution part,
    # its own way.

    def after_conv1(self, x: Tensor) -> Tensor:
        """conv1's output -> conv2's activations: the half-resolution rest of `convs`."""
        x = self.relu(self.bn1(x))
        return self.relu(self.bn2(self.conv2(x)))

    def full_resolution(self, x: Tensor, y: Tensor) -> Tensor:
        """conv2's activations and the full-resolution source y -> `convs`' output."""
        # Exactly x2: the official code asks for size 8 (4) per patch and H + 4 (H) in full mode.
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.relu(self.bn3(self.conv3(torch.cat([x, y], dim=1))))
        return self.conv4(x)

    def forward(
        self,
        src: Tensor,
        bgr: Tensor,
        pha: Tensor,
        fgr: Tensor,
        err: Tensor,
        hid: Tensor,
        convs: ConvsFn | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        convs = self.convs if convs is None else convs
        src_bgr = torch.cat([src, bgr], dim=1)
        coarse = torch.cat([hid, pha, fgr], dim=1)
        if self.mode == "full":
            return self._refine_full(src_bgr, coarse, convs)
        return self._refine_patches(src_bgr, coarse, err, convs)

    def _paddings(self) -> tuple[int, int]:
        """Context around a patch at half and full resolution that the valid convolutions eat."""
        return (3, 2) if self.kernel_size == 3 else (0, 0)

    def _refine_full(
        self, src_bgr: Tensor, coarse: Tensor, convs: ConvsFn
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, _, h, w = src_bgr.shape
        half, full = self._paddings()
        x = F.pad(_half_resolution(coarse, src_bgr), (half,) * 4)
        y = F.pad(src_bgr, (full,) * 4)
        out = convs(x, y)
        ref = torch.ones((b, 1, h // 4, w // 4), device=src_bgr.device, dtype=src_bgr.dtype)
        return out[:, :1], out[:, 1:], ref

    def _refine_patches(
        self, src_bgr: Tensor, coarse: Tensor, err: Tensor, convs: ConvsFn
    ) -> tuple[Tensor, Tensor, Tensor]:
        h, w = src_bgr.shape[2:]
        err = F.interpolate(err, (h // 4, w // 4), mode="bilinear", align_corners=False)
        ref = self.select_refinement_regions(err)
        found = torch.nonzero(ref.squeeze(1))
        idx = found[:, 0], found[:, 1], found[:, 2]

        pha_fgr = coarse[:, -4:]
        out = F.interpolate(pha_fgr, (h, w), mode="bilinear", align_corners=False)
        if idx[0].size(0) > 0:
            half, full = self._paddings()
            x = crop_patch(_half_resolution(coarse, src_bgr), idx, PATCH // 2, half)
            y = crop_patch(src_bgr, idx, PATCH, full)
            out = replace_patch(out, convs(x, y), idx)
        return out[:, :1], out[:, 1:], ref

    def select_refinement_regions(self, err: Tensor) -> Tensor:
        """
        Select refinement regions.

        Input:
            err: error map (B, 1, H, W)
        Output:
            ref: refinement regions (B, 1, H, W). FloatTensor. 1 is selected, 0 is not.
        """
        if self.mode == "sampling":
            b, _, h, w = err.shape
            err = err.view(b, -1)
            k = min(self.sample_pixels // (PATCH * PATCH), h * w)
            idx = err.topk(k, dim=1, sorted=False).indices
            ref = torch.zeros_like(err)
            ref.scatter_(1, idx, 1.0)
            if self.prevent_oversampling:
                ref.mul_(err.gt(0).to(ref.dtype))
            return ref.view(b, 1, h, w)
        return err.gt(self.threshold).to(err.dtype)


def _half_resolution(coarse: Tensor, src_bgr: Tensor) -> Tensor:
    """[hid, pha, fgr, src, bgr] bilinearly resized to half the source resolution: conv1's input."""
    h, w = src_bgr.shape[2:]
    coarse = F.interpolate(coarse, (h // 2, w // 2), mode="bilinear", align_corners=False)
    src_bgr = F.interpolate(src_bgr, (h // 2, w // 2), mode="bilinear", align_corners=False)
    return torch.cat([coarse, src_bgr], dim=1)


def crop_patch(x: Tensor, idx: Index, size: int, padding: int) -> Tensor:
    """
    Crops selected patches from image given indices.

    Inputs:
        x: image (B, C, H, W).
        idx: selection indices Tuple[(P,), (P,), (P,)], where the 3 values are (B, H, W) index.
        size: center size of the patch, also stride of the crop.
        padding: expansion size of the patch (zeros outside the image).
    Output:
        patch: (P, C, h, w), where h = w = size + 2 * padding.
    """
    if padding != 0:
        x = F.pad(x, (padding,) * 4)
    side = size + 2 * padding
    patches = x.permute(0, 2, 3, 1).unfold(1, side, size).unfold(2, side, size)
    return patches[idx[0], idx[1], idx[2]]


def replace_patch(x: Tensor, y: Tensor, idx: Index) -> Tensor:
    """
    Replaces patches back into image given index (in place, through a view of x).

    Inputs:
        x: image (B, C, H, W)
        y: patches (P, C, h, w)
        idx: selection indices Tuple[(P,), (P,), (P,)] where the 3 values are (B, H, W) index.

    Output:
        image: (B, C, H, W), where patches at idx locations are replaced with y.
    """
    xb, xc, xh, xw = x.shape
    yh, yw = y.shape[2:]
    x = x.view(xb, xc, xh // yh, yh, xw // yw, yw).permute(0, 2, 4, 1, 3, 5)
    x[idx[0], idx[1], idx[2]] = y
    return x.permute(0, 3, 1, 4, 2, 5).view(xb, xc, xh, xw)
