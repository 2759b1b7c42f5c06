"""Keep the daemon's resident memory at what is live (glibc malloc tuning; no-op elsewhere).

Frames pass through multi-megabyte buffers on many threads (capture, matting, encoding, one
GStreamer thread or more per RTSP viewer), and glibc gives each thread that allocates
concurrently an arena of its own: up to 8 per core. Memory freed into an arena stays there, so
RSS climbs in steps for as long as new threads meet new arenas, which reads like a leak in a
soak (a 720p soak: +40 MB over the first 5 min; +12% over 30 min with 666 viewer sessions).
Two arenas are plenty for a handful of busy threads, and a trim after the work that frees the
most (the last viewer leaving) or once a minute gives the rest back (the daemon's supervisor
calls it: a trim can take a while on a big heap, and must not stall a serving thread).

The same trims are why freed frame buffers may stay in the heap between them: by default glibc
serves blocks above 128 KB (rising to at most 32 MB as it sees them freed) with mmap and trims
the heap's top above twice that, so each frame's tensors come as fresh pages the kernel must
fault in and zero. At 720p that was ~30,000 page faults and 50-120 ms of system CPU a frame,
about a fifth of a matting call's time on 2 cores. `keep_freed_memory` raises both thresholds.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from typing import Any

_LOG = logging.getLogger(__name__)

ARENAS = 2
KEEP_BELOW = 1 << 30  # bytes: blocks up to this size come from the heap and go back to it
# glibc's mallopt parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_THRESHOLD_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_THRESHOLD_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


@cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas, unless MALLOC_ARENA_MAX already says how many; call it before
    the threads start. True when the cap was set here."""
    libc = _libc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    if libc.mallopt(_M_ARENA_MAX, arenas) != 1:
        _LOG.warning("mallopt(M_ARENA_MAX, %d) failed; RSS may grow in steps", arenas)
        return False
    return True


def keep_freed_memory(limit: int = KEEP_BELOW) -> bool:
    """Let malloc reuse freed blocks up to `limit` bytes instead of giving them back to the
    kernel at once (see the module docstring), unless the environment tunes malloc's
    thresholds itself. True when set here. `release_free_memory` still gives them back."""
    libc = _libc()
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        libc is None
        or any(name in os.environ for name in _THRESHOLD_VARIABLES)
        or any(name in tunables for name in _THRESHOLD_TUNABLES)
    ):
        return False
    if libc.mallopt(_M_MMAP_THRESHOLD, limit) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, limit) != 1:
        _LOG.warning("mallopt thresholds not set; frame buffers will be faulted in anew")
        return False
    return True


def tune_malloc() -> None:
    """Both tunings, for a long-running frame-processing process; call before threads start."""
    limit_arenas()
    keep_freed_memory()


def release_free_memory() -> None:
    """Give memory the stages freed back to the OS (glibc `malloc_trim`)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
