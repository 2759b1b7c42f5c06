"""Interleaved timing of benchmark rows, with each row's CPU % and peak RSS, and the machine.

Rows are timed round by round (every row once, then every row again, ...) rather than one row
after the other: the changing load of a shared machine then falls on all rows alike, so their
ratios hold even when absolute times drift.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Spec:
    """One row to measure: its name and kind, the call to time, and what else it reports."""

    name: str
    kind: str  # baseline, backend, region, idle, active, stage, pipeline (or model-only)
    fn: Callable[[], object]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """One measured row of the report (a JSON object with `notes` flattened into it)."""

    size: str
    row: str
    kind: str
    median_ms: float
    min_ms: float | None  # None where only percentiles are known (the pipeline's latency)
    p95_ms: float
    fps: float
    cpu_percent: float
    peak_rss_mb: float
    speedup: float | None = None  # over the baseline row of the same size
    notes: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        notes = data.pop("notes")
        return {**data, **notes}


def measure(size: str, specs: list[Spec], repeats: int, warmup: int = 2) -> list[Row]:
    """Time every spec `repeats` times, interleaved round by round, after `warmup` calls each."""
    for spec in specs:
        for _ in range(warmup):
            spec.fn()
    samples: dict[str, list[float]] = {spec.name: [] for spec in specs}
    cpu = dict.fromkeys(samples, 0.0)
    peak = dict.fromkeys(samples, 0.0)
    for _ in range(repeats):
        for spec in specs:
            reset_peak_rss()
            cpu0, start = cpu_seconds(), time.perf_counter()
            spec.fn()
            samples[spec.name].append((time.perf_counter() - start) * 1000.0)
            cpu[spec.name] += cpu_seconds() - cpu0
            peak[spec.name] = max(peak[spec.name], peak_rss_mb())
    return [_row(size, spec, samples[spec.name], cpu[spec.name], peak[spec.name]) for spec in specs]


def _row(size: str, spec: Spec, samples: list[float], cpu_s: float, peak_mb: float) -> Row:
    median = float(np.median(samples))
    return Row(
        size=size,
        row=spec.name,
        kind=spec.kind,
        median_ms=round(median, 2),
        min_ms=round(min(samples), 2),
        p95_ms=round(float(np.percentile(samples, 95)), 2),
        fps=round(1000.0 / median, 2),
        cpu_percent=round(100.0 * cpu_s / (sum(samples) / 1000.0), 1),
        peak_rss_mb=peak_mb,
        notes=dict(spec.notes),
    )


def cpu_seconds() -> float:
    """CPU time of this process, all threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak_rss() -> None:
    """Reset the kernel's RSS high-water mark, so the next reading is this row's own peak (Linux;
    elsewhere the peak stays the process's)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory since the last `reset_peak_rss`, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": _version("onnxruntime"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
