"""The fast CPU path: the same FP32 model, less memory traffic per frame.

What `optimize_for_cpu` changes, measured on 2 cores of an AMD EPYC (KVM) at 1280x720 with 5,000
refined patches a frame (`edge-matte bench`; quiet machine, medians):

* The refiner's inputs come from windows (`WindowRefiner`): the official code resizes all 42
  refiner channels to half the frame's resolution, pads that and cuts the selected patches out
  of it; cutting small windows from the quarter-resolution output and interpolating only those
  gives the same values. Refiner 278 -> 171 ms.
* conv1 folded over the x2 upsample (`WindowRefiner._phase_conv1`): conv1 reads the coarse
  channels bilinearly upsampled from quarter to half resolution; both are linear, so four 3x3
  "phase" kernels on the quarter-resolution window give the same values without the upsample
  and the 42-channel concatenation. Refiner, 5,000 patches: about 100 ms less per frame.
  conv3 reads conv2's activations nearest-upsampled x2 and the full-resolution source: as 2x2
  kernels per output parity on x and on the source's space-to-depth windows (one convolution
  of both), and conv4 on conv3's parity planes the same way, nothing runs at full resolution
  but the 4-channel output's interleave (`_full_resolution`). About 15 ms less per frame.
* Windows gathered by one `index_select` of whole pixels (`_gather`), 4x faster than indexing
  by three per-float index tensors; parity planes interleaved in runs of channels
  (`_depth_to_space`), 2-6x faster than `pixel_shuffle` on channels-last tensors.
* Where the selected patches crowd their box (a subject's region crop), conv1 and conv2 run
  once over the box and conv3 and conv4, most of the work, only on the selected patches.
* BatchNorm folded into the convolutions (`model.fuse`): one pass per activation instead of
  two. About 2%: eval-mode BatchNorm is cheap next to the convolutions.
* Channels-last weights and inputs: oneDNN's depthwise, 1x1 and small-patch convolutions run
  faster on NHWC. Base network 87 -> 62 ms.
* Subnormal floats flushed to zero (`torch.set_flush_denormal`, process-wide): trained weights
  can produce tiny activations, and subnormal arithmetic is many times slower on x86; only
  values below 1.2e-38 change (to 0). Not measurable with random weights.
* Optionally the base network in ONNX Runtime (`OrtBaseNetwork`), exported with dynamic height
  and width (region crops vary); the refiner stays in torch. About as fast as the torch base
  here, so it is an option, not the default.

Whole engine call with frame conversion (`TorchEngine`, which also converts an unchanged plate
only once): 429 -> 229 ms (x1.87) in one interleaved run before the conv3/conv4 folding and the
gathers, and 272 -> 196 ms (-28%) more from those and `memory.keep_freed_memory` together;
`edge-matte bench` measures it anew.
bf16 is not used: it needs AVX512-BF16 or AMX to beat FP32 (this CPU has neither and would
emulate it); the Jetson runs FP16 on its GPU instead.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import EngineError
from edge_matte.model.fuse import fold_batchnorm
from edge_matte.model.model import BaseFn, BaseNetwork, MattingBase, MattingRefine
from edge_matte.model.refiner import PATCH, ConvsFn, Index, Refiner, replace_patch

_LOG = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


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
        conv4 reads those planes the same way (`_space_to_depth_weights`), so only its 4-channel
        output is interleaved back to full resolution. (bn3 is folded into conv3: see `like`.)
        """
        channels = x.shape[1]
        conv3 = self.conv3.weight
        kernels = torch.cat(
            [
                _phase_weights(conv3[:, :channels], _NEAREST_ROWS),
                _space_to_depth_weights(conv3[:, channels:]),
            ],
            dim=1,
        )
        hidden = self.relu(F.conv2d(torch.cat([x, y], dim=1), kernels, _per_parity(self.conv3)))
        out = F.conv2d(hidden, _space_to_depth_weights(self.conv4.weight), _per_parity(self.conv4))
        return _depth_to_space(out, self.conv4.out_channels)

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
        windows = _gather(hidden.permute(0, 2, 3, 1), offsets, 2, (side, side))
        return self._full_resolution(windows, self._full_windows(frame, idx, (1, 1)))

    def _phase_conv1(self, frame: _Sources, corners: Index, cells: tuple[int, int]) -> Tensor:
        """conv1 of the windows without upsampling their coarse channels first.

        conv1 reads the coarse channels after a x2 bilinear upsample, a fixed linear map, so
        conv1 of the upsample equals, for each of the four output pixel parities, one 3x3
        convolution of the quarter-resolution window itself (`_phase_weights`), its outputs
        interleaved by `_depth_to_space`. Same products, a quarter of the input to read, and no
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
            self._coarse_windows(frame, corners, cells), _phase_weights(weight[:, :channels])
        )
        hidden = _depth_to_space(phases, weight.shape[0])
        hidden += F.conv2d(_gather(frame.half, corners, 2, sides), weight[:, channels:], bias)
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
                _gather(frame.half, corners, 2, sides),
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
        return _gather(frame.coarse, corners, 1, (cells[0] + 2 * reach, cells[1] + 2 * reach))

    def _full_windows(self, frame: _Sources, corners: Index, cells: tuple[int, int]) -> Tensor:
        """conv3's full-resolution source windows, zero outside the frame, channels last: as
        they are, or space-to-depth (half the side, four times the channels) when folded."""
        full = self._paddings()[1]
        sides = (PATCH * cells[0] + 2 * full, PATCH * cells[1] + 2 * full)
        return _gather(frame.full, corners, PATCH, sides, 2 if frame.folded else 1)


class _Sources(NamedTuple):
    """What every window of one frame is cut from, each [B, h, w, C] contiguous (`_gather`)."""

    coarse: Tensor  # quarter resolution, edges replicated (`_pad_coarse`)
    half: Tensor  # source and plate at half resolution, zero-padded by the half context
    full: Tensor  # source and plate at full resolution, zero-padded by the full context
    folded: bool  # the refiner's own convolutions, upsamples folded (`_folds`)


# What a 3x3 kernel reads of a x2 upsample at an even (0) or odd (1) output row: for each of its
# three taps, the weights of the input rows under it (three for bilinear with
# align_corners=False, two for nearest).
_UPSAMPLE_ROWS = (
    ((0.75, 0.25, 0.0), (0.25, 0.75, 0.0), (0.0, 0.75, 0.25)),
    ((0.25, 0.75, 0.0), (0.0, 0.75, 0.25), (0.0, 0.25, 0.75)),
)
_NEAREST_ROWS = (((1.0, 0.0), (1.0, 0.0), (0.0, 1.0)), ((1.0, 0.0), (0.0, 1.0), (0.0, 1.0)))


def _phase_weights(
    weight: Tensor, rows: tuple[tuple[tuple[float, ...], ...], ...] = _UPSAMPLE_ROWS
) -> Tensor:
    """[4 O, I, k, k] kernels, one per output parity (row, column), that applied to the input
    give `weight` [O, I, 3, 3] applied to its x2 upsample (`rows`: see above; k = 3 for
    bilinear, 2 for nearest); channels parity-major, as `_depth_to_space` reads them."""
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


def _space_to_depth_weights(weight: Tensor) -> Tensor:
    """[4 O, 4 I, 2, 2] kernels, one per output parity, that applied to the input's
    space-to-depth (`_gather` with block 2) give `weight` [O, I, 3, 3] (valid) applied to the
    input itself; the output channels ordered as `_depth_to_space` reads them."""
    taps = weight.new_tensor(_SPACE_TO_DEPTH_TAPS)  # [a, t, u, c]
    phases = torch.einsum("oits,atuc,bsvd->abocdiuv", weight, taps, taps)
    out, inputs = weight.shape[:2]
    return phases.reshape(4 * out, 4 * inputs, 2, 2).contiguous(memory_format=torch.channels_last)


def _per_parity(conv: nn.Conv2d) -> Tensor | None:
    """`conv`'s bias for its outputs as four parity planes (see `_depth_to_space`)."""
    return None if conv.bias is None else conv.bias.repeat(4)


