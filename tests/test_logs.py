"""journald-native logging: `<N>` priorities and no timestamp when stderr is the journal stream.

The daemon runs as systemd runs it: stderr is a pipe whose `st_dev:st_ino` is in $JOURNAL_STREAM
(systemd passes a socket; a pipe has the same fstat identity check). Every line must then carry
an sd-daemon.h priority prefix and no timestamp, and a failure (a background file that cannot be
used: compose.asset_failed) must come at warning priority or above, so `journalctl -p warning`
shows it. With $JOURNAL_STREAM naming something else, lines keep the plain timestamped format.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_tools import START_S, STOP_S, NotifySocket, prepared

from edge_matte.events import Event, level
from edge_matte.runtime.logs import JournalFormatter, syslog_priority

PRIORITY = re.compile(r"^<([0-7])>")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def run_daemon_logs(tmp_path: Path, journal: bool) -> list[str]:
    """Start `edge-matte run` with stderr on a pipe, wait for READY, stop it; its stderr lines."""
    path, _ = prepared(tmp_path, compose={"background": "broken.png"})
    media = tmp_path / "state" / "media"  # a file that is there (start checks pass) but no image
    media.mkdir(parents=True, exist_ok=True)
    (media / "broken.png").write_bytes(b"not an image")
    read_end, write_end = os.pipe()
    stat = os.fstat(write_end)
    identity = f"{stat.st_dev}:{stat.st_ino}" if journal else f"{stat.st_dev}:{stat.st_ino + 1}"
    notify = NotifySocket()
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "JOURNAL_STREAM": identity}
    command = [sys.executable, "-m", "edge_matte.cli", "run", "--config", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=write_end, env=env)
    os.close(write_end)
    try:
        notify.wait_for("READY", START_S, "1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()
    with os.fdopen(read_end, encoding="utf-8") as stderr:
        return stderr.read().splitlines()


def test_journal_stream_gets_priorities_and_no_timestamps(tmp_path: Path) -> None:
    lines = run_daemon_logs(tmp_path, journal=True)
    assert lines and all(PRIORITY.match(line) for line in lines), lines
    assert not any(TIMESTAMP.search(line) for line in lines), lines
    failure = [line for line in lines if "compose.asset_failed" in line]
    assert failure and all(int(PRIORITY.match(line)[1]) <= 4 for line in failure), lines
    routine = [line for line in lines if "event plate.loaded" in line]
    assert routine and all(line.startswith("<6>") for line in routine), lines
    # journalctl -p warning: failures only, nothing routine.
    warnings = [line for line in lines if int(PRIORITY.match(line)[1]) <= 4]
    assert not any("plate.loaded" in line or "serving" in line for line in warnings), warnings


def test_other_stderr_keeps_timestamps(tmp_path: Path) -> None:
    lines = run_daemon_logs(tmp_path, journal=False)
    assert lines and not any(PRIORITY.match(line) for line in lines)
    assert any(TIMESTAMP.match(line) and " WARNING " in line for line in lines), lines


def test_every_line_of_a_traceback_carries_the_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = JournalFormatter().format(record)
    assert len(text.splitlines()) > 2 and all(line.startswith("<3>") for line in text.splitlines())


@pytest.mark.parametrize(
    ("levelno", "priority"),
    [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (5, 7)],
)
def test_syslog_priorities_follow_sd_daemon(levelno: int, priority: int) -> None:
    assert syslog_priority(levelno) == priority


@pytest.mark.parametrize("kind", ["source.lost", "compose.asset_failed", "engine.fallback"])
def test_failure_events_are_warnings(kind: str) -> None:
    assert level(Event(kind, "x")) >= logging.WARNING
    assert level(Event("plate.captured", "x")) == logging.INFO
