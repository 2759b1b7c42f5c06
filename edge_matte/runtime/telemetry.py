"""System readings for telemetry: process CPU, memory, threads, fds, uptime; Jetson GPU and heat.

Read straight from /proc and /sys (no psutil on the appliance). Every path is under `root` so a
test can point a reader at a fake tree; a reading that is not available on this machine (no
GPU load node, no thermal zones, restricted /proc) is None, never an error.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

# Jetson GPU load nodes, in per mille (value / 10 = %): older L4T, newer L4T, Orin devfreq.
GPU_LOAD_PATHS = ("sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load")
GPU_LOAD_GLOBS = ("sys/devices/platform/*.gpu/load", "sys/class/devfreq/*.gpu/device/load")
PLAUSIBLE_C = (-40.0, 150.0)  # Jetson reports e.g. -256 °C for powered-down zones


class SystemReader:
    """Reads one process's and the board's health under `root` (default: the real /)."""

    def __init__(self, root: Path = Path("/"), pid: str = "self") -> None:
        self._root = Path(root)
        self._proc = self._root / "proc" / pid
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._last_cpu: tuple[float, float] | None = None  # (cpu seconds, uptime seconds)

    def read(self) -> dict[str, Any]:
        """All readings as one JSON-ready dict."""
        stat = self._stat()
        temperatures = self.temperatures_c()
        return {
            "cpu_percent": self._cpu_percent(stat),
            "rss_bytes": None if stat is None else int(stat[21]) * self._page,
            "threads": None if stat is None else int(stat[17]),
            "open_fds": self.open_fds(),
            "process_uptime_s": self._process_uptime(stat),
            "load_1m": self.load_1m(),
            "gpu_load_percent": self.gpu_load_percent(),
            "temperatures_c": temperatures,
            "temperature_c": max(temperatures.values()) if temperatures else None,
        }

    def cpu_percent(self) -> float | None:
        """CPU use of the process since the previous call (since start on the first call);
        100 = one core busy."""
        return self._cpu_percent(self._stat())

    def open_fds(self) -> int | None:
        try:
            return sum(1 for _ in (self._proc / "fd").iterdir())
        except OSError:
            return None

    def load_1m(self) -> float | None:
        text = _read(self._root / "proc/loadavg")
        return None if text is None else float(text.split()[0])

    def gpu_load_percent(self) -> float | None:
        """Jetson GPU busy %, from the first load node that exists."""
        candidates = [self._root / path for path in GPU_LOAD_PATHS]
        for pattern in GPU_LOAD_GLOBS:
            candidates += sorted(self._root.glob(pattern))
        for path in candidates:
            text = _read(path)
            if text is not None and text.isdigit():
                return int(text) / 10.0
        return None

    def temperatures_c(self) -> dict[str, float]:
        """Thermal zones by type (e.g. "cpu-thermal", "gpu-thermal"), plausible values only."""
        readings: dict[str, float] = {}
        for zone in sorted((self._root / "sys/class/thermal").glob("thermal_zone*")):
            name, milli = _read(zone / "type"), _read(zone / "temp")
            if name is None or milli is None or not milli.lstrip("-").isdigit():
                continue
            celsius = int(milli) / 1000.0
            if PLAUSIBLE_C[0] < celsius < PLAUSIBLE_C[1]:
                readings[name if name not in readings else f"{name}-{zone.name[12:]}"] = celsius
        return readings

    def _stat(self) -> list[str] | None:
        """Fields of /proc/<pid>/stat after the command name (index 0 = field 3, `state`)."""
        text = _read(self._proc / "stat")
        if text is None or ")" not in text:
            return None
        return text.rsplit(")", 1)[1].split()

    def _cpu_percent(self, stat: list[str] | None) -> float | None:
        uptime = self._uptime()
        if stat is None or uptime is None:
            return None
        cpu_s = (int(stat[11]) + int(stat[12])) / self._ticks  # utime + stime
        previous = self._last_cpu or (0.0, int(stat[19]) / self._ticks)  # since the process started
        self._last_cpu = (cpu_s, uptime)
        elapsed = uptime - previous[1]
        return round(100.0 * (cpu_s - previous[0]) / elapsed, 1) if elapsed > 0 else None

    def _process_uptime(self, stat: list[str] | None) -> float | None:
        uptime = self._uptime()
        if stat is None or uptime is None:
            return None
        return round(uptime - int(stat[19]) / self._ticks, 1)

    def _uptime(self) -> float | None:
        text = _read(self._root / "proc/uptime")
        return None if text is None else float(text.split()[0])


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def system_readings() -> dict[str, Any]:
    """Readings of this process and board; CPU % is measured since the previous call."""
    return _default_reader().read()


@functools.lru_cache(maxsize=1)
def _default_reader() -> SystemReader:
    return SystemReader()
