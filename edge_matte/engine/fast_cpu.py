"""The fast CPU path ("torch-cpu+fast"): the same FP32 model, less memory traffic per frame.

`optimize_for_cpu` swaps in the window refiner (`model.window_refiner`), folds BatchNorm into the
convolutions and makes weights and inputs channels-last (oneDNN's faster layout); subnormal
floats are flushed to zero. The base network may run in ONNX Runtime instead (`engine.ort`).
What each step gains, measured: docs/performance.md; `edge-matte bench` measures it anew.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor

from edge_matte.config.schema import MattingConfig
from edge_matte.engine.ort import OrtBaseNetwork
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import EngineError
from edge_matte.model.fuse import fold_batchnorm
from edge_matte.model.model import BaseFn, MattingBase, MattingRefine
from edge_matte.model.window_refiner import WindowRefiner

_LOG = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


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
