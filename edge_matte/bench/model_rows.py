"""Model rows of one size: the baseline, each backend, subject regions, idle and active frames.

Every row is timed in one interleaved measurement (measure.py), so each row's speed-up over the
baseline holds on a machine whose load changes. Backend rows on the 25% scene also report their
largest alpha difference to the baseline and the tolerance that backend promises.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np
import torch

from edge_matte.bench.backends import PlainEngine, bench_model, build
from edge_matte.bench.catalog import TOLERANCES
from edge_matte.bench.frame_rows import frame_specs
from edge_matte.bench.measure import Row, Spec, measure
from edge_matte.bench.options import Settings
from edge_matte.bench.region_rows import region_specs
from edge_matte.bench.scenes import SIZES, Scene, coverage_scene
from edge_matte.engine import MattingEngine
from edge_matte.engine.fast_cpu import FastCpuEngine
from edge_matte.engine.torch_engine import TorchEngine
from edge_matte.frames import Matte
from edge_matte.model.model import MattingRefine


def model_rows(label: str, settings: Settings) -> list[Row]:
    """Measure every model row at size `label`."""
    width, height = SIZES[label]
    torch.set_flush_denormal(True)  # the fast paths' setting; PlainEngine turns it off for itself
    model = bench_model(settings.weights)
    baseline = PlainEngine(TorchEngine.from_model(model, threads=settings.threads))
    engines = {name: build(name, model, settings.threads) for name in settings.backends}
    thresholding = FastCpuEngine.from_model(
        bench_model(settings.weights, refine_mode="thresholding"), threads=settings.threads
    )
    try:
        specs = _backend_specs(baseline, engines, coverage_scene(width, height, 0.25))
        specs[0].notes.update(_model_notes(model))
        fast = engines.get("torch-cpu+fast")
        inners = {"baseline": baseline, **({"fast": fast} if fast is not None else {})}
        scale = model.backbone_scale
        specs += region_specs(inners, scale, thresholding, width, height)
        specs += frame_specs(baseline, fast, scale, width, height)
        print(f"{label}: measuring {len(specs)} rows x {settings.repeats}", file=sys.stderr)
        return measure(label, specs, settings.repeats)
    finally:
        owned: list[MattingEngine] = [baseline, thresholding, *engines.values()]
        for engine in owned:
            engine.close()


def _backend_specs(
    baseline: MattingEngine, engines: dict[str, MattingEngine], scene: Scene
) -> list[Spec]:
    """The baseline, then each backend with its alpha difference to the baseline's."""
    reference = baseline.matte(scene.image, scene.plate).alpha
    specs = [Spec("baseline torch-cpu fp32", "baseline", partial(_matte, baseline, scene))]
    for name, engine in engines.items():
        notes = {}
        if TOLERANCES[name] is not None:
            diff = float(np.abs(engine.matte(*_pair(scene)).alpha - reference).max())
            notes = {"alpha_max_diff": float(f"{diff:.2g}"), "alpha_tolerance": TOLERANCES[name]}
        specs.append(Spec(name, "backend", partial(_matte, engine, scene), notes))
    return specs


def _model_notes(model: MattingRefine) -> dict[str, object]:
    """The settings every torch row shares (the refiner's work depends on them)."""
    refiner = model.refiner
    return {
        "backbone_scale": model.backbone_scale,
        "refine": f"{refiner.mode} {refiner.sample_pixels} px",
        "prevent_oversampling": refiner.prevent_oversampling,
    }


def _pair(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    return scene.image, scene.plate


def _matte(engine: MattingEngine, scene: Scene) -> Matte:
    return engine.matte(*_pair(scene))
