"""Convolutions of an upsampled or full-resolution input, computed at the lower resolution.

A convolution of a x2 upsample (bilinear or nearest) is, for each of the four output parities,
one convolution of the input itself; a 3x3 convolution at full resolution is a 2x2 one over the
input's space-to-depth. `WindowRefiner` uses both so the refiner never builds its upsampled
inputs; `gather` cuts the windows they run on. Same products, less memory traffic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edge_matte.model.refiner import Index

# What a 3x3 kernel reads of a x2 upsample at an even (0) or odd (1) output row: for each of its
# three taps, the weights of the input rows under it (three for bilinear with
# align_corners=False, two for nearest).
UPSAMPLE_ROWS = (
    ((0.75, 0.25, 0.0), (0.25, 0.75, 0.0), (0.0, 0.75, 0.25)),
    ((0.25, 0.75, 0.0), (0.0, 0.75, 0.25), (0.0, 0.25, 0.75)),
)
NEAREST_ROWS = (((1.0, 0.0), (1.0, 0.0), (0.0, 1.0)), ((1.0, 0.0), (0.0, 1.0), (0.0, 1.0)))


def phase_weights(
    weight: Tensor, rows: tuple[tuple[tuple[float, ...], ...], ...] = UPSAMPLE_ROWS
) -> Tensor:
    """[4 O, I, k, k] kernels, one per output parity (row, column), that applied to the input
    give `weight` [O, I, 3, 3] applied to its x2 upsample (`rows`: see above; k = 3 for
    bilinear, 2 for nearest); channels parity-major, as `depth_to_space` reads them."""
    taps = weight.new_tensor(rows)
    phases = torch.einsum("oitu,sta,qub->sqoiab", weight, taps, taps)
    return phases.reshape(-1, weight.shape[1], *taps.shape[2:] * 2).contiguous(
        memory_format=torch.channels_last
    )


# Which of a 3x3 kernel's taps (rows) an output row of parity a (0 even, 1 odd) reads through a
# 2x2 kernel over the space-to-depth input: tap t of input row 2 u + c (u the 2x2 kernel's row,
# c the input row's parity) is t = 2 u + c - a.
_SPACE_TO_DEPTH_TAPS = tuple(
    tuple(tuple(tuple(float(t == 2 * u + c - a) for c in (0, 1)) for u in (0, 1)) for t in range(3))
    for a in (0, 1)
)


def space_to_depth_weights(weight: Tensor) -> Tensor:
    """[4 O, 4 I, 2, 2] kernels, one per output parity, that applied to the input's
    space-to-depth (`gather` with block 2) give `weight` [O, I, 3, 3] (valid) applied to the
    input itself; the output channels ordered as `depth_to_space` reads them."""
    taps = weight.new_tensor(_SPACE_TO_DEPTH_TAPS)  # [a, t, u, c]
    phases = torch.einsum("oits,atuc,bsvd->abocdiuv", weight, taps, taps)
    out, inputs = weight.shape[:2]
    return phases.reshape(4 * out, 4 * inputs, 2, 2).contiguous(memory_format=torch.channels_last)


def per_parity(conv: nn.Conv2d) -> Tensor | None:
    """`conv`'s bias for its outputs as four parity planes (see `depth_to_space`)."""
    return None if conv.bias is None else conv.bias.repeat(4)


def depth_to_space(phases: Tensor, channels: int) -> Tensor:
    """[N, 4 C, h, w] parity-major phases ((2 row parity + column parity) C + c) -> [N, C, 2h, 2w]
    channels-last, the inverse of `gather`'s block 2. `pixel_shuffle` orders channel-major, so on channels-last tensors it
    moves single floats; this moves runs of C: about 6x faster on a box, 2x on patches."""
    n, _, h, w = phases.shape
    blocks = phases.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, channels)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, channels).permute(0, 3, 1, 2)


def gather(
    nhwc: Tensor, corners: Index, stride: int, size: tuple[int, int], block: int = 1
) -> Tensor:
    """[P, C, h, w] channels-last windows of a [B, H, W, C] tensor (contiguous, or it is
    copied), window i's corner at (stride y_i, stride x_i); with `block` 2 each window comes
    space-to-depth at no extra cost: [P, 4 C, h/2, w/2], each 2x2 block's pixels as channels,
    parity-major ((2 row parity + column parity) C + c).

    One `index_select` of whole pixels (C floats each) in the order they are wanted: about 4x
    faster than indexing with three index tensors, which computes an offset per float."""
    _, height, width, channels = nhwc.shape
    tall, wide = size[0] // block, size[1] // block
    phase = torch.arange(block, device=nhwc.device)
    down = block * torch.arange(tall, device=nhwc.device)[:, None] + phase  # [tall, block]
    across = block * torch.arange(wide, device=nhwc.device)[:, None] + phase  # [wide, block]
    rows = (stride * corners[1])[:, None, None, None, None] + down[None, :, None, :, None]
    cols = (stride * corners[2])[:, None, None, None, None] + across[None, None, :, None, :]
    image = corners[0][:, None, None, None, None]
    pixels = (image * height + rows) * width + cols  # [P, tall, wide, block, block]
    picked = nhwc.reshape(-1, channels).index_select(0, pixels.reshape(-1))
    return picked.view(-1, tall, wide, block * block * channels).permute(0, 3, 1, 2)
