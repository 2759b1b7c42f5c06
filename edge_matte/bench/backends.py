"""The engines the benchmark compares: the plain baseline and each backend available here.

The baseline is BackgroundMattingV2 as published: eager torch, FP32, on the CPU, with subnormal
floats computed exactly. Every backend is built from the same model, so its alpha can be held
to the baseline's within the tolerance its own tests promise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edge_matte.config.schema import MattingConfig
from edge_matte.engine import MattingEngine
from edge_matte.engine.classic import ClassicEngine
from edge_matte.engine.fast_cpu import FastCpuEngine
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.frames import Matte
from edge_matte.model.checkpoint import load_model
from edge_matte.model.model import MattingRefine
from edge_matte.model.random_weights import random_model

_Builder = Callable[[MattingRefine, int], MattingEngine]
_BUILDERS: dict[str, _Builder] = {
    "torch-cpu+fast": lambda model, threads: FastCpuEngine.from_model(model, threads=threads),
    "torch-cpu+ort": lambda model, threads: FastCpuEngine.from_model(
        model, threads=threads, backend="onnxruntime"
    ),
    "classic": lambda model, threads: ClassicEngine(MattingConfig().classic),
    # from_model moves the model it is given: the GPU gets its own copy.
    "torch-cuda": lambda model, threads: TorchEngine.from_model(copy.deepcopy(model), "cuda"),
}


def build(name: str, model: MattingRefine, threads: int) -> MattingEngine:
    """Backend `name` around (a copy of) `model`."""
    return _BUILDERS[name](model, threads)


def bench_model(weights: Path | None, **refine: object) -> MattingRefine:
    """The model to time: `weights`, or seeded random weights of the official architecture.

    Random weights leave every patch's error above 0, so `refine_prevent_oversampling` is off
    and sampling mode refines its full 80,000 pixels a frame, as a trained model does on a real
    scene (and as the official speed test runs); speed does not depend on the values.
    """
    if weights is None:
        return random_model(0, refine_prevent_oversampling=False, **refine)
    return load_model(weights, **refine)


class PlainEngine:
    """The baseline: a TorchEngine run with subnormal floats computed, not flushed to zero.

    FastCpuEngine turns flushing on for the whole process; the benchmark keeps it on and turns
    it off only around the baseline's calls, so each side runs as it would alone.
    """

    def __init__(self, engine: TorchEngine) -> None:
        self.engine = engine
        self.name = f"{engine.name} fp32"

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        torch.set_flush_denormal(False)
        try:
            return self.engine.matte(image, plate)
        finally:
            torch.set_flush_denormal(True)

    def close(self) -> None:
        self.engine.close()
