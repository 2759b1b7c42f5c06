"""Fold eval-mode BatchNorm into the convolution before it, for inference.

In eval mode `bn(conv(x))` is one affine map per output channel, so it can be written into the
convolution's weights and bias and the BatchNorm replaced by `nn.Identity`: one pass over each
activation instead of two, and the same result up to float rounding. The folded model is for
inference only (its state dict no longer has the BatchNorm keys, and training would differ).

Which convolution feeds which BatchNorm is read from the module layout, never guessed from
shapes: adjacent `(Conv2d, BatchNorm2d)` children of an `nn.Sequential` (MobileNetV2's
ConvBNReLU and inverted residuals, ASPP's branches and projection), and `conv<N>` / `bn<N>`
children of any other module (the decoder and refiner call `bnN(convN(x))`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

import torch
from torch import nn

_CONV_NAME = re.compile(r"conv(\d+)$")


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Write `bn` (eval mode: running statistics) into `conv`'s weight and bias, in place."""
    if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
        raise ValueError(f"cannot fold {bn} into {conv}")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    bias = (bias - bn.running_mean) * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d (see module docstring), in place.

    The model must be in eval mode (folding uses the running statistics). Returns how many
    were folded; BatchNorms in other positions are left as they are.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call .eval() first)")
    folded = 0
    for parent in list(model.modules()):
        for conv_name, bn_name in _pairs(parent):
            fold_conv_bn(getattr(parent, conv_name), getattr(parent, bn_name))
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def _pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) child names of `parent` where the BatchNorm is applied to the conv's output."""
    children = dict(parent.named_children())
    if isinstance(parent, nn.Sequential):
        names = list(children)
        candidates: Iterable[tuple[str, str]] = itertools.pairwise(names)
    else:
        candidates = (
            (name, f"bn{match.group(1)}") for name in children if (match := _CONV_NAME.match(name))
        )
    return [
        (conv, bn)
        for conv, bn in candidates
        if isinstance(children.get(conv), nn.Conv2d)
        and isinstance(children.get(bn), nn.BatchNorm2d)
    ]
