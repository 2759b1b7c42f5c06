"""Per-stage counters and timings for telemetry, STATUS= and the benchmarks.

Each stage owns one StageStats and is its only writer; readers take a snapshot. Windows are
bounded ring buffers so a months-long run does not grow.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

WINDOW = 256


class StageStats:
    """Frames in/out/dropped, per-frame processing time and output rate of one stage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self._busy_ms: deque[float] = deque(maxlen=WINDOW)
        self._out_times: deque[float] = deque(maxlen=WINDOW)

    def record(self, busy_s: float, produced: bool = True) -> None:
        """One frame processed in `busy_s` seconds (and passed on if `produced`)."""
        now = time.monotonic()
        with self._lock:
            self.frames_in += 1
            self._busy_ms.append(busy_s * 1000.0)
            if produced:
                self.frames_out += 1
                self._out_times.append(now)

    def fps(self) -> float:
        """Output rate over the recent window (0 when stalled for more than 2 s)."""
        with self._lock:
            times = list(self._out_times)
        if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def snapshot(self) -> dict[str, float | int]:
        with self._lock:
            busy = np.array(self._busy_ms) if self._busy_ms else np.zeros(1)
            counts = {"in": self.frames_in, "out": self.frames_out, "dropped": self.dropped}
        return {
            **counts,
            "fps": round(self.fps(), 2),
            "ms_p50": round(float(np.percentile(busy, 50)), 2),
            "ms_p95": round(float(np.percentile(busy, 95)), 2),
        }


class LatencyWindow:
    """Capture-to-publish latency of recent frames (seconds in, milliseconds out)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms: deque[float] = deque(maxlen=WINDOW)

    def add(self, seconds: float) -> None:
        with self._lock:
            self._ms.append(seconds * 1000.0)

    def percentiles(self) -> dict[str, float | None]:
        with self._lock:
            values = np.array(self._ms)
        if values.size == 0:
            return {"p50_ms": None, "p95_ms": None}
        return {
            "p50_ms": round(float(np.percentile(values, 50)), 1),
            "p95_ms": round(float(np.percentile(values, 95)), 1),
        }
