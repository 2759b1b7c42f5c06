"""Keep the daemon's resident memory at what is live (glibc malloc tuning; no-op elsewhere).

Frames pass through multi-megabyte buffers on many threads (capture, matting, encoding, one
GStreamer thread or more per RTSP viewer), and glibc gives each thread that allocates
concurrently an arena of its own: up to 8 per core. Memory freed into an arena stays there, so
RSS climbs in steps for as long as new threads meet new arenas, which reads like a leak in a
soak (a 720p soak: +40 MB over the first 5 min; +12% over 30 min with 666 viewer sessions).
Two arenas are plenty for a handful of busy threads, and a trim after the work that frees the
most (the last viewer leaving) or once a minute gives the rest back (the daemon's supervisor
calls it: a trim can take a while on a big heap, and must not stall a serving thread).
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from typing import Any

_LOG = logging.getLogger(__name__)

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


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


def release_free_memory() -> None:
    """Give memory the stages freed back to the OS (glibc `malloc_trim`)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
