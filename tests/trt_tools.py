"""A stand-in for TensorRT's converter on machines without a GPU: same Converter interface,
the "engine" is the torch module itself restricted to the example's fixed shapes."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


class FixedShapeEngine(nn.Module):
    """What a TensorRT engine is to its caller: the module's function, for the built shapes only."""

    def __init__(self, module: nn.Module, shapes: list[list[int]]) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("shapes", torch.tensor(shapes, dtype=torch.int64))
        self.failure: str | None = None  # raised as a RuntimeError on every call, e.g. a CUDA OOM

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.failure:
            raise RuntimeError(self.failure)
        shapes = [list(x.shape) for x in inputs]
        if shapes != self.shapes.tolist():
            raise RuntimeError(f"engine built for {self.shapes.tolist()} was given {shapes}")
        return self.module(*inputs)


class StandInConverter:
    """A `Converter` for the CPU: counts what it converts and restores."""

    name = "trt-standin"
    precision = "fp32"
    device = "cpu"

    def __init__(self, backend: str = "standin-1", device_name: str = "cpu") -> None:
        self.backend = backend
        self.device_name = device_name
        self.converted: list[str] = []
        self.restored: list[str] = []
        self.engines: list[FixedShapeEngine] = []

    def convert(self, module: nn.Module, inputs) -> nn.Module:
        self.converted.append(type(module).__name__)
        return self._keep(FixedShapeEngine(copy.deepcopy(module), [list(x.shape) for x in inputs]))

    def restore(self, module: nn.Module, state) -> nn.Module:
        self.restored.append(type(module).__name__)
        engine = FixedShapeEngine(copy.deepcopy(module), state["shapes"].tolist())
        engine.load_state_dict(state)
        return self._keep(engine)

    def _keep(self, engine: FixedShapeEngine) -> FixedShapeEngine:
        self.engines.append(engine)
        return engine


def scene(height: int = 64, width: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A BGR uint8 frame and plate: textured plate, a differently coloured block in front."""
    rng = np.random.default_rng(seed)
    plate = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = plate.copy()
    image[height // 3 :, width // 4 : 3 * width // 4] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image, plate
