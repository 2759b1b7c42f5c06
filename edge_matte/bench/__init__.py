"""`edge-matte bench`: every fast path against the plain eager FP32 model, measured in one run.

Per size (480p, 720p, 1080p by default; 4k on request) it measures, interleaved round by round:

* the baseline: BackgroundMattingV2 as published, eager torch FP32 on the CPU (`backends.py`);
* each backend available here: torch-cpu+fast, torch-cpu+ort, classic, torch-cuda, with its
  largest alpha difference to the baseline and the tolerance it promises (`catalog.py`);
* subject-region inference at 10/25/50/100% coverage over the baseline and over torch-cpu+fast,
  with the crop's share of the frame and its alpha difference to the whole frame's
  (`region_rows.py`);
* an idle frame (network skipped) against active ones, and the stages around the model
  (`frame_rows.py`);
* the daemon's whole pipeline serving a real RTSP client, against its own engine alone
  (`pipeline_rows.py`; --pipeline-seconds 0 skips it);
* with it, what each output (RTSP, the local screen, the browser view) costs per frame at 30 fps,
  on the output stage and in all, against the frame budget (`output_rows.py`).

Every row has median, min and p95 ms, fps, speed-up over its size's baseline, CPU % (process
CPU time over wall time: 200 is two busy cores) and peak RSS; `report.py` prints the table and
writes the JSON. Without --weights the network has seeded random weights of the official
architecture: speed does not depend on the values, but alpha differences between engines other
than the fast paths' are then meaningless.

On a shared machine other processes swing timings by 2-5x (oneDNN's threads wait on each other
when one loses its core): compare rows of one run, check the load averages printed before and
after and that CPU % is near the thread count x 100, and use --threads 1 for steadier ratios.
TensorRT is measured on the Jetson by benchmarks/trt_bench.py.
"""

from __future__ import annotations

import argparse

from edge_matte.bench.options import add_bench_arguments

__all__ = ["add_bench_arguments", "bench_command"]


def bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed `edge-matte bench` arguments (torch is imported only now)."""
    from edge_matte.bench.command import run

    return run(args)
