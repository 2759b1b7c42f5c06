"""`edge-matte bench`: run every row of every size, then print and save the report."""

from __future__ import annotations

import argparse
import os
from functools import partial
from typing import Any

import torch

from edge_matte.bench.frame_rows import add_people_share
from edge_matte.bench.measure import Row, machine
from edge_matte.bench.model_rows import model_rows
from edge_matte.bench.options import Settings
from edge_matte.bench.output_rows import output_rows
from edge_matte.bench.pipeline_rows import pipeline_row, pipeline_weights
from edge_matte.bench.report import print_report, write_json
from edge_matte.engine.openmp import on_passing_thread


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the JSON if asked; 0 on success."""
    settings = Settings.from_args(args)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": _describe(settings),
        "skipped_backends": settings.skipped,
        "load_before": os.getloadavg(),
    }
    rows: list[Row] = []
    for label in settings.sizes:  # off the main thread: see engine/openmp.py
        rows += on_passing_thread(partial(model_rows, label, settings))
    if settings.pipeline_seconds > 0:
        with pipeline_weights(settings.weights) as weights:
            rows += [pipeline_row(label, settings, weights) for label in settings.sizes]
        for label in settings.sizes:
            rows += output_rows(label)
    report["load_after"] = os.getloadavg()
    rows.sort(key=lambda row: settings.sizes.index(row.size))  # stable: each size's rows together
    add_speedups(rows)
    add_people_share(rows)
    print_report(report, rows)
    if settings.json is not None:
        write_json(settings.json, report, rows)
    return 0


def add_speedups(rows: list[Row]) -> None:
    """Each row's frame rate over its size's baseline's (medians; the pipeline's published fps,
    since its ms columns are latency)."""
    baseline = {row.size: row.median_ms for row in rows if row.kind == "baseline"}
    for row in rows:
        if row.kind == "output":
            continue  # a hand-over, not a frame's processing: see output_rows.py
        per_frame_ms = 1000.0 / row.fps if row.kind == "pipeline" else row.median_ms
        row.speedup = round(baseline[row.size] / per_frame_ms, 2)


def _describe(settings: Settings) -> dict[str, Any]:
    return {
        "sizes": list(settings.sizes),
        "backends": list(settings.backends),
        "repeats": settings.repeats,
        "threads": settings.threads,
        "weights": str(settings.weights) if settings.weights else "random (timing only)",
        "pipeline_seconds": settings.pipeline_seconds,
    }
