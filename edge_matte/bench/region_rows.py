"""Region rows: subject-region inference at each coverage over each inner engine.

Each row times the crop's matte from the plate difference alone (`reset` first: random weights
put alpha everywhere, which would otherwise grow the region to the whole frame). It reports the
crop's share of the frame and how far its alpha is from the inner engine's whole-frame alpha
(`alpha_mad_frame_255`, in 1/255). In sampling mode that difference is mostly the refiner
choosing its top patches among the crop's instead of the frame's (see engine/region.py); the
crop's own error shows in `thresholding_mad_kept_255`: the same crop in thresholding mode,
where patch choice is local, over the area the crop keeps.
"""

from __future__ import annotations

import numpy as np

from edge_matte.bench.measure import Spec
from edge_matte.bench.scenes import COVERAGES, Scene, coverage_scene
from edge_matte.engine import MattingEngine
from edge_matte.engine.region import RegionEngine, alpha_box


def region_specs(
    inners: dict[str, MattingEngine],
    backbone_scale: float,
    thresholding: MattingEngine,
    width: int,
    height: int,
) -> list[Spec]:
    """Per coverage, one row per inner engine (`inners`: row label -> engine)."""
    specs = []
    for coverage in COVERAGES:
        scene = coverage_scene(width, height, coverage)
        fidelity = _kept_mad_255(RegionEngine(thresholding, backbone_scale), scene)
        for label, inner in inners.items():
            spec = _region_spec(label, RegionEngine(inner, backbone_scale), scene, coverage)
            spec.notes["thresholding_mad_kept_255"] = fidelity
            specs.append(spec)
    return specs


def _region_spec(label: str, region: RegionEngine, scene: Scene, coverage: float) -> Spec:
    height, width = scene.alpha.shape
    box = region.region(scene.image, scene.plate)
    matte = region.matte(scene.image, scene.plate)
    whole = region.inner.matte(scene.image, scene.plate)
    subject = alpha_box(scene.alpha)

    def run() -> None:
        region.reset()
        region.matte(scene.image, scene.plate)

    notes = {
        "coverage": coverage,
        "subject_fraction": round(subject.area / (width * height), 3) if subject else 0.0,
        "crop_fraction": round(box.area / (width * height), 3) if box else 0.0,
        "alpha_mad_frame_255": _mad_255(matte.alpha, whole.alpha),
    }
    return Spec(f"region {round(coverage * 100)}% over {label}", "region", run, notes)


def _kept_mad_255(region: RegionEngine, scene: Scene) -> float:
    """Mean |region alpha - whole-frame alpha| over the area the crop keeps, in 1/255."""
    height, width = scene.alpha.shape
    box = region.region(scene.image, scene.plate)
    if box is None:
        return 0.0
    kept = box.inset(region.guard, height, width).slices
    matte = region.matte(scene.image, scene.plate)
    whole = region.inner.matte(scene.image, scene.plate)
    return _mad_255(matte.alpha[kept], whole.alpha[kept])


def _mad_255(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.abs(a - b).mean()) * 255, 3)
