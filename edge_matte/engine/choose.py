"""Pick the fastest of several engines for the same job by timing them at `prepare`.

What is fastest depends on the device: subject-region inference halves the work on a CPU but
doubled the frame time on an H200 (1080p: 23.7 ms with regions, 11.2 ms without), and FP16
eager was no faster than FP32 there. So the torch-cuda engine is built in each variant, each is
timed on the same synthetic frame at the real size, and the fastest is kept (the others are
closed). The choice and every variant's time are logged, and the engine's name is the chosen
variant's, so `state` and telemetry say which one runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy as np

from edge_matte.engine import MattingEngine
from edge_matte.errors import EngineError
from edge_matte.frames import Matte

_LOG = logging.getLogger(__name__)

RUNS = 5  # timed frames per variant, after one untimed warm-up frame (captures, allocations)

Factory = Callable[[], MattingEngine]


class FastestChoice:
    """A MattingEngine that runs the fastest of `variants` (timed at `prepare`).

    Args:
        variants: name -> factory, best guess first; the first is built at once (its errors
            are this constructor's) and runs until `prepare` has timed them all.
        clock: seconds, monotonic (injected by tests).
        runs: timed frames per variant.
    """

    def __init__(
        self,
        variants: Mapping[str, Factory],
        clock: Callable[[], float] = time.perf_counter,
        runs: int = RUNS,
    ) -> None:
        if not variants:
            raise ValueError("FastestChoice needs at least one variant")
        self._variants = dict(variants)
        self._clock = clock
        self._runs = runs
        self.chosen = next(iter(self._variants))
        self.engine = self._variants[self.chosen]()
        self.timings: dict[str, float] = {}  # variant -> seconds per frame, after `prepare`

    @property
    def name(self) -> str:
        return self.engine.name

    def matte(self, image: np.ndarray, plate: np.ndarray) -> Matte:
        return self.engine.matte(image, plate)

    def prepare(self, height: int, width: int) -> None:
        """Time every variant on a height x width frame and keep the fastest."""
        image, plate = _scene(height, width)
        best: tuple[float, str, MattingEngine] | None = None
        failures = []
        for name, factory in self._variants.items():
            engine = self.engine if name == self.chosen else None
            try:
                engine = engine or factory()
                seconds = self._time(engine, image, plate, height, width)
            except EngineError as err:
                failures.append(f"{name}: {err}")
                _LOG.warning("engine variant %s failed while timed: %s", name, err)
                if engine is not None:
                    engine.close()
                continue
            self.timings[name] = seconds
            if best is None or seconds < best[0]:
                if best is not None:
                    best[2].close()
                best = (seconds, name, engine)
            else:
                engine.close()
        if best is None:
            raise EngineError("every variant failed: " + "; ".join(failures))
        _, self.chosen, self.engine = best
        _LOG.info(
            "using %s (%s) for %dx%d frames; per frame: %s",
            self.chosen,
            self.engine.name,
            width,
            height,
            ", ".join(f"{n} {s * 1e3:.1f} ms" for n, s in sorted(self.timings.items())),
        )

    def close(self) -> None:
        self.engine.close()

    def _time(
        self, engine: MattingEngine, image: np.ndarray, plate: np.ndarray, height: int, width: int
    ) -> float:
        prepare = getattr(engine, "prepare", None)
        if prepare is not None:
            prepare(height, width)
        engine.matte(image, plate)  # warm-up: graph capture, allocations, cuDNN's choices
        started = self._clock()
        for _ in range(self._runs):
            engine.matte(image, plate)  # numpy out: the device has finished when it returns
        return (self._clock() - started) / self._runs


def _scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured plate and the same with a block in front: work like a real frame's."""
    rng = np.random.default_rng(0)
    plate = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    plate.flags.writeable = False  # immutable: uploaded once, as the plate keeper's
    image = plate.copy()
    image[height // 4 :, width // 3 : 2 * width // 3] = (40, 160, 90)
    return image, plate
