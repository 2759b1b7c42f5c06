"""Logging set-up: journald-native under systemd, timestamped lines elsewhere.

systemd sets $JOURNAL_STREAM to `<st_dev>:<st_ino>` of the stream it connected to stderr. When
stderr still is that stream, journald adds the timestamp itself and reads a `<N>` syslog priority
prefix on each line (the sd-daemon.h SD_ERR/SD_WARNING/... convention), so lines carry the
priority and no time; `journalctl -p warning` then shows every failure and nothing routine.
Anywhere else (a terminal, a pipe, a test log) lines keep their own timestamp and level name.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
# sd-daemon.h: SD_CRIT "<2>", SD_ERR "<3>", SD_WARNING "<4>", SD_INFO "<6>", SD_DEBUG "<7>".
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_DEBUG_PRIORITY = 7


def syslog_priority(level: int) -> int:
    """The syslog priority of a logging level (custom levels round down to the next named one)."""
    return next((priority for floor, priority in _PRIORITIES if level >= floor), _DEBUG_PRIORITY)


class JournalFormatter(logging.Formatter):
    """`<N>` before every line of a record (tracebacks too, which journald splits per line)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def journal_stream(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal connection systemd described in $JOURNAL_STREAM."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):  # unset/garbled, or not a real file
        return False


def configure(level: int, stream: IO[str] | None = None) -> None:
    """Send the root logger's records to `stream` (stderr) in the format that suits it."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    journal = journal_stream(stream)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
