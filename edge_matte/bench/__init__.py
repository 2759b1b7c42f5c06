"""`edge-matte bench`: every fast path against the plain eager FP32 model, measured in one run.

Per size, interleaved round by round: the baseline (`backends.py`), each backend available here
with its alpha difference and promised tolerance (`catalog.py`), subject regions
(`region_rows.py`), idle vs active frames (`frame_rows.py`), the daemon's whole pipeline against
its own engine (`pipeline_rows.py`) and what each output costs (`output_rows.py`); `report.py`
prints the table and writes the JSON. Ratios within one run are what to read: how to read them
on a shared machine, and the figures measured so far, are in docs/performance.md.
"""

from __future__ import annotations

import argparse

from edge_matte.bench.options import add_bench_arguments

__all__ = ["add_bench_arguments", "bench_command"]


def bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed `edge-matte bench` arguments (torch is imported only now)."""
    from edge_matte.bench.command import run

    return run(args)
