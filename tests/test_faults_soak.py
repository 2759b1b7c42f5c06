"""`edge-matte soak`: the verdict's rules on made-up readings, and a real (very short) soak of a
daemon process with RTSP viewers and, where Mosquitto exists, MQTT commands."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from edge_matte.tools.soak import Reading, add_arguments, judge, main_soak


def reading(
    elapsed_s: float, rss_mb: float = 300.0, threads: int = 13, fds: int = 12, fps: float = 30.0
) -> Reading:
    return Reading(elapsed_s, rss_mb, threads, fds, fps, 0, None)


LOADED = [reading(t, fps=30.0) for t in (60, 120, 180, 240)]


def verdict(
    baseline: Reading | None, final: Reading | None, loaded: list[Reading]
) -> dict[str, bool]:
    return {check.name: check.passed for check in judge(baseline, final, loaded, None, None)}


def test_a_steady_daemon_passes() -> None:
    checks = verdict(reading(30), reading(300, rss_mb=310.0), LOADED)
    assert checks == {"rss": True, "threads": True, "fds": True, "fps": True}


@pytest.mark.parametrize(
    ("final", "loaded", "failing"),
    [
        (reading(300, rss_mb=316.0), LOADED, "rss"),  # +5.3 %
        (reading(300, threads=14), LOADED, "threads"),
        (reading(300, fds=13), LOADED, "fds"),
        (
            reading(300),
            [reading(t, fps=f) for t, f in ((60, 30), (120, 30), (180, 26), (240, 25))],
            "fps",
        ),
        (reading(300), [reading(t, fps=0.0) for t in (60, 120, 180, 240)], "fps"),
        (reading(300), LOADED[:1], "fps"),  # too short to judge
    ],
)
def test_each_kind_of_growth_or_decay_fails(
    final: Reading, loaded: list[Reading], failing: str
) -> None:
    checks = verdict(reading(30), final, loaded)
    assert [name for name, passed in checks.items() if not passed] == [failing]


def test_no_resting_reading_fails_rather_than_passes() -> None:
    assert verdict(None, reading(300), LOADED)["rest"] is False


def test_a_short_real_soak_reports_and_judges(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    report = tmp_path / "soak.json"
    args = parser.parse_args(
        [
            "--minutes", "0.3", "--interval-s", "3", "--warmup-s", "4",
            "--width", "320", "--height", "240", "--fps", "15",
            "--viewers", "3", "--report", str(report),
        ]
    )  # fmt: skip
    code = main_soak(args)
    record = json.loads(report.read_text())
    checks = {check["name"]: check["passed"] for check in record["checks"]}
    assert code == (0 if all(checks.values()) else 1)
    assert len(record["readings"]) >= 4
    assert all(r["rss_mb"] > 0 and r["threads"] > 0 and r["fds"] > 0 for r in record["readings"])
    assert record["baseline"] and record["final"]
    # Memory is still settling after a 4 s warm-up, so "rss" may go either way in a run this
    # short; the rest must hold even here.
    expected = {"stop", "threads", "fds", "fps", "viewers"}
    if shutil.which("mosquitto"):
        expected.add("mqtt")
    assert expected <= checks.keys()
    assert all(checks[name] for name in expected), record["checks"]
    printed = capsys.readouterr().out
    assert "soak  load" in printed and "soak  rest" in printed and "fps=" in printed
