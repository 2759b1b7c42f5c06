"""MobileNetV2 encoder as BackgroundMattingV2 uses it (output stride 16, skip features).

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (2018). The official
model subclasses torchvision's `MobileNetV2`, swaps the first convolution for a 6-channel one,
drops the final 1x1 convolution and the classifier, and turns the last stride into dilation so
features stay at 1/16 resolution for ASPP. This is a standalone copy of that network (no
torchvision) whose state-dict keys (`features.N.conv.M...`) match torchvision's, so the official
weights load unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

# torchvision's table: expansion t, output channels c, repeats n, stride s of the first repeat.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
# The official output-stride-16 change: features[14] keeps stride 1 instead of 2, and the depthwise
# convolutions of features[15:] are dilated by 2 (padding 2) to keep the receptive field.
_UNSTRIDED_BLOCK = 14
_FIRST_DILATED_BLOCK = 15


def conv_bn_relu6(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU6, torchvision's `ConvBNReLU` (keys .0, .1)."""
    padding = (kernel_size - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear), with a skip when shapes allow.

    Args:
        in_channels, out_channels: channels in and out.
        stride: 1 or 2, of the depthwise convolution.
        expand_ratio: hidden channels = round(in_channels * expand_ratio); 1 skips the expansion.
        dilation: of the depthwise convolution (2 in the blocks the official model dilates).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, dilation: int = 1
    ) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, kernel_size=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 features[0..17] with output stride 16, returning the decoder's skips too.

    Args:
        in_channels: channels of the input (6 for BackgroundMattingV2: source and background).

    Input:
        x: (B, in_channels, H, W).

    Output:
        x4: (B, 320, H/16, W/16) deepest features (sizes round up at each stride).
        x3: (B, 32, H/8, W/8) after features[6].
        x2: (B, 24, H/4, W/4) after features[3].
        x1: (B, 16, H/2, W/2) after features[1].
        x0: (B, in_channels, H, W) the input itself.
    """

    def __init__(self, in_channels: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, _STEM_CHANNELS, stride=2)]
        channels = _STEM_CHANNELS
        for expand_ratio, out_channels, repeats, first_stride in _INVERTED_RESIDUAL_SETTING:
            for repeat in range(repeats):
                index = len(layers)
                stride = first_stride if repeat == 0 and index != _UNSTRIDED_BLOCK else 1
                dilation = 2 if index >= _FIRST_DILATED_BLOCK else 1
                layers.append(
                    InvertedResidual(channels, out_channels, stride, expand_ratio, dilation)
                )
                channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x0 = x  # 1/1
        x1 = self.features[:2](x0)  # 1/2
        x2 = self.features[2:4](x1)  # 1/4
        x3 = self.features[4:7](x2)  # 1/8
        x4 = self.features[7:](x3)  # 1/16
        return x4, x3, x2, x1, x0
