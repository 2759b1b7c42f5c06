"""Static shapes for engines and ONNX graphs: example inputs, a fixed-count patch runner, full mode.

TensorRT engines and fixed-shape ONNX graphs accept one input shape. The base network gets one
(B=1, at the backbone scale of the padded frame); the refiner's convolutions get a fixed number
of patches (`patch_count`), while the number the model selects varies: in sampling mode it is
at most sample_pixels // 16 (fewer with oversampling prevention), in thresholding mode it is
whatever `nonzero` finds. `FixedCountConvs` bridges the two: patches are independent along the
batch axis, so it pads the selected patches up to the count and drops the padding rows
afterwards, or runs chunks of the count when more are selected. Selection (top-k, which would
exceed TensorRT's k <= 3840 limit at HD, and `nonzero`) stays in torch. `FullMatting` is the
one whole-model graph with static shapes: "full" mode, which selects nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edge_matte.model.model import BASE_IN_CHANNELS, MattingRefine
from edge_matte.model.refiner import PATCH, ConvsFn, Refiner


class FixedCountConvs:
    """A `ConvsFn` for any number of patches, built on one that only takes exactly `count`.

    The padded inputs are allocated once per patch shape, dtype and device and reused. Their
    spare rows hold zeros or patches of an earlier call: harmless, since no row affects another
    (convolutions, eval-mode batch norm and ReLU all act per patch), and they are dropped.
    """

    def __init__(self, convs: ConvsFn, count: int) -> None:
        if count < 1:
            raise ValueError(f"patch count must be >= 1, got {count}")
        self.convs = convs
        self.count = count
        self._padded: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """(P, 42, h, w), (P, 6, H, W) patches -> (P, 4, 4, 4), in ceil(P / count) calls (at least one)."""
        total = x.size(0)
        outs = [
            self._run(x[start : start + self.count], y[start : start + self.count])
            for start in range(0, max(total, 1), self.count)
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _run(self, x: Tensor, y: Tensor) -> Tensor:
        n = x.size(0)
        if n == self.count:
            return self.convs(x, y)
        x_pad, y_pad = self._buffers(x, y)
        x_pad[:n].copy_(x)
        y_pad[:n].copy_(y)
        return self.convs(x_pad, y_pad)[:n]

    def _buffers(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._padded is None or not all(map(_fits, self._padded, (x, y))):
            self._padded = (
                x.new_zeros((self.count, *x.shape[1:])),
                y.new_zeros((self.count, *y.shape[1:])),
            )
        return self._padded


def _fits(buffer: Tensor, like: Tensor) -> bool:
    return (
        buffer.shape[1:] == like.shape[1:]
        and buffer.dtype == like.dtype
        and buffer.device == like.device
    )


class FullMatting(nn.Module):
    """A "full"-mode `MattingRefine` returning only (pha, fgr): the whole model as one static graph."""

    def __init__(self, model: MattingRefine) -> None:
        super().__init__()
        if model.refiner.mode != "full":
            raise ValueError(f"FullMatting needs refine_mode 'full', got {model.refiner.mode!r}")
        self.model = model

    def forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor]:
        pha, fgr = self.model(src, bgr)[:2]
        # No-op reshapes that state the output shapes: the exporter's shape inference loses them
        # in the refiner's padding and would declare symbolic dimensions.
        return pha.reshape(src.size(0), 1, *src.shape[2:]), fgr.reshape(src.shape)


def default_patch_count(model: MattingRefine, height: int, width: int) -> int:
    """The fixed patch count for a (height, width) padded input: sample_pixels // 16, at most every patch.

    In sampling mode that is exactly top-k's k, so one call covers every frame; thresholding
    mode uses the same budget and runs more calls on the rare frames that select more.
    """
    every_patch = (height // PATCH) * (width // PATCH)
    return max(1, min(model.refiner.sample_pixels // (PATCH * PATCH), every_patch))


def base_example(
    model: MattingRefine, height: int, width: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A (1, 6, h, w) input of the base network for a (height, width) padded frame, values in 0..1."""
    return torch.rand((1, BASE_IN_CHANNELS, *model.base_size(height, width))).to(device, dtype)


def patch_examples(
    refiner: Refiner, count: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`count` patches of each `Refiner.convs` input, values in 0..1."""
    half, full = refiner.patch_shapes
    return _rand((count, *half), dtype, device), _rand((count, *full), dtype, device)


def full_examples(
    refiner: Refiner, height: int, width: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`Refiner.convs` inputs in "full" mode for a (height, width) frame: the whole padded image."""
    (x_channels, half_side, _), (y_channels, full_side, _) = refiner.patch_shapes
    half_pad, full_pad = (half_side - PATCH // 2) // 2, (full_side - PATCH) // 2  # context per side
    x = _rand((1, x_channels, height // 2 + 2 * half_pad, width // 2 + 2 * half_pad), dtype, device)
    y = _rand((1, y_channels, height + 2 * full_pad, width + 2 * full_pad), dtype, device)
    return x, y


def _rand(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.rand(shape).to(device, dtype)
