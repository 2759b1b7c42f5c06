"""BackgroundMattingV2 with TensorRT FP16 engines (torch2trt) for its two static pieces ("trt-fp16").

TensorRT takes static shapes only and cannot express the refiner's data-dependent steps (top-k
over 5,000 patches exceeds its k <= 3840; `nonzero` has no fixed size). So only the base network
(`BaseNetwork`) and the refiner's convolutions on a fixed number of patches (`PatchRefiner`,
`FixedCountConvs`) become engines; resizing, patch selection, cropping and scattering run in torch
on the GPU (`MattingRefine.forward_with`), the frame handling is `TorchEngine`'s.

Engines are built on first use (minutes on a Jetson, with systemd's start timeout extended and
its watchdog fed: `Notifier.extending`), checked against torch on fresh random inputs (torch2trt
bakes an op it cannot convert into a constant from the build's examples), and kept in the
`EngineCache` with failed builds remembered, so a restart loads them in seconds or falls back to
torch at once. The host <-> device copies left per frame: docs/performance.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import torch
from torch import Tensor, nn

from edge_matte.config.schema import MattingConfig
from edge_matte.engine import trt_converters
from edge_matte.engine.cache import EngineCache
from edge_matte.engine.static import (
    FixedCountConvs,
    base_example,
    default_patch_count,
    full_examples,
    patch_examples,
)
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.errors import EngineError
from edge_matte.model.checkpoint import weights_digest
from edge_matte.model.model import BaseFn, BaseNetwork, MattingRefine, PatchRefiner
from edge_matte.model.refiner import ConvsFn
from edge_matte.runtime.notify import Notifier

_LOG = logging.getLogger(__name__)

ENVIRONMENT_FIELDS = ("backend", "device")  # cache fields that describe the machine
BUILD_EXTEND_S = 90.0  # each systemd start-timeout extension while engines build
BUILD_LIMIT_S = 3600.0  # keep-alives stop after this: a build that long has hung, let systemd act
AGREEMENT = 0.1  # an engine must match torch within this fraction of the output's range (>= 1)
_WORKSPACE = 1 << 28  # TensorRT builder workspace: room for the faster tactics, small for Orin


class Converter(Protocol):
    """Turns a static-shape torch module into an engine module, and restores one from its state."""

    name: str  # the engine's name, e.g. "trt-fp16"
    precision: str  # e.g. "fp16"
    backend: str  # e.g. "tensorrt-8.6.2": engines are valid for this version only
    device: str  # the torch device engines run on, e.g. "cuda"
    device_name: str  # e.g. "Orin": engines are valid for this GPU only

    def convert(self, module: nn.Module, inputs: Sequence[Tensor]) -> nn.Module:
        """An engine computing `module` for exactly these input shapes (may take minutes).

        Raises anything on failure (the caller turns every exception into an EngineError).
        """
        ...

    def restore(self, module: nn.Module, state: Mapping[str, Any]) -> nn.Module:
        """The engine `convert` made for `module`, from its `state_dict()`."""
        ...


class Torch2TrtConverter:
    """torch2trt with `fp16_mode=True`: FP16 where TensorRT finds it faster, FP32 elsewhere.

    Raises EngineError where CUDA, TensorRT or torch2trt is missing (they exist on Jetsons).
    `device` "cpu" only converts (over a TensorRT stand-in, to test which ops have converters).
    """

    name = "trt-fp16"
    precision = "fp16"

    def __init__(self, device: str = "cuda") -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("trt: no CUDA device is available")
        self.device = device
        try:
            import tensorrt
            from torch2trt import TRTModule, torch2trt
        except ImportError as err:
            raise EngineError(
                f"trt: TensorRT or torch2trt is not installed ({err}); "
                "they come with JetPack and torch2trt's source install"
            ) from err
        trt_converters.register()
        self._torch2trt = torch2trt
        self._module_class = TRTModule
        self.backend = f"tensorrt-{tensorrt.__version__}"
        self.device_name = torch.cuda.get_device_name() if device == "cuda" else device

    def convert(self, module: nn.Module, inputs: Sequence[Tensor]) -> nn.Module:
        # Explicit-batch torch2trt (its current master): the inputs' shapes are the engine's only shapes.
        with trt_converters.torch_left_as_found():
            engine = self._torch2trt(
                module,
                list(inputs),
                fp16_mode=True,
                max_workspace_size=_WORKSPACE,  # TensorRT < 10; 10 sizes its own memory pools
                keep_network=False,  # the network definition is only needed while building
            )
        if getattr(engine, "engine", None) is None:  # torch2trt wraps a failed build, too
            raise EngineError("TensorRT's builder returned no engine (its log above says why)")
        return engine

    def restore(self, module: nn.Module, state: Mapping[str, Any]) -> nn.Module:
        engine = self._module_class()
        engine.load_state_dict(dict(state))
        return engine


@dataclass(frozen=True)
class _Pieces:
    """The engines for one padded input size, as `forward_with` takes them."""

    size: tuple[int, int]
    base: BaseFn
    convs: ConvsFn


class TrtEngine(TorchEngine):
    """The MattingEngine with accelerated static pieces ("trt-fp16" with the default converter).

    Args:
        config: the matting section; `weights` is required (its digest keys the cache).
        cache: where engines and failed builds are kept (`engine_cache(directory)` removes
            engines superseded by a TensorRT or GPU change).
        converter: default `Torch2TrtConverter()` (EngineError where it cannot exist).
        patch_count: patches per refiner engine call; default `default_patch_count` for the
            frame size (sample_pixels // 16).
        notifier: systemd, told while engines build (start timeout extended, watchdog kept
            alive, STATUS); default none.
    """

    def __init__(
        self,
        config: MattingConfig,
        cache: EngineCache,
        converter: Converter | None = None,
        patch_count: int | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        if patch_count is not None and patch_count < 1:
            raise ValueError(f"patch count must be >= 1, got {patch_count}")
        self._converter = converter or Torch2TrtConverter()
        super().__init__(config, device=self._converter.device)
        self.name = self._converter.name
        if config.weights is None:  # TorchEngine refused it before; the digest needs it too
            raise EngineError(f"{self.name} needs matting.weights: they key the engine cache")
        self._digest = weights_digest(config.weights)
        self._cache = cache
        self._patch_count = patch_count
        self._notifier = notifier or Notifier(None)
        self._pieces: _Pieces | None = None

    @classmethod
    def from_model(cls, model: MattingRefine, device: str = "cuda", threads: int = 0) -> NoReturn:
        """Not available: engines are cached under the weights file's digest; use TrtEngine(config, cache)."""
        raise TypeError(
            "TrtEngine needs matting.weights (it keys the engine cache); use TrtEngine(config, cache)"
        )

    def prepare(self, height: int, width: int) -> tuple[BaseFn, ConvsFn]:
        """Build or load the engines for height x width frames now, not on the first frame.

        Returns them as `forward_with` takes them (base, convs), for callers that time them.
        """
        pieces = self._pieces_for(*self.padded_size(height, width))
        return pieces.base, pieces.convs

    def infer(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor]:
        pieces = self._pieces_for(src.size(2), src.size(3))
        model = self._require_model()
        pha, fgr = model.forward_with(src, bgr, pieces.base, pieces.convs)[:2]
        return pha, fgr

    def close(self) -> None:
        self._pieces = None
        super().close()

    def _pieces_for(self, height: int, width: int) -> _Pieces:
        if self._pieces is not None and self._pieces.size == (height, width):
            return self._pieces
        self._pieces = None  # free the old size's engines before building new ones
        started = time.monotonic()
        # torch2trt traces ordinary no-grad tensors; `matte` runs under inference mode.
        with (
            self._notifier.extending(BUILD_EXTEND_S, BUILD_LIMIT_S),
            torch.inference_mode(False),
            torch.no_grad(),
        ):
            self._pieces = self._build(height, width)
        _LOG.info(
            "%s engines ready for %dx%d in %.1f s",
            self.name,
            width,
            height,
            time.monotonic() - started,
        )
        return self._pieces

    def _build(self, height: int, width: int) -> _Pieces:
        model = self._require_model()
        dtype, device = self.dtype, self.device
        base = self._piece(
            "base",
            BaseNetwork(model).eval(),
            lambda: [base_example(model, height, width, dtype, device)],
            {
                "input": [height, width],
                "backbone_scale": model.backbone_scale,
                "base_input": list(model.base_size(height, width)),
            },
        )
        refiner, kernel_size = PatchRefiner(model.refiner).eval(), model.refiner.kernel_size
        if model.refiner.mode == "full":
            convs = self._piece(
                "refiner-full",
                refiner,
                lambda: full_examples(model.refiner, height, width, dtype, device),
                {"input": [height, width], "kernel_size": kernel_size},
            )
            return _Pieces((height, width), base, convs)
        count = self._patch_count or default_patch_count(model, height, width)
        patches = self._piece(
            "refiner-patches",
            refiner,
            lambda: patch_examples(model.refiner, count, dtype, device),
            {"patch_count": count, "kernel_size": kernel_size},
        )
        return _Pieces((height, width), base, FixedCountConvs(patches, count))

    def _fields(self, piece: str, shapes: Mapping[str, Any]) -> dict[str, Any]:
        """The cache fields of one piece: what it computes, its shapes and the machine it is for."""
        converter = self._converter
        return {
            "piece": piece,
            "weights": self._digest,
            "precision": converter.precision,
            "backend": converter.backend,
            "device": converter.device_name,
            **shapes,
        }

    def _piece(
        self,
        piece: str,
        module: nn.Module,
        examples: Callable[[], Sequence[Tensor]],
        shapes: Mapping[str, Any],
    ) -> nn.Module:
        """The engine for one piece: from the cache when it loads and agrees with torch, else built.

        `examples` makes new random inputs at each call: one set to build with, others to check.
        """
        fields = self._fields(piece, shapes)
        cached = self._cache.load(fields)
        if cached is not None:
            engine = self._restore(piece, module, cached, examples())
            if engine is not None:
                return engine
        failed = self._cache.failure(fields)
        if failed is not None:
            raise EngineError(
                f"{self.name}: the '{piece}' engine failed to build before ({failed}); not "
                "retried until the weights, TensorRT or the GPU change, or `edge-matte run --rebuild`"
            )
        try:
            engine, state = self._build_piece(piece, module, examples)
        except EngineError as err:
            self._cache.remember_failure(fields, str(err))
            raise
        self._cache.save(fields, state)
        return engine

    def _build_piece(
        self, piece: str, module: nn.Module, examples: Callable[[], Sequence[Tensor]]
    ) -> tuple[nn.Module, Mapping[str, Any]]:
        """A new engine for one piece and its state dict; EngineError for every way it can fail."""
        inputs = examples()
        shape_text = " ".join(str(tuple(x.shape)) for x in inputs)
        self._notifier.status(f"building {self.name} engine '{piece}' for {shape_text}")
        _LOG.info(
            "building %s engine '%s' for %s (minutes on a Jetson)", self.name, piece, shape_text
        )
        started = time.monotonic()
        try:
            engine = self._converter.convert(module, inputs)
            problem = _disagreement(module, engine, examples())
            state = engine.state_dict() if problem is None else None
        except Exception as err:  # a converter's failures have no common type: fall back
            raise EngineError(f"{self.name}: building the '{piece}' engine failed: {err}") from err
        if state is None:
            raise EngineError(f"{self.name}: the '{piece}' engine disagrees with torch: {problem}")
        _LOG.info("built %s engine '%s' in %.1f s", self.name, piece, time.monotonic() - started)
        return engine, state

    def _restore(
        self, piece: str, module: nn.Module, state: Mapping[str, Any], inputs: Sequence[Tensor]
    ) -> nn.Module | None:
        """The cached engine, or None (logged) when it does not load or run correctly here."""
        try:
            engine = self._converter.restore(module, state)
            problem = _disagreement(module, engine, inputs)
        except Exception as err:  # a deserializer's failures have no common type: rebuild
            engine, problem = None, f"does not load ({type(err).__name__}: {err})"
        if engine is None or problem is not None:
            _LOG.warning(
                "cached %s engine '%s' rejected, rebuilding: %s", self.name, piece, problem
            )
            return None
        _LOG.info("%s engine '%s' loaded from the cache", self.name, piece)
        return engine


def engine_cache(directory: Path) -> EngineCache:
    """The engine cache in `directory` (e.g. `<cache dir>/engines`), dropping superseded engines."""
    return EngineCache(directory, ENVIRONMENT_FIELDS)


def _disagreement(module: nn.Module, engine: nn.Module, inputs: Sequence[Tensor]) -> str | None:
    """Why `engine` is not `module` on `inputs` (a broken conversion), or None when it agrees."""
    expected, got = module(*inputs), engine(*inputs)
    if not isinstance(got, Tensor) or got.shape != expected.shape:
        return (
            f"output {getattr(got, 'shape', type(got).__name__)} instead of {tuple(expected.shape)}"
        )
    if not bool(torch.isfinite(got).all()):
        return "non-finite outputs"
    error = (got.float() - expected.float()).abs().max().item()
    scale = max(expected.float().abs().max().item(), 1.0)
    if error > AGREEMENT * scale:
        return f"max abs error {error:.3g} for outputs up to {scale:.3g}"
    return None
