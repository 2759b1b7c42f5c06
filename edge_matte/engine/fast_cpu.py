"""The fast CPU path: the same FP32 model, less memory traffic per frame.

What `optimize_for_cpu` changes, measured on 2 cores of an AMD EPYC (KVM) at 1280x720 with 5,000
refined patches a frame (benchmarks/perf_bench.py; quiet machine, medians):

* The refiner's inputs come from windows (`WindowRefiner`): the official code resizes all 42
  refiner channels to half the frame's resolution, pads that and cuts the selected patches out
  of it; cutting small windows from the quarter-resolution output and interpolating only those
  gives the same values. Where the selected patches crowd their bounding box (a region crop, a
  small frame) the box is refined densely instead. Refiner 278 -> 171 ms.
* BatchNorm folded into the convolutions (`model.fuse`): one pass per activation instead of
  two. About 2%: eval-mode BatchNorm is cheap next to the convolutions.
* Channels-last weights and inputs: oneDNN's depthwise, 1x1 and small-patch convolutions run
  faster on NHWC. Base network 87 -> 62 ms.
* Subnormal floats flushed to zero (`torch.set_flush_denormal`, process-wide): trained weights
  can produce tiny activations, and subnormal arithmetic is many times slower on x86; only
  values below 1.2e-38 change (to 0). Not measurable with random weights.
* Optionally the base network in ONNX Runtime (`OrtBaseNetwork`), exported with dynamic height
  and width (region crops vary); the refiner stays in torch. As fast as the torch base here
  (275 vs 284 ms a frame), so it is an option, not the default.

Whole model: 345 -> 232 ms (x1.48); whole engine call with frame conversion: 363 -> 284 ms
(x1.28). bf16 is not used: it needs AVX512-BF16 or AMX to beat FP32 (this CPU has neither and
would emulate it); the Jetson runs FP16 on its GPU instead.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings

import torch
from torch import Tensor
from torch.nn import functional as F

from ..config import MattingConfig
from ..errors import EngineError
from ..model.fuse import fold_batchnorm
from ..model.model import BaseNetwork, MattingBase, MattingRefine
from ..model.refiner import PATCH, ConvsFn, Index, Refiner, replace_patch
from .torch_engine import TorchEngine

_LOG = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


class WindowRefiner(Refiner):
    """`Refiner` that builds its inputs from windows instead of whole-frame tensors.

    Same result as `Refiner` within float rounding; `convs` must accept any spatial size (as
    it does in "full" mode). Two ways to refine the selected patches, chosen per frame:

    * per patch: one 1x1-cell window per patch (see `_window_inputs`);
    * dense: one window over the selected patches' bounding box, refined as a whole (as "full"
      mode does), then the selected patches taken from it. A refined pixel depends only on the
      inputs around it, so both give the same values; dense is cheaper once the selected patches
      fill more than 1 / DENSE_RATIO of their box (overlapping patches share most of their
      work), e.g. a subject's region crop or a small frame.

    Applies when the base output is exactly a quarter of the frame (backbone_scale 1/4, the HD
    setting); otherwise it is `Refiner`.
    """

    # Box cells per selected patch below which dense refinement is cheaper: measured on 2 x86
    # cores, dense costs ~6 us per cell and per patch ~45 us per patch.
    DENSE_RATIO = 7

    @classmethod
    def like(cls, refiner: Refiner) -> WindowRefiner:
        """A WindowRefiner with `refiner`'s settings and (copied) parameters."""
        new = cls(
            refiner.mode,
            refiner.sample_pixels,
            refiner.threshold,
            refiner.kernel_size,
            refiner.prevent_oversampling,
        )
        new.load_state_dict(refiner.state_dict())
        return new.to(refiner.conv1.weight.device, refiner.conv1.weight.dtype).train(
            refiner.training
        )

    def _refine_patches(self, src_bgr: Tensor, coarse: Tensor, err: Tensor, convs: ConvsFn):
        h, w = src_bgr.shape[2:]
        if tuple(coarse.shape[2:]) != (h // 4, w // 4):
            return super()._refine_patches(src_bgr, coarse, err, convs)
        # Selection and scatter as in Refiner._refine_patches; only the patch inputs differ.
        err = F.interpolate(err, (h // 4, w // 4), mode="bilinear", align_corners=False)
        ref = self.select_refinement_regions(err)
        idx = torch.nonzero(ref.squeeze(1))
        idx = idx[:, 0], idx[:, 1], idx[:, 2]
        out = F.interpolate(coarse[:, -4:], (h, w), mode="bilinear", align_corners=False)
        if idx[0].size(0) > 0:
            out = replace_patch(out, self._refine_selected(src_bgr, coarse, idx, convs), idx)
        return out[:, :1], out[:, 1:], ref

    def _refine_selected(self, src_bgr: Tensor, coarse: Tensor, idx: Index, convs: ConvsFn):
        """[P, 4, 4, 4] refined alpha and foreground residual of the patches at `idx`."""
        top, left = int(idx[1].min()), int(idx[2].min())
        rows, cols = int(idx[1].max()) - top + 1, int(idx[2].max()) - left + 1
        if coarse.shape[0] > 1 or rows * cols > self.DENSE_RATIO * idx[0].size(0):
            return convs(*self._window_inputs(src_bgr, coarse, idx, (1, 1)))
        corner = (idx[0][:1], idx[1].new_tensor([top]), idx[2].new_tensor([left]))
        dense = convs(*self._window_inputs(src_bgr, coarse, corner, (rows, cols)))
        blocks = dense.reshape(4, rows, PATCH, cols, PATCH).permute(1, 3, 0, 2, 4)
        return blocks[idx[1] - top, idx[2] - left]

    def _window_inputs(
        self, src_bgr: Tensor, coarse: Tensor, corners: Index, cells: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """`convs`' inputs for windows of `cells` quarter-resolution cells at `corners`.

        A window of r x c cells at quarter position (y, x) needs half-resolution rows
        2y - half .. 2(y + r) + half of the half-resolution frame, zero outside it. Their coarse
        part is cut from the 2x bilinear upsample of quarter-resolution rows y - reach ..
        y + r - 1 + reach (edges replicated, as interpolate clamps; the rows used never touch
        the window's own edges); their source part from the source's half-resolution copy.
        Channels-last, because oneDNN runs the refiner's convolutions on it about twice as fast.
        """
        half, full = self._paddings()
        reach = (half + 2) // 2
        sides = (2 * cells[0] + 2 * half, 2 * cells[1] + 2 * half)  # half-resolution rows, cols
        first = 2 * reach - half  # the window upsample's row that is the first one needed
        padded = F.pad(coarse, (reach,) * 4, mode="replicate").permute(0, 2, 3, 1)
        windows = _gather(padded, corners, 1, (cells[0] + 2 * reach, cells[1] + 2 * reach))
        upsampled = F.interpolate(windows, scale_factor=2.0, mode="bilinear", align_corners=False)
        height, width = src_bgr.shape[2] // 2, src_bgr.shape[3] // 2
        source_half = F.interpolate(src_bgr, (height, width), mode="bilinear", align_corners=False)
        source_half = F.pad(source_half, (half,) * 4).permute(0, 2, 3, 1)
        x = torch.cat(
            [
                upsampled[:, :, first : first + sides[0], first : first + sides[1]],
                _gather(source_half, corners, 2, sides),
            ],
            dim=1,
        ).contiguous(memory_format=torch.channels_last)
        _zero_outside(x[:, : coarse.shape[1]], corners, sides, half, height, width)
        source = F.pad(src_bgr, (full,) * 4).permute(0, 2, 3, 1)
        y = _gather(
            source, corners, PATCH, (PATCH * cells[0] + 2 * full, PATCH * cells[1] + 2 * full)
        )
        return x, y.contiguous(memory_format=torch.channels_last)


def _gather(nhwc: Tensor, corners: Index, stride: int, size: tuple[int, int]) -> Tensor:
    """[P, C, h, w] channels-last windows of a [B, H, W, C] tensor, window i's corner at
    (stride y_i, stride x_i)."""
    down = torch.arange(size[0], device=nhwc.device)[None, :, None]
    across = torch.arange(size[1], device=nhwc.device)[None, None, :]
    rows = (stride * corners[1])[:, None, None] + down
    cols = (stride * corners[2])[:, None, None] + across
    return nhwc[corners[0][:, None, None], rows, cols].permute(0, 3, 1, 2)


def _zero_outside(
    x: Tensor, corners: Index, sides: tuple[int, int], half: int, height: int, width: int
) -> None:
    """Zero, in place, what of the windows x [P, C, h, w] at half-resolution rows 2y - half ..
    lies outside a height x width frame (the zero padding of the original); only windows on
    the frame's edge are touched."""
    top, left = 2 * corners[1] - half, 2 * corners[2] - half
    edge = (top < 0) | (top + sides[0] > height) | (left < 0) | (left + sides[1] > width)
    picked = torch.nonzero(edge).squeeze(1)
    if picked.numel() == 0:
        return
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
    return fast.to(memory_format=torch.channels_last)


def channels_last_base(model: MattingBase):
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
                buffer,
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
