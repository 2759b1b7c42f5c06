"""glibc malloc tuning of the daemon process: arenas capped, free memory given back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edge_matte.runtime import memory

# Each of 6 threads, all alive at once, allocates (and keeps) blocks through malloc; glibc gives
# each new thread an arena of its own while under the cap. malloc_info lists one <heap> per arena.
_ARENAS = """
import ctypes, os, sys, tempfile, threading
from edge_matte.runtime import memory
print(memory.limit_arenas())
kept = []
together = threading.Barrier(6)
def work():
    kept.extend(bytearray(4000) for _ in range(100))
    together.wait()  # all alive at once: no thread can take over an arena another left
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
memory.release_free_memory()
libc = ctypes.CDLL("libc.so.6")
libc.fdopen.restype = ctypes.c_void_p
with tempfile.TemporaryFile() as out:
    stream = libc.fdopen(os.dup(out.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    out.seek(0)
    print(out.read().decode().count("<heap nr="))
"""


def arenas(env: dict[str, str]) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _ARENAS], capture_output=True, text=True, env=env, check=True
    )
    limited, heaps = result.stdout.split()
    return limited, int(heaps)


@pytest.mark.skipif(memory._libc() is None, reason="needs glibc")
def test_arenas_are_capped_unless_the_environment_says_otherwise() -> None:
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    assert arenas(env) == ("True", memory.ARENAS)
    limited, heaps = arenas({**env, "MALLOC_ARENA_MAX": "8"})  # the operator's choice wins
    assert limited == "False" and heaps > memory.ARENAS


# Allocates, touches and frees a 40 MB block ten times (above glibc's largest automatic mmap
# threshold, so by default each comes from mmap as fresh pages) and counts the page faults.
# (malloc itself: numpy would ask for huge pages, which fault 512 times less often.)
_REUSE = """
import ctypes, resource, sys
from edge_matte.runtime import memory
print(memory.keep_freed_memory() if sys.argv[1] == "tune" else "untuned")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def block():
    address = libc.malloc(40_000_000)
    ctypes.memset(address, 1, 40_000_000)
    libc.free(address)
block()  # the first block's pages come from the kernel either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_PAGES_PER_BLOCK = 40_000_000 // 4096


def faults(mode: str, env: dict[str, str]) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _REUSE, mode], capture_output=True, text=True, env=env, check=True
    )
    tuned, count = result.stdout.split()
    return tuned, int(count)


@pytest.mark.skipif(memory._libc() is None, reason="needs glibc")
def test_freed_frame_buffers_are_reused_instead_of_faulted_in_again() -> None:
    env = {key: value for key, value in os.environ.items() if "MALLOC" not in key}
    env.pop("GLIBC_TUNABLES", None)
    tuned, count = faults("untuned", env)
    assert count > 5 * _PAGES_PER_BLOCK  # fresh pages every time
    tuned, count = faults("tune", env)
    assert tuned == "True" and count < _PAGES_PER_BLOCK // 4
    # The operator's thresholds win.
    tuned, count = faults("tune", {**env, "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert tuned == "False" and count > 5 * _PAGES_PER_BLOCK
    tunables = "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072"
    tuned, count = faults("tune", {**env, "GLIBC_TUNABLES": tunables})
    assert tuned == "False" and count > 5 * _PAGES_PER_BLOCK
    tuned, count = faults("tune", {**env, "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert tuned == "True" and count < _PAGES_PER_BLOCK // 4  # other tunables: still ours
