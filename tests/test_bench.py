"""`edge-matte bench`: the real command at 480p, one repeat and a short pipeline run.

Checks that the report has every row the performance issue asks for, with numbers where numbers
belong, and that every fast path gives the baseline's alpha within the tolerance it states.
Speed is never asserted: the benchmark reports it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from edge_matte.bench.catalog import BACKENDS, unavailable
from edge_matte.bench.frame_rows import PEOPLE_ROW
from edge_matte.bench.pipeline_rows import ROUNDS
from edge_matte.bench.scenes import COVERAGES
from edge_matte.plate.people import missing_reason

COMMAND = [sys.executable, "-m", "edge_matte.cli", "bench"]
TIMED = ("median_ms", "p95_ms", "fps", "speedup", "cpu_percent", "peak_rss_mb")
REGION_TOLERANCE_255 = 0.5  # tests/test_region.py: crop vs whole frame, thresholding mode


@dataclass(frozen=True)
class Run:
    rows: list[dict]
    report: dict
    stdout: str


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = ["--sizes", "480p", "--repeats", "1", "--pipeline-seconds", "3", "--json", str(out)]
    done = subprocess.run(COMMAND + args, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    return Run(report["rows"], report, done.stdout)


def names(run: Run, kind: str) -> list[str]:
    return [row["row"] for row in run.rows if row["kind"] == kind]


def available() -> list[str]:
    return [name for name in BACKENDS if unavailable(name) is None]


def test_report_has_every_row_kind(run):
    assert {row["size"] for row in run.rows} == {"480p"}
    assert names(run, "baseline") == ["baseline torch-cpu fp32"]
    assert names(run, "backend") == available()
    assert names(run, "region") == [
        f"region {round(c * 100)}% over {inner}"
        for c in COVERAGES
        for inner in ("baseline", "fast")
    ]
    assert len(names(run, "idle")) == 1
    assert names(run, "active") == [
        "active frame, baseline (+ matte + composite)",
        "active frame, fast + region",
    ]
    assert len(names(run, "stage")) == 5 + (missing_reason() is None)
    if missing_reason() is None:  # HOG's cost beside MOG2's, and its share of an active frame
        people = next(row for row in run.rows if row["row"] == PEOPLE_ROW)
        assert people["calls_per_s"] > 0 and 0 < people["active_frame_percent"] < 100
    builder = next(row for row in run.rows if row["row"] == "stage plate builder add")
    assert builder["builder_mb"] > 0 and builder["estimate_ms"] > 0  # memory and estimate cost
    assert "stage MOG2 apply (builder baseline)" in names(run, "stage")
    engine = "torch-cuda" if torch.cuda.is_available() else "torch-cpu+fast"
    assert names(run, "pipeline") == [f"pipeline {engine}+region"]
    assert set(run.report["skipped_backends"]) == set(BACKENDS) - set(available())


def test_timed_columns_are_numbers(run):
    for row in run.rows:
        assert "notes" not in row  # merged into the row: one flat object per row
        for column in TIMED:
            if column == "speedup" and row["kind"] == "output":
                continue  # a hand-over has no speed-up over a model: None, checked below
            value = row[column]
            assert isinstance(value, (int, float)) and math.isfinite(value), (row["row"], column)
            assert value > 0 or column == "cpu_percent", (row["row"], column)
        assert row["median_ms"] <= row["p95_ms"], row["row"]
        if row["kind"] != "pipeline":  # the pipeline's latency comes as percentiles only
            assert 0 < row["min_ms"] <= row["median_ms"], row["row"]
    baseline = next(row for row in run.rows if row["kind"] == "baseline")
    assert baseline["speedup"] == 1.0


def test_fast_paths_give_the_baselines_alpha(run):
    checked = [row for row in run.rows if row.get("alpha_tolerance") is not None]
    assert {row["row"] for row in checked} >= {"torch-cpu+fast"}
    for row in checked:
        assert 0 <= row["alpha_max_diff"] <= row["alpha_tolerance"], row


def test_region_rows_report_crop_and_fidelity(run):
    for row in (row for row in run.rows if row["kind"] == "region"):
        assert row["coverage"] in COVERAGES
        assert 0 < row["subject_fraction"] <= row["crop_fraction"] <= 1, row
        assert row["alpha_mad_frame_255"] >= 0
        assert row["thresholding_mad_kept_255"] <= REGION_TOLERANCE_255, row
        if row["crop_fraction"] == 1:  # the whole frame runs: exactly the inner engine's alpha
            assert row["alpha_mad_frame_255"] == 0 == row["thresholding_mad_kept_255"]
    smallest = next(row for row in run.rows if row["row"] == "region 10% over fast")
    assert smallest["crop_fraction"] < 1


def test_pipeline_row_against_its_engine_alone(run):
    row = next(row for row in run.rows if row["kind"] == "pipeline")
    assert row["model_only_fps_before"] > 0 and row["model_only_fps_after"] > 0
    mean = (row["model_only_fps_before"] + row["model_only_fps_after"]) / 2
    assert row["model_only_fps"] == pytest.approx(mean, abs=0.01)
    assert row["model_only_median_ms"] > 0
    assert 1 <= row["source_fps"] <= 30
    # Both figures are rounded to 2 decimals: at ~1 fps that alone moves the ratio by ~1 %.
    expected = row["fps"] / row["model_only_fps"]
    assert row["fps_over_model_only"] == pytest.approx(expected, rel=0.01, abs=0.01)
    ratios = row["rounds_fps_over_model_only"]
    assert len(ratios) == ROUNDS and sorted(ratios)[ROUNDS // 2] == row["fps_over_model_only"]
    assert row["rtsp_clients"] >= 1
    assert row["captured"] >= 1


def test_output_rows_cost_each_output_against_the_budget(run):
    rows = {row["row"]: row for row in run.rows if row["kind"] == "output"}
    assert list(rows) == ["output: RTSP", "output: display", "output: browser"]
    for row in rows.values():
        assert row["cpu_ms_per_frame"] > 0 and row["speedup"] is None
        assert row["budget_percent_at_30fps"] == pytest.approx(
            row["cpu_ms_per_frame"] / (1000 / 30) * 100, abs=0.1
        )
    # The output stage only swaps a reference for the screen and the browser: the work is
    # on their own threads (and the screen's child process), never on the stage.
    assert rows["output: browser"]["median_ms"] < rows["output: browser"]["cpu_ms_per_frame"]
    assert 0.5 <= rows["output: browser"]["jpegs_per_frame"] <= 1.0  # one JPEG per frame, at most


def test_table_is_printed(run):
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["size", "row"])
    assert "med ms" in header and "x base" in header and "RSS MB" in header
    for row in run.rows:
        assert any(line.split()[:1] == ["480p"] and row["row"] in line for line in lines), row


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sizes", "480p,8k"], "8k"),
        (["--backends", "torch-cpu+fast,tensorrt"], "tensorrt"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bad_arguments_exit_2_naming_them(args, named):
    done = subprocess.run(COMMAND + args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert named in done.stderr
    assert done.stdout == ""
