"""The BackgroundMattingV2 decoder: upsample and fuse the encoder's features at every scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Decoder(nn.Module):
    """Four (upsample x2 -> concat skip -> 3x3 conv) stages from 1/16 to full resolution.

    Args:
        channels: [in, stage1, stage2, stage3, out] channels ([256, 128, 64, 48, 37] here:
            ASPP output in, 1 alpha + 3 foreground residual + 1 error + 32 hidden out).
        feature_channels: skip channels at 1/8, 1/4, 1/2 and 1/1 ([32, 24, 16, 6]).

    Input:
        x4: (B, C, H/16, W/16) feature map at 1/16 resolution (after ASPP).
        x3: (B, C, H/8, W/8) feature map at 1/8 resolution.
        x2: (B, C, H/4, W/4) feature map at 1/4 resolution.
        x1: (B, C, H/2, W/2) feature map at 1/2 resolution.
        x0: (B, C, H, W) the network input.

    Output:
        x: (B, channels[4], H, W); the last stage has a bias and no BN/ReLU.
    """

    def __init__(self, channels: Sequence[int], feature_channels: Sequence[int]) -> None:
        super().__init__()
        c, f = channels, feature_channels
        self.conv1 = nn.Conv2d(f[0] + c[0], c[1], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[1])
        self.conv2 = nn.Conv2d(f[1] + c[1], c[2], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c[2])
        self.conv3 = nn.Conv2d(f[2] + c[2], c[3], 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c[3])
        self.conv4 = nn.Conv2d(f[3] + c[3], c[4], 3, padding=1)
        self.relu = nn.ReLU(True)

    def forward(self, x4: Tensor, x3: Tensor, x2: Tensor, x1: Tensor, x0: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(_up_cat(x4, x3))))
        x = self.relu(self.bn2(self.conv2(_up_cat(x, x2))))
        x = self.relu(self.bn3(self.conv3(_up_cat(x, x1))))
        return self.conv4(_up_cat(x, x0))


def _up_cat(x: Tensor, skip: Tensor) -> Tensor:
    """Bilinearly resize x to the skip's size and concatenate [x, skip] on channels."""
    x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
    return torch.cat([x, skip], dim=1)
