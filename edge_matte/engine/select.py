"""Choose the best available engine and fall back along the chain when one fails.

Order: trt (torch2trt FP16 on a Jetson) -> torch-cuda (FP16) -> torch-cpu (FP32) -> classic
(weight-free). Without weights only `classic` is possible. Every step down is an event, and
the engine in use is always reported, so a degraded appliance is visible rather than silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from edge_matte.config.profile import Profile
from edge_matte.config.schema import Config, MattingConfig
from edge_matte.engine import MattingEngine
from edge_matte.errors import CheckpointError, EngineError
from edge_matte.events import Emit, Event
from edge_matte.frames import Matte
from edge_matte.runtime.notify import Notifier

_LOG = logging.getLogger(__name__)

CHAIN = ("trt", "torch-cuda", "torch-cpu", "classic")

Builder = Callable[[MattingConfig, "Profile | None"], MattingEngine]


def _build_trt(config: MattingConfig, profile: Profile | None) -> MattingEngine:
    try:
        from edge_matte.engine.trt import (  # torch2trt exists only on Jetsons
            TrtEngine,
            engine_cache,
        )
    except ImportError as err:
        raise EngineError(f"trt: not available here ({err})") from err
    cache = engine_cache(Config(matting=config).resolved_cache_dir() / "engines")
    return TrtEngine(config, cache, notifier=Notifier.from_env())


def _build_torch_cuda(config: MattingConfig, profile: Profile | None) -> MattingEngine:
    import torch

    if not torch.cuda.is_available():
        raise EngineError("torch-cuda: no CUDA device is available")
    from edge_matte.engine.choose import FastestChoice
    from edge_matte.engine.cuda_graph import cuda_variants

    # Region inference and FP16 are each faster on some GPUs and slower on others: each variant
    # is timed at `prepare`; today's default (FP16 with regions) runs until then.
    region = (lambda engine: _with_region(engine, config)) if config.region.enabled else None
    return FastestChoice(cuda_variants(config, region))


def _build_torch_cpu(config: MattingConfig, profile: Profile | None) -> MattingEngine:
    if config.cpu_optimize:
        from edge_matte.engine.fast_cpu import FastCpuEngine

        engine: MattingEngine = FastCpuEngine(config, backend=config.cpu_backend)
    else:
        from edge_matte.engine.torch_engine import TorchEngine

        engine = TorchEngine(config, device="cpu")
    return _with_region(engine, config)


def _with_region(engine: MattingEngine, config: MattingConfig) -> MattingEngine:
    """Subject-region inference around a torch engine (not TensorRT: its shapes are fixed)."""
    if not config.region.enabled:
        return engine
    from edge_matte.engine.region import RegionEngine

    settings = config.region.model_dump(exclude={"enabled"})
    return RegionEngine(engine, config.backbone_scale, **settings)


def _build_classic(config: MattingConfig, profile: Profile | None) -> MattingEngine:
    from edge_matte.engine.classic import ClassicEngine

    return ClassicEngine(config.classic, noise_floor=profile.noise_floor if profile else None)


BUILDERS: Mapping[str, Builder] = {
    "trt": _build_trt,
    "torch-cuda": _build_torch_cuda,
    "torch-cpu": _build_torch_cpu,
    "classic": _build_classic,
}


def candidates(config: MattingConfig) -> list[str]:
    """Engines to try, best first, for this config."""
    if config.weights is None:
        return ["classic"]
    if config.engine == "auto":
        return list(CHAIN)
    return list(CHAIN[CHAIN.index(config.engine) :])


class EngineChain:
    """The engine in use plus the ones below it; `matte` falls back on an EngineError."""

    def __init__(
        self,
        config: MattingConfig,
        emit: Emit,
        profile: Profile | None = None,
        builders: Mapping[str, Builder] = BUILDERS,
    ) -> None:
        self._config = config
        self._emit = emit
        self._profile = profile
        self._builders = builders
        self._wanted = candidates(config)
        self._remaining = list(self._wanted)
        # The CHAIN entry in use ("trt"); the engine's own name may say more ("trt-fp16").
        self._current = ""
        self.engine: MattingEngine = self._next(reason="start")

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def degraded(self) -> bool:
        """True when running below the best engine this config asked for."""
        return self._current != self._wanted[0]

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        """Matte with the current engine; on failure fall back (as far as needed) and retry the
        frame; EngineError once the chain is exhausted."""
        while True:
            try:
                return self.engine.matte(image, plate)
            except EngineError as err:
                self.engine.close()
                self.engine = self._next(reason=f"{self.engine.name} failed: {err}")

    def prepare(self, height: int, width: int) -> None:
        """Build size-specific engines (TensorRT) before the first frame; fall back on failure."""
        while True:
            prepare = getattr(self.engine, "prepare", None)
            if prepare is None:
                return
            try:
                prepare(height, width)
                return
            except EngineError as err:
                self.engine.close()
                self.engine = self._next(reason=f"{self.engine.name} failed to build: {err}")

    def close(self) -> None:
        self.engine.close()

    def _next(self, reason: str) -> MattingEngine:
        failures = []
        while self._remaining:
            name = self._remaining.pop(0)
            try:
                engine = self._builders[name](self._config, self._profile)
            except (EngineError, CheckpointError) as err:  # a bad weights file degrades to classic
                failures.append(str(err) if str(err).startswith(f"{name}:") else f"{name}: {err}")
                _LOG.warning("engine %s unavailable: %s", name, err)
                continue
            # In use before it is announced: listeners read `name`/`degraded` on the event.
            self._current, self.engine = name, engine
            if reason != "start" or failures:
                self._emit(
                    Event(
                        "engine.fallback",
                        f"using {name} ({reason})",
                        {"engine": name, "reason": reason, "skipped": failures},
                    )
                )
            return engine
        raise EngineError("no matting engine could be started: " + "; ".join(failures or [reason]))