def _halved(nchw: Tensor) -> Tensor:
    """Bilinear x1/2, as the official refiner makes its half-resolution source."""
    size = (nchw.shape[2] // 2, nchw.shape[3] // 2)
    return F.interpolate(nchw, size, mode="bilinear", align_corners=False)


def _pad_nhwc(nchw: Tensor, padding: int) -> Tensor:
    """[B, C, H, W] -> [B, H + 2 padding, W + 2 padding, C] contiguous, zero-padded: one copy."""
    return F.pad(nchw.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))


def _depth_to_space(phases: Tensor, channels: int) -> Tensor:
    """[N, 4 C, h, w] parity-major phases ((2 row parity + column parity) C + c) -> [N, C, 2h, 2w]
    channels-last, the inverse of `_gather`'s block 2. `pixel_shuffle` orders channel-major, so on channels-last tensors it
    moves single floats; this moves runs of C: about 6x faster on a box, 2x on patches."""
    n, _, h, w = phases.shape
    blocks = phases.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, channels)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, channels).permute(0, 3, 1, 2)


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


def _gather(
    nhwc: Tensor, corners: Index, stride: int, size: tuple[int, int], block: int = 1
) -> Tensor:
    """[P, C, h, w] channels-last windows of a [B, H, W, C] tensor (contiguous, or it is
    copied), window i's corner at (stride y_i, stride x_i); with `block` 2 each window comes
    space-to-depth at no extra cost: [P, 4 C, h/2, w/2], each 2x2 block's pixels as channels,
    parity-major ((2 row parity + column parity) C + c).

    One `index_select` of whole pixels (C floats each) in the order they are wanted: about 4x
    faster than indexing with three index tensors, which computes an offset per float."""
    _batch, height, width, channels = nhwc.shape
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


