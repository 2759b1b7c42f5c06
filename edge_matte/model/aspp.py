"""Atrous Spatial Pyramid Pooling (DeepLabV3), as torchvision implements it.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (2017). The official
BackgroundMattingV2 imports `torchvision.models.segmentation.deeplabv3.ASPP`; this copy keeps its
module layout so the keys (`convs.N.M...`, `project.M...`) match the released weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1
) -> nn.Sequential:
    padding = dilation if kernel_size == 3 else 0
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ASPPPooling(nn.Sequential):
    """Image-level features: global average -> 1x1 conv -> BN -> ReLU, broadcast back to H x W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Parallel 1x1, dilated 3x3 (one per rate) and pooling branches, concatenated and projected.

    Args:
        in_channels: channels of the encoder output (320 for MobileNetV2).
        atrous_rates: dilation of each 3x3 branch ((3, 6, 9) in BackgroundMattingV2).
        out_channels: channels of every branch and of the projection.

    Input:
        x: (B, in_channels, h, w).

    Output:
        x: (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256):
        super().__init__()
        branches: list[nn.Module] = [_conv_bn_relu(in_channels, out_channels, 1)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),  # training only; kept so the module layout matches torchvision's
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
