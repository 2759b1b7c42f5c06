"""Performance benchmark (issue 8): every fast path against the plain eager FP32 model, one run.

    python benchmarks/perf_bench.py [--sizes 480p,720p,1080p,4k] [--repeats 10] [--json out.json]

Per size: the baseline (plain `TorchEngine`, eager FP32), each fast-CPU variant, subject-region
inference at 10/25/50/100% coverage over both engines, and the idle frame against an active
one, all timed interleaved round by round. Per row: median, min and p95 ms, fps (of the
median), speed-up over the baseline (of the medians), CPU % (process CPU time over wall time),
peak RSS during the row's calls, and how far the row's alpha is from its reference.

On a shared 2-core machine other processes make 2-thread timings swing by 2-5x (oneDNN's
threads wait on each other when one loses its core): compare rows of one run, check that CPU %
is near 200, and use --threads 1 for steadier ratios.

Random weights (tests/model_builders.py): speed does not depend on the weight values, but the
refiner does depend on how many patches the error map offers, so `refine_prevent_oversampling`
is off and every frame refines the full 80,000 pixels, as a trained model does on a real scene
(and as the official speed test runs). Region fidelity is also reported in thresholding mode,
where the refiner's patch choice is local (see edge_matte/engine/region.py for why sampling
differs).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from edge_matte import synth  # noqa: E402
from edge_matte.bench import SIZES, machine  # noqa: E402
from edge_matte.compose import Compositor  # noqa: E402
from edge_matte.config import ComposeConfig, PlateConfig  # noqa: E402
from edge_matte.engine.fast_cpu import FastCpuEngine, WindowRefiner  # noqa: E402
from edge_matte.engine.region import RegionEngine, alpha_box  # noqa: E402
from edge_matte.engine.torch_engine import TorchEngine  # noqa: E402
from edge_matte.events import log_only  # noqa: E402
from edge_matte.frames import Frame  # noqa: E402
from edge_matte.model.fuse import fold_batchnorm  # noqa: E402
from edge_matte.model.random_weights import random_model  # noqa: E402

COVERAGES = (0.10, 0.25, 0.50, 1.00)
NOISE_SIGMA = 2.0  # the synthetic camera's noise, 8-bit levels


@dataclass
class Spec:
    """One row to measure: its name, the call to time, and what else to report."""

    name: str
    fn: Callable[[], object]
    extra: dict[str, Any] = field(default_factory=dict)


def measure(specs: list[Spec], repeats: int, warmup: int = 2) -> list[dict[str, Any]]:
    """Time every spec `repeats` times, interleaved round by round.

    Interleaving spreads the machine's changing load (other processes on a shared 2-core box)
    over all rows alike, so their ratios hold even when absolute times drift.
    """
    for spec in specs:
        for _ in range(warmup):
            spec.fn()
    samples = {spec.name: [] for spec in specs}
    cpu = dict.fromkeys(samples, 0.0)
    peak = dict.fromkeys(samples, 0.0)
    for _ in range(repeats):
        for spec in specs:
            _reset_peak_rss()
            cpu0, start = _cpu_seconds(), time.perf_counter()
            spec.fn()
            samples[spec.name].append((time.perf_counter() - start) * 1000.0)
            cpu[spec.name] += _cpu_seconds() - cpu0
            peak[spec.name] = max(peak[spec.name], _peak_rss_mb())
    return [_row(spec, samples[spec.name], cpu[spec.name], peak[spec.name]) for spec in specs]


def _row(spec: Spec, samples: list[float], cpu_s: float, peak_mb: float) -> dict[str, Any]:
    median = float(np.median(samples))
    return {
        "row": spec.name,
        "median_ms": round(median, 2),
        "min_ms": round(min(samples), 2),
        "p95_ms": round(float(np.percentile(samples, 95)), 2),
        "fps": round(1000.0 / median, 2),
        "cpu_percent": round(100.0 * cpu_s / (sum(samples) / 1000.0), 1),
        "peak_rss_mb": peak_mb,
        **spec.extra,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark so each row reports its own peak (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def coverage_scene(width: int, height: int, coverage: float, seed: int = 0):
    """(frame, plate, truth alpha): the room with one subject whose box covers `coverage` of it."""
    room = synth.room(width, height, seed)
    canvas, alpha = room.astype(np.float32), np.zeros((height, width), np.float32)
    if coverage > 0:
        box_w, box_h, sprite = _subject_sized(height, coverage * width * height, width, seed)
        synth.paste_over(canvas, alpha, sprite, (width - box_w) // 2, height - box_h)
    rng = np.random.default_rng(seed)
    canvas += rng.normal(0, NOISE_SIGMA, canvas.shape).astype(np.float32)
    return synth.to_uint8(canvas), synth.to_uint8(room), alpha


def _subject_sized(height: int, area: float, width: int, seed: int):
    """The subject sprite cut to its alpha's box and stretched to about `area` pixels."""
    sprite = synth.subject(height, seed)
    rows = np.flatnonzero(sprite.alpha.max(axis=1) > 0)
    cols = np.flatnonzero(sprite.alpha.max(axis=0) > 0)
    cut = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    aspect = (cols[-1] + 1 - cols[0]) / (rows[-1] + 1 - rows[0])
    box_h = min(height, round(math.sqrt(area / aspect)))
    box_w = min(width, round(area / box_h))
    scaled = synth.Sprite(
        cv2.resize(sprite.alpha[cut], (box_w, box_h), interpolation=cv2.INTER_AREA),
        cv2.resize(sprite.colour[cut], (box_w, box_h), interpolation=cv2.INTER_AREA),
    )
    return box_w, box_h, scaled


