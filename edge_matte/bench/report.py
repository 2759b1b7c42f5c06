"""The benchmark's output: one table on stdout and, when asked, the same rows as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_matte.bench.measure import Row

_COLUMNS = (  # (field, heading, decimals)
    ("median_ms", "med ms", 1),
    ("min_ms", "min ms", 1),
    ("p95_ms", "p95 ms", 1),
    ("fps", "fps", 1),
    ("speedup", "x base", 2),
    ("cpu_percent", "CPU %", 0),
    ("peak_rss_mb", "RSS MB", 0),
)
_NAME_WIDTH = 46


def print_report(report: dict[str, Any], rows: list[Row]) -> None:
    """The machine, the load around the run, then one line per row with its notes."""
    print(f"machine: {report['machine']}")
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    for name, why in report["skipped_backends"].items():
        print(f"backend {name} skipped: {why}")
    heads = " ".join(f"{heading:>7}" for _, heading, _ in _COLUMNS)
    print(f"{'size':>6} {'row':<{_NAME_WIDTH}} {heads}  notes")
    for row in rows:
        print(f"{row.size:>6} {row.row:<{_NAME_WIDTH}} {_values(row)}  {_notes(row)}")


def _values(row: Row) -> str:
    cells = []
    for name, _, decimals in _COLUMNS:
        value = getattr(row, name)
        cells.append(f"{'-':>7}" if value is None else f"{value:>7.{decimals}f}")
    return " ".join(cells)


def _notes(row: Row) -> str:
    return ", ".join(f"{key}={value}" for key, value in row.notes.items())


def write_json(path: Path, report: dict[str, Any], rows: list[Row]) -> None:
    """`report` with the rows as flat objects (each row's notes merged into it)."""
    path.write_text(json.dumps({**report, "rows": [row.as_json() for row in rows]}, indent=2))
