"""`WindowRefiner`: the refiner with its inputs cut from small windows, same values.

The official refiner upsamples all 42 channels of the coarse output to half the frame's size and
cuts the selected patches from that; cutting small windows from the quarter-resolution output,
with the upsamples folded into the convolutions (`model.phase_conv`), gives the same values
within float rounding at a fraction of the memory traffic. Measurements: docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from edge_matte.model.fuse import fold_batchnorm
from edge_matte.model.phase_conv import (
    NEAREST_ROWS,
    depth_to_space,
    gather,
    per_parity,
    phase_weights,
    space_to_depth_weights,
)
from edge_matte.model.refiner import PATCH, ConvsFn, Index, Refiner, replace_patch


class WindowRefiner(Refiner):
    """`Refiner` that builds its inputs from windows instead of whole-frame tensors.

    Same result as `Refiner` within float rounding; `convs` must accept any spatial size (as
    it does in "full" mode). Two ways to refine the selected patches, chosen per frame:

    * per patch: one 1x1-cell window per patch (see `_window_inputs`);
    * dense: one window over the selected patches' bounding box, refined as a whole (as "full"
      mode does; with its own convolutions only conv1 and conv2, then conv3 and conv4 on the
      selected patches), the selected patches taken from it. A refined pixel depends only on the
      inputs around it, so both give the same values; dense is cheaper once the selected patches
      fill more than 1 / DENSE_RATIO of their box (overlapping patches share most of their
      work), e.g. a subject's region crop or a small frame.

    Applies when the base output is exactly a quarter of the frame (backbone_scale 1/4, the HD
    setting); otherwise it is `Refiner`.
    """

    # Box cells per selected patch below which dense refinement is cheaper: measured on 2 x86
    # cores, both cost the same at 11.5 (5,000 patches over a whole 720p frame).
    DENSE_RATIO = 11

    @classmethod
    def like(cls, refiner: Refiner) -> WindowRefiner:
        """A WindowRefiner with `refiner`'s settings and (copied) parameters, for inference:
        in eval mode, BatchNorm folded (`_full_resolution` convolves per output parity, which
        needs each channel's affine map inside the convolution)."""
        new = cls(*refiner.settings())
        new.load_state_dict(refiner.state_dict())
        new = new.to(refiner.conv1.weight.device, refiner.conv1.weight.dtype).eval()
        fold_batchnorm(new)
        return new

    def _refine_patches(
        self, src_bgr: Tensor, coarse: Tensor, err: Tensor, convs: ConvsFn
    ) -> tuple[Tensor, Tensor, Tensor]:
        h, w = src_bgr.shape[2:]
        if tuple(coarse.shape[2:]) != (h // 4, w // 4):
            return super()._refine_patches(src_bgr, coarse, err, convs)
        # Selection and scatter as in Refiner._refine_patches; only the patch inputs differ.
        err = F.interpolate(err, (h // 4, w // 4), mode="bilinear", align_corners=False)
        ref = self.select_refinement_regions(err)
        found = torch.nonzero(ref.squeeze(1))
        idx = found[:, 0], found[:, 1], found[:, 2]
        # Contiguous first: upsampling 4 channels-last channels is half as fast as 4 planes,
        # and the planar result keeps the frame conversions after it cheap.
        out = F.interpolate(
            coarse[:, -4:].contiguous(), (h, w), mode="bilinear", align_corners=False
        )
        if idx[0].size(0) > 0:
            out = replace_patch(out, self._refine_selected(src_bgr, coarse, idx, convs), idx)
        return out[:, :1], out[:, 1:], ref

    def _refine_selected(
        self, src_bgr: Tensor, coarse: Tensor, idx: Index, convs: ConvsFn
    ) -> Tensor:
        """[P, 4, 4, 4] refined alpha and foreground residual of the patches at `idx`."""
        top, left = int(idx[1].min()), int(idx[2].min())
        rows, cols = int(idx[1].max()) - top + 1, int(idx[2].max()) - left + 1
        frame = self._frame_sources(src_bgr, coarse, convs)  # once a frame: windows come from it
        if coarse.shape[0] > 1 or rows * cols > self.DENSE_RATIO * idx[0].size(0):
            return self._refine_windows(frame, idx, (1, 1), convs)
        corner = (idx[0][:1], idx[1].new_tensor([top]), idx[2].new_tensor([left]))
        if frame.folded:
            return self._refine_in_box(frame, idx, corner, (rows, cols))
        dense = self._refine_windows(frame, corner, (rows, cols), convs)
        blocks = dense.reshape(4, rows, PATCH, cols, PATCH).permute(1, 3, 0, 2, 4)
        return blocks[idx[1] - top, idx[2] - left]

    def _frame_sources(self, src_bgr: Tensor, coarse: Tensor, convs: ConvsFn) -> _Sources:
        """What this frame's windows are cut from (see `_Sources`)."""
        return _Sources(
            self._pad_coarse(coarse),
            _pad_nhwc(_halved(src_bgr), self._paddings()[0]),
            _pad_nhwc(src_bgr, self._paddings()[1]),
            self._folds(convs),
        )

    def _refine_windows(
        self, frame: _Sources, corners: Index, cells: tuple[int, int], convs: ConvsFn
    ) -> Tensor:
        """`convs` on windows of `cells` quarter-resolution cells at `corners`.

        With its own kernel-3 convolutions the upsamplings are folded into conv1 and conv3
        (`_phase_conv1`, `_full_resolution`); any other `convs` (a static engine) gets the
        windows as they are.
        """
        if not frame.folded:
            return convs(*self._window_inputs(frame, corners, cells))
        hidden = self.after_conv1(self._phase_conv1(frame, corners, cells))
        return self._full_resolution(hidden, self._full_windows(frame, corners, cells))

    def _full_resolution(self, x: Tensor, y: Tensor) -> Tensor:
        """`full_resolution` as 2x2 convolutions per output parity, nothing upsampled.

        conv3 reads x nearest-upsampled x2 (folded as `_phase_conv1` folds conv1's bilinear
        one) and the full-resolution source, here as the windows' space-to-depth y: one
        convolution of both gives conv3's output as four parity planes at half resolution.
        conv4 reads those planes the same way (`space_to_depth_weights`), so only its 4-channel
        output is interleaved back to full resolution. (bn3 is folded into conv3: see `like`.)
        """
        channels = x.shape[1]
        conv3 = self.conv3.weight
        kernels = torch.cat(
            [
                phase_weights(conv3[:, :channels], NEAREST_ROWS),
                space_to_depth_weights(conv3[:, channels:]),
            ],
            dim=1,
        )
        hidden = self.relu(F.conv2d(torch.cat([x, y], dim=1), kernels, per_parity(self.conv3)))
        out = F.conv2d(hidden, space_to_depth_weights(self.conv4.weight), per_parity(self.conv4))
        return depth_to_space(out, self.conv4.out_channels)

    def _folds(self, convs: ConvsFn) -> bool:
        """Whether `convs` is this refiner's own kernel-3 stack, whose upsamples the phase
        convolutions fold (`_phase_conv1`, `_full_resolution`)."""
        return convs == self.convs and self.kernel_size == 3

    def _refine_in_box(
        self, frame: _Sources, idx: Index, corner: Index, cells: tuple[int, int]
    ) -> Tensor:
        """[P, 4, 4, 4] for patches crowding the box of `cells` at `corner`: conv1 and conv2 run
        once over the box at half resolution, where neighbouring patches share most of their
        inputs; conv3 and conv4 at full resolution, most of the work, only on the selected
        patches' windows of conv2's output (4x4 at 2 x the patch's offset in the box)."""
        hidden = self.after_conv1(self._phase_conv1(frame, corner, cells))
        offsets = (idx[0], idx[1] - corner[1], idx[2] - corner[2])
        side = self.patch_shapes[0][1] - 4  # a patch's x window after two valid 3x3 convolutions
        windows = gather(hidden.permute(0, 2, 3, 1), offsets, 2, (side, side))
        return self._full_resolution(windows, self._full_windows(frame, idx, (1, 1)))

    def _phase_conv1(self, frame: _Sources, corners: Index, cells: tuple[int, int]) -> Tensor:
        """conv1 of the windows without upsampling their coarse channels first.

        conv1 reads the coarse channels after a x2 bilinear upsample, a fixed linear map, so
        conv1 of the upsample equals, for each of the four output pixel parities, one 3x3
        convolution of the quarter-resolution window itself (`phase_weights`), its outputs
        interleaved by `depth_to_space`. Same products, a quarter of the input to read, and no
        42-channel concatenation. Where a window reaches past the frame the original sees zeros
        instead of upsampled values: there a one-cell strip along that side is recomputed the
        original way (its conv1 rows are the window's outermost ones, which cover every row that
        sees the outside).
        """
        channels = frame.coarse.shape[3]
        half = self._paddings()[0]
        sides = (2 * cells[0] + 2 * half, 2 * cells[1] + 2 * half)
        weight, bias = self.conv1.weight, self.conv1.bias
        phases = F.conv2d(
            self._coarse_windows(frame, corners, cells), phase_weights(weight[:, :channels])
        )
        hidden = depth_to_space(phases, weight.shape[0])
        hidden += F.conv2d(gather(frame.half, corners, 2, sides), weight[:, channels:], bias)
        size = (frame.half.shape[1] - 2 * half, frame.half.shape[2] - 2 * half)
        for picked, corner, strip, where in _edge_strips(corners, cells, half, size):
            x = self._half_windows(frame, corner, strip)
            rows_cols = (picked, slice(None), *where)  # mypy misreads it inline as 3.11 syntax
            hidden[rows_cols] = self.conv1(x)
        return hidden

    def _window_inputs(
        self, frame: _Sources, corners: Index, cells: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """`convs`' inputs (x, y) for windows of `cells` quarter-resolution cells at `corners`."""
        return self._half_windows(frame, corners, cells), self._full_windows(frame, corners, cells)

    def _half_windows(self, frame: _Sources, corners: Index, cells: tuple[int, int]) -> Tensor:
        """conv1's input x for windows of `cells` quarter-resolution cells at `corners`.

        A window of r x c cells at quarter position (y, x) needs half-resolution rows
        2y - half .. 2(y + r) + half of the half-resolution frame, zero outside it. Their coarse
        part is cut from the 2x bilinear upsample of quarter-resolution rows y - reach ..
        y + r - 1 + reach (edges replicated, as interpolate clamps; the rows used never touch
        the window's own edges); their source part from the source's half-resolution copy.
        Channels-last, because oneDNN runs the refiner's convolutions on it about twice as fast.
        """
        half = self._paddings()[0]
        reach = (half + 2) // 2
        sides = (2 * cells[0] + 2 * half, 2 * cells[1] + 2 * half)  # half-resolution rows, cols
        first = 2 * reach - half  # the window upsample's row that is the first one needed
        windows = self._coarse_windows(frame, corners, cells)
        upsampled = F.interpolate(windows, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = torch.cat(
            [
                upsampled[:, :, first : first + sides[0], first : first + sides[1]],
                gather(frame.half, corners, 2, sides),
            ],
            dim=1,
        ).contiguous(memory_format=torch.channels_last)
        height, width = frame.half.shape[1] - 2 * half, frame.half.shape[2] - 2 * half
        _zero_outside(x[:, : frame.coarse.shape[3]], corners, sides, half, height, width)
        return x

    def _pad_coarse(self, coarse: Tensor) -> Tensor:
        """The quarter-resolution coarse output [B, C, h, w] as [B, h + 2 reach, w + 2 reach, C],
        edges replicated (as interpolate clamps): what every window's coarse part is cut from."""
        reach = (self._paddings()[0] + 2) // 2
        return F.pad(coarse, (reach,) * 4, mode="replicate").permute(0, 2, 3, 1).contiguous()

    def _coarse_windows(self, frame: _Sources, corners: Index, cells: tuple[int, int]) -> Tensor:
        """[P, C, r + 2 reach, c + 2 reach] channels-last quarter-resolution windows around the
        cells: what the x2 upsample of the window's rows needs."""
        reach = (self._paddings()[0] + 2) // 2
        return gather(frame.coarse, corners, 1, (cells[0] + 2 * reach, cells[1] + 2 * reach))

    def _full_windows(self, frame: _Sources, corners: Index, cells: tuple[int, int]) -> Tensor:
        """conv3's full-resolution source windows, zero outside the frame, channels last: as
        they are, or space-to-depth (half the side, four times the channels) when folded."""
        full = self._paddings()[1]
        sides = (PATCH * cells[0] + 2 * full, PATCH * cells[1] + 2 * full)
        return gather(frame.full, corners, PATCH, sides, 2 if frame.folded else 1)


class _Sources(NamedTuple):
    """What every window of one frame is cut from, each [B, h, w, C] contiguous (`gather`)."""

    coarse: Tensor  # quarter resolution, edges replicated (`_pad_coarse`)
    half: Tensor  # source and plate at half resolution, zero-padded by the half context
    full: Tensor  # source and plate at full resolution, zero-padded by the full context
    folded: bool  # the refiner's own convolutions, upsamples folded (`_folds`)


def _halved(nchw: Tensor) -> Tensor:
    """Bilinear x1/2, as the official refiner makes its half-resolution source."""
    size = (nchw.shape[2] // 2, nchw.shape[3] // 2)
    return F.interpolate(nchw, size, mode="bilinear", align_corners=False)


def _pad_nhwc(nchw: Tensor, padding: int) -> Tensor:
    """[B, C, H, W] -> [B, H + 2 padding, W + 2 padding, C] contiguous, zero-padded: one copy."""
    return F.pad(nchw.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))


def _edge_windows(
    corners: Index, sides: tuple[int, int], half: int, height: int, width: int
) -> Tensor:
    """Indices of the windows whose half-resolution rows 2y - half .. (and columns) reach past
    a height x width half-resolution frame."""
    top, left = 2 * corners[1] - half, 2 * corners[2] - half
    edge = (top < 0) | (top + sides[0] > height) | (left < 0) | (left + sides[1] > width)
    return torch.nonzero(edge).squeeze(1)


def _edge_strips(
    corners: Index, cells: tuple[int, int], half: int, frame: tuple[int, int]
) -> Iterator[tuple[Tensor, Index, tuple[int, int], tuple[slice, slice]]]:
    """For each side of the frame that windows of `cells` at `corners` reach past: (the windows'
    indices, the corners of their one-cell strips along that side, the strips' cells, where
    the strips' conv1 rows and columns lie in the window's)."""
    rows, cols = cells
    band = 2 * half  # conv1 rows of a one-cell strip
    top, left = 2 * corners[1] - half, 2 * corners[2] - half
    sides = [
        (top < 0, (0, 0), (1, cols), (slice(0, band), slice(None))),
        (
            top + 2 * rows + 2 * half > frame[0],
            (rows - 1, 0),
            (1, cols),
            (slice(-band, None), slice(None)),
        ),
        (left < 0, (0, 0), (rows, 1), (slice(None), slice(0, band))),
        (
            left + 2 * cols + 2 * half > frame[1],
            (0, cols - 1),
            (rows, 1),
            (slice(None), slice(-band, None)),
        ),
    ]
    for reaches, (down, across), strip, where in sides:
        picked = torch.nonzero(reaches).squeeze(1)
        if picked.numel() > 0:
            corner = (corners[0][picked], corners[1][picked] + down, corners[2][picked] + across)
            yield picked, corner, strip, where


def _zero_outside(
    x: Tensor, corners: Index, sides: tuple[int, int], half: int, height: int, width: int
) -> None:
    """Zero, in place, what of the windows x [P, C, h, w] at half-resolution rows 2y - half ..
    lies outside a height x width frame (the zero padding of the original); only windows on
    the frame's edge are touched."""
    picked = _edge_windows(corners, sides, half, height, width)
    if picked.numel() == 0:
        return
    top, left = 2 * corners[1] - half, 2 * corners[2] - half
    rows = top[picked, None] + torch.arange(sides[0], device=x.device)
    cols = left[picked, None] + torch.arange(sides[1], device=x.device)
    row_ok = (rows >= 0) & (rows < height)
    col_ok = (cols >= 0) & (cols < width)
    x[picked] = x[picked] * (row_ok[:, None, :, None] & col_ok[:, None, None, :]).to(x.dtype)
