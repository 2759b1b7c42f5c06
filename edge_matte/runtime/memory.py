"""Keep the daemon's resident memory at what is live (glibc malloc tuning; no-op elsewhere).

glibc gives each thread that allocates concurrently an arena of its own and keeps what is freed
there, so RSS climbs with every new RTSP viewer thread, like a leak; arenas are capped at two and
trimmed after the last viewer leaves or once a minute (by the daemon's supervisor: a trim can
take a while and must not stall a serving thread). `keep_freed_memory` keeps freed frame buffers
in the heap instead of faulting fresh pages in every frame. Measured: docs/performance.md.
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
