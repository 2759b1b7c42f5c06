"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader (or a restart after `kill -9`) sees either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path

from edge_matte.errors import StorageError


def write_bytes(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Atomically replace `path` with `data`; raise StorageError and keep the old file on failure."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        Path(tmp_name).replace(path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                Path(tmp_name).unlink()


def write_text(path: Path, text: str, mode: int = 0o640) -> None:
    """Atomically replace `path` with UTF-8 `text`."""
    write_bytes(path, text.encode("utf-8"), mode)


def sweep_leftovers(path: Path) -> list[Path]:
    """Delete the temp files a write of `path` left behind when the process was killed mid-write.

    Call it before this process writes `path` again: at start-up nothing is writing them. Only our
    own pattern (`.NAME.*.tmp` beside `path`) is touched; returns what was removed."""
    path = Path(path)
    removed = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            leftover.unlink()
        except OSError:
            continue  # e.g. a read-only directory: harmless, the next sweep tries again
        removed.append(leftover)
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
