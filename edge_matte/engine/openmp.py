"""Keep torch's OpenMP worker pool to the one thread that runs inference.

libgomp (PyTorch's OpenMP runtime) gives every thread that runs a parallel region a pool of
worker threads, kept for as long as that thread lives. Once the pools together hold more threads
than there are cores, libgomp stops spinning between parallel regions, and the many short
regions of one frame each pay a wake-up: on 2 cores the pipeline's matte thread ran at ~150% CPU
and up to 1.6x slower, only because the main thread had built (and so touched) the model first.
One-off torch work outside the inference thread (building, loading, warming an engine) therefore
runs on a short-lived thread, whose pool goes with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_passing_thread(work: Callable[[], T], name: str = "torch-setup") -> T:
    """`work()` run on a new thread that ends with it; its result returned, its exception raised."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as err:  # handed to the caller, who sees it as its own
            failure.append(err)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
