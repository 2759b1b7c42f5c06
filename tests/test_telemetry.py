"""System readings: sane on this machine's /proc, exact on a fake Jetson /proc + /sys tree."""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path

import pytest

from edge_matte.runtime.telemetry import SystemReader, system_readings

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def test_real_proc_readings_follow_what_the_process_does(tmp_path: Path) -> None:
    reader = SystemReader()
    before = reader.read()
    assert before["rss_bytes"] > 1_000_000 and before["open_fds"] >= 3 and before["threads"] >= 1
    assert before["process_uptime_s"] >= 0 and before["load_1m"] >= 0 and before["cpu_percent"] >= 0

    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    with (tmp_path / "held").open("w"):
        ballast = mmap.mmap(-1, 64_000_000)  # fresh pages: a heap allocation may reuse freed RSS
        ballast.write(b"x" * 64_000_000)
        during = reader.read()
    release.set()
    worker.join()
    assert during["threads"] >= before["threads"] + 1
    assert during["open_fds"] >= before["open_fds"] + 1
    assert during["rss_bytes"] >= before["rss_bytes"] + 50_000_000
    ballast.close()

    start = time.process_time()
    while time.process_time() - start < 0.1:  # burn CPU, measured in CPU time
        pass
    assert reader.cpu_percent() > 0


def test_system_readings_is_json_ready() -> None:
    readings = system_readings()
    assert set(readings) >= {
        "cpu_percent",
        "rss_bytes",
        "gpu_load_percent",
        "temperature_c",
        "temperatures_c",
    }
    assert all(isinstance(value, (int, float, dict, type(None))) for value in readings.values())


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_stat(utime: int, stime: int, threads: int, start: int, rss_pages: int) -> str:
    fields = ["S"] + ["0"] * 48
    fields[11], fields[12], fields[17], fields[19], fields[21] = map(
        str, (utime, stime, threads, start, rss_pages)
    )
    return "4242 (edge (matte) x) " + " ".join(fields) + "\n"


@pytest.fixture
def jetson(tmp_path: Path) -> Path:
    """A fake root with an Orin-like /sys and a process that started 10 s after boot."""
    write(tmp_path, "proc/self/stat", fake_stat(3 * TICKS, 1 * TICKS, 9, 10 * TICKS, 25_000))
    write(tmp_path, "proc/uptime", "30.00 50.00\n")
    write(tmp_path, "proc/loadavg", "1.50 1.20 1.00 2/300 4242\n")
    for fd in range(5):
        write(tmp_path, f"proc/self/fd/{fd}", "")
    write(tmp_path, "sys/devices/platform/gpu.0/load", "523\n")
    zones = [
        ("CPU-therm", "45500"),
        ("GPU-therm", "-256000"),
        ("CPU-therm", "47000"),
        ("tj-therm", "x"),
    ]
    for index, (name, milli) in enumerate(zones):
        write(tmp_path, f"sys/class/thermal/thermal_zone{index}/type", name + "\n")
        write(tmp_path, f"sys/class/thermal/thermal_zone{index}/temp", milli + "\n")
    return tmp_path


def test_fake_jetson_tree_gives_exact_readings(jetson: Path) -> None:
    readings = SystemReader(jetson).read()
    assert readings == {
        "cpu_percent": 20.0,  # 4 s of CPU over the 20 s since the process started
        "rss_bytes": 25_000 * PAGE,
        "threads": 9,
        "open_fds": 5,
        "process_uptime_s": 20.0,
        "load_1m": 1.5,
        "gpu_load_percent": 52.3,
        "temperatures_c": {"CPU-therm": 45.5, "CPU-therm-2": 47.0},  # -256 °C = zone off, dropped
        "temperature_c": 47.0,
    }


def test_cpu_percent_is_measured_since_the_previous_reading(jetson: Path) -> None:
    reader = SystemReader(jetson)
    reader.read()
    write(
        jetson, "proc/self/stat", fake_stat(5 * TICKS, 2 * TICKS, 9, 10 * TICKS, 25_000)
    )  # +3 s CPU
    write(jetson, "proc/uptime", "32.00 50.00\n")  # +2 s wall
    assert reader.cpu_percent() == 150.0  # one and a half cores


def test_orin_devfreq_gpu_load_is_found(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/devfreq/17000000.gpu/device/load", "999\n")
    assert SystemReader(tmp_path).gpu_load_percent() == 99.9


def test_missing_nodes_read_as_none_not_errors(tmp_path: Path) -> None:
    readings = SystemReader(tmp_path).read()
    assert readings["temperatures_c"] == {}
    assert all(value is None for key, value in readings.items() if key != "temperatures_c")
