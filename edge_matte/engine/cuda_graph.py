"""BackgroundMattingV2 on torch-cuda without TensorRT: CUDA graphs and no host synchronisation.

On a GPU the model is launch-bound (see `graphs`), and today's patch selection makes the host
wait for the GPU every frame (`nonzero`). `GraphEngine` is `TorchEngine` with:
- `SyncFreeRefiner`: sampling mode refines exactly top-k's k patches, selected, cropped and
  scattered by index on the device (same result as `Refiner`'s selection);
- the whole forward pass as one `StaticGraph` where every shape is fixed (sampling and full
  mode), else (thresholding mode) graphs over the two static pieces: the base network and the
  refiner's convolutions on a fixed patch count (`FixedCountConvs`);
- the plate uploaded only when it changes (`TorchEngine` keeps an immutable plate's tensor).
On the CPU the graphs run eagerly, so the same code is what the CPU tests check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from edge_matte.config.schema import MattingConfig
from edge_matte.engine import MattingEngine
from edge_matte.engine.graphs import StaticGraph
from edge_matte.engine.static import FixedCountConvs, default_patch_count
from edge_matte.engine.sync_free import SyncFreeRefiner
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import EngineError

_PRECISIONS = {torch.float16: "fp16", torch.float32: "fp32"}


class GraphEngine(TorchEngine):
    """The MattingEngine "torch-cuda+graph-fp16" (or -fp32; "torch-cpu+graph-..." runs eagerly)."""

    def __init__(
        self, config: MattingConfig, device: str = "cuda", dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(config, device, dtype)
        model = self._require_model()
        model.refiner = SyncFreeRefiner.like(model.refiner)
        self.name = f"torch-{self.device.type}+graph-{_PRECISIONS.get(self.dtype, self.dtype)}"
        if model.refiner.mode == "thresholding":
            self._whole = None
            self._base = StaticGraph(model.base, "base network")
            self._convs = StaticGraph(model.refiner.convs, "refiner convolutions")
            self._fixed: dict[int, FixedCountConvs] = {}  # per patch count: reused buffers
        else:
            self._whole = StaticGraph(self._forward, f"{self.name} forward pass")

    def prepare(self, height: int, width: int) -> None:
        """Capture the graphs for height x width frames now, not on the first frame."""
        padded = self.padded_size(height, width)
        try:
            with torch.inference_mode():
                blank = torch.zeros((1, 3, *padded), dtype=self.dtype, device=self.device)
                self.infer(blank, blank.clone())
        except RuntimeError as err:  # CUDA out of memory...: the chain falls back
            raise EngineError(f"{self.name} failed to prepare {width}x{height}: {err}") from err

    def infer(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor]:
        if self._whole is not None:
            return self._whole(src, bgr)
        model = self._require_model()
        count = default_patch_count(model, src.size(2), src.size(3))
        if count not in self._fixed:
            self._fixed[count] = FixedCountConvs(self._convs, count)
        convs = self._fixed[count]
        pha, fgr = model.forward_with(src, bgr, self._base, convs)[:2]
        return pha, fgr

    def _forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor]:
        pha, fgr = self._require_model()(src, bgr)[:2]
        return pha, fgr


Wrap = Callable[[MattingEngine], MattingEngine]


def cuda_variants(
    config: MattingConfig, region: Wrap | None = None
) -> dict[str, Callable[[], MattingEngine]]:
    """Factories of GraphEngine on CUDA in FP16 and FP32, each also wrapped in `region` (subject-
    region inference) when given: name -> factory, today's default (FP16, regions) first."""
    wraps = (region, None) if region is not None else (None,)
    return {
        _PRECISIONS[dtype] + ("+region" if wrap else ""): functools.partial(
            _variant, config, dtype, wrap
        )
        for dtype in (torch.float16, torch.float32)
        for wrap in wraps
    }


def _variant(config: MattingConfig, dtype: torch.dtype, wrap: Wrap | None) -> MattingEngine:
    engine = GraphEngine(config, "cuda", dtype)
    return wrap(engine) if wrap is not None else engine