def optimize_for_cpu(model: MattingRefine) -> MattingRefine:
    """A copy of `model` for FP32 CPU inference: window refiner, BatchNorm folded, channels-last.

    The copy is in eval mode without gradients; `model` itself is left as it was. Feed its base
    network channels-last input (`channels_last_base`) to avoid a layout change per layer.
    """
    fast = copy.deepcopy(model).float().eval()
    fast.refiner = WindowRefiner.like(fast.refiner)
    folded = fold_batchnorm(fast)
    fast.requires_grad_(False)
    _LOG.debug("optimize_for_cpu: folded %d BatchNorms", folded)
    return fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch takes it; its stubs omit it


def channels_last_base(model: MattingBase) -> BaseFn:
    """`model.base` taking its input channels-last (a BaseFn for `forward_with`)."""

    def base(x: Tensor) -> Tensor:
        return model.base(x.contiguous(memory_format=torch.channels_last))

    return base


class OrtBaseNetwork:
    """The base network run by ONNX Runtime on the CPU: a BaseFn for `forward_with`.

    Exported once (a few seconds) with dynamic height and width; the refiner stays in torch.
    Raises EngineError when onnxruntime is missing or the export fails.
    """

    def __init__(self, model: MattingBase, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise EngineError(f"onnxruntime is not installed: {err}") from err
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Its spinning workers would fight torch's for the cores while the refiner runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                export_base(model), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load the exported base network: {err}") from err

    def __call__(self, x: Tensor) -> Tensor:
        out = self._session.run(None, {"x": x.detach().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def export_base(model: MattingBase, size: tuple[int, int] = (64, 64)) -> bytes:
    """The base network as ONNX (opset 17), input "x" [1, 6, h, w], output "y", h and w dynamic."""
    wrapper = BaseNetwork(model).eval()  # export restores the wrapper's mode, so it must be eval
    example = torch.zeros(1, 6, *size, dtype=next(model.parameters()).dtype)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                wrapper,
                (example.contiguous(),),
                buffer,  # type: ignore[arg-type]  # torch's annotation omits the file objects it writes to
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}},
                opset_version=17,
            )
    except Exception as err:  # the exporter raises many unrelated types
        raise EngineError(f"cannot export the base network to ONNX: {err}") from err
    return buffer.getvalue()


class FastCpuEngine(TorchEngine):
    """TorchEngine on the CPU running `optimize_for_cpu`'s model ("torch-cpu+fast"), or with the
    base network in ONNX Runtime ("torch-cpu+ort"). Same frame handling, same FP32 alpha."""

    def __init__(self, config: MattingConfig, backend: str = "torch") -> None:
        super().__init__(config, device="cpu")
        self._optimize(backend, config.threads)

    @classmethod
    def from_model(
        cls, model: MattingRefine, device: str = "cpu", threads: int = 0, backend: str = "torch"
    ) -> FastCpuEngine:
        """An engine around an optimised copy of `model` (its refine settings apply)."""
        engine = super().from_model(model, device, threads)
        engine._optimize(backend, threads)
        return engine

    def _optimize(self, backend: str, threads: int) -> None:
        if self.device.type != "cpu":
            raise EngineError(f"the fast CPU path runs on the CPU, not {self.device}")
        if backend not in BACKENDS:
            raise EngineError(f"CPU backend {backend!r} is not one of {', '.join(BACKENDS)}")
        torch.set_flush_denormal(True)
        model = optimize_for_cpu(self._require_model())
        self.model = model
        self._base: BaseFn
        if backend == "onnxruntime":
            self._base = OrtBaseNetwork(model, threads)
            self.name = "torch-cpu+ort"
        else:
            self._base = channels_last_base(model)
            self.name = "torch-cpu+fast"
        _LOG.info("fast CPU path: %s", self.name)

    def infer(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor]:
        model = self._require_model()
        pha, fgr = model.forward_with(src, bgr, self._base, model.refiner.convs)[:2]
        return pha, fgr