def cpu_variants(model) -> dict[str, Any]:
    """Each step of the fast CPU path as its own engine, in the order the steps stack."""
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    windowed = copy.deepcopy(folded)
    windowed.refiner = WindowRefiner.like(model.refiner)
    fold_batchnorm(windowed)
    return {
        "fold BN": TorchEngine.from_model(folded),
        "fold BN + window refiner": TorchEngine.from_model(windowed),
        "torch-cpu+fast (+channels-last)": FastCpuEngine.from_model(model),
        "torch-cpu+ort (ORT base)": FastCpuEngine.from_model(model, backend="onnxruntime"),
    }


def bench_size(label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    width, height = SIZES[label]
    model = random_model(0, refine_prevent_oversampling=False)
    baseline = TorchEngine.from_model(model)
    image, plate, _ = coverage_scene(width, height, 0.25)
    engines = cpu_variants(model)  # turns on flush-denormal, process-wide: see `plain`
    reference = plain(baseline.matte)(image, plate)
    specs = [Spec("baseline torch-cpu fp32", lambda: plain(baseline.matte)(image, plate))]
    for name, engine in engines.items():
        diff = float(np.abs(engine.matte(image, plate).alpha - reference.alpha).max())
        specs.append(
            Spec(
                name,
                lambda e=engine: e.matte(image, plate),
                {"alpha_max_diff": float(f"{diff:.2g}")},
            )
        )
    fast = engines["torch-cpu+fast (+channels-last)"]
    for coverage in COVERAGES:
        specs.append(_region_spec("baseline", baseline, width, height, coverage))
        specs.append(_region_spec("fast", fast, width, height, coverage))
    specs += _idle_specs(baseline, fast, width, height)
    print(f"{label}: measuring {len(specs)} rows x {args.repeats}", file=sys.stderr)
    rows = [{"size": label, **r} for r in measure(specs, args.repeats)]
    for r in rows:
        r["speedup"] = round(rows[0]["median_ms"] / r["median_ms"], 2)
    for engine in engines.values():
        engine.close()
    return rows + _fidelity_rows(label, width, height)


def plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with flush-denormal off, as the plain model runs (FastCpuEngine turns it on)."""

    def call(*args: Any) -> Any:
        torch.set_flush_denormal(False)
        try:
            return fn(*args)
        finally:
            torch.set_flush_denormal(True)

    return call


def _region_spec(inner_name: str, inner, width: int, height: int, coverage: float) -> Spec:
    image, plate, truth = coverage_scene(width, height, coverage)
    region = RegionEngine(inner, backbone_scale=0.25)
    box = region.region(image, plate)
    matte = region.matte(image, plate)
    whole = inner.matte(image, plate)
    subject = alpha_box(truth)
    call = plain(region.matte) if inner_name == "baseline" else region.matte

    def run() -> None:
        region.reset()  # random weights put alpha everywhere: keep the region from the plate
        call(image, plate)

    extra = {
        "subject_fraction": round(subject.area / (width * height), 3) if subject else 0.0,
        "crop_fraction": round(box.area / (width * height), 3) if box else 0.0,
        "alpha_mad_frame_255": round(float(np.abs(matte.alpha - whole.alpha).mean()) * 255, 3),
    }
    return Spec(f"region {round(coverage * 100)}% over {inner_name}", run, extra)


def _idle_specs(baseline, fast, width: int, height: int) -> list[Spec]:
    """The matting stage's per-frame work on an empty scene (idle) and with a subject (active)."""
    from edge_matte.plate import PlateKeeper

    empty, plate, _ = coverage_scene(width, height, 0.0)
    busy, _, _ = coverage_scene(width, height, 0.25)
    keeper = PlateKeeper(PlateConfig(), None, "test://", log_only)
    keeper.load_array(plate)
    compositor = Compositor(ComposeConfig(), Path("/nonexistent"))
    region = RegionEngine(fast, 0.25)
    counter = iter(range(1 << 62))

    def frame(image: np.ndarray) -> Frame:  # a new index each call: the keeper caches per frame
        return Frame(image, next(counter), time.monotonic())

    def idle() -> None:
        current = frame(empty)
        if not keeper.is_idle(current):
            raise RuntimeError("the empty scene is not idle; the idle row would be wrong")
        keeper.observe(current, None)
        compositor.background(width, height)

    def active(matte_fn) -> None:
        current = frame(busy)
        keeper.is_idle(current)
        matte = matte_fn(busy, plate)
        keeper.observe(current, matte)
        compositor.composite(busy, matte)

    def active_region() -> None:
        region.reset()
        active(region.matte)

    return [
        Spec("idle frame (is_idle + observe + background)", idle),
        Spec("active frame, baseline (+ matte + composite)", lambda: active(plain(baseline.matte))),
        Spec("active frame, fast + region", active_region),
    ]


def _fidelity_rows(label: str, width: int, height: int) -> list[dict[str, Any]]:
    """Region vs whole frame in thresholding mode (local patch choice), on the kept area."""
    rows = []
    inner = FastCpuEngine.from_model(random_model(0, refine_mode="thresholding"))
    for coverage in COVERAGES[:-1]:
        image, plate, _ = coverage_scene(width, height, coverage)
        region = RegionEngine(inner, backbone_scale=0.25)
        kept = region.region(image, plate).inset(region.guard, height, width)
        whole, matte = inner.matte(image, plate), region.matte(image, plate)
        rows.append(
            {
                "size": label,
                "row": f"fidelity region {round(coverage * 100)}% thresholding",
                "alpha_mad_kept_255": round(
                    float(np.abs(matte.alpha - whole.alpha)[kept.slices].mean()) * 255, 3
                ),
                "alpha_mad_frame_255": round(
                    float(np.abs(matte.alpha - whole.alpha).mean()) * 255, 3
                ),
                "whole_alpha_outside_255": round(_outside_mean(whole.alpha, kept) * 255, 3),
            }
        )
    inner.close()
    return rows


def _outside_mean(alpha: np.ndarray, kept) -> float:
    outside = np.ones(alpha.shape, bool)
    outside[kept.slices] = False
    return float(alpha[outside].mean()) if outside.any() else 0.0


def print_table(rows: list[dict[str, Any]]) -> None:
    heads = ("med ms", "min ms", "p95 ms", "fps", "x base", "CPU %", "RSS MB")
    print(f"{'size':>6} {'row':<46} " + " ".join(f"{h:>7}" for h in heads) + "  notes")
    for r in rows:
        notes = ", ".join(
            f"{k}={v}" for k, v in r.items() if k not in _COLUMNS and k not in ("size", "row")
        )
        values = [
            f"{r[k]:>7.{2 if k == 'speedup' else 1}f}" if k in r else " " * 7 for k in _COLUMNS
        ]
        print(f"{r['size']:>6} {r['row']:<46} " + " ".join(values) + f"  {notes}")


_COLUMNS = ("median_ms", "min_ms", "p95_ms", "fps", "speedup", "cpu_percent", "peak_rss_mb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="480p,720p,1080p", help=f"of {','.join(SIZES)}")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := [s for s in sizes if s not in SIZES]:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": machine(), "load_before": os.getloadavg(), "rows": []}
    for label in sizes:
        results["rows"] += bench_size(label, args)
    results["load_after"] = os.getloadavg()
    print(f"machine: {results['machine']}")
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    print_table(results["rows"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
