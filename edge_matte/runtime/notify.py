"""Tell systemd the truth about the daemon's health: the sd_notify protocol and a heartbeat.

`Notifier` sends READY=1, STATUS=, WATCHDOG=1, EXTEND_TIMEOUT_USEC=, RELOADING=1 and STOPPING=1
as datagrams to $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace), the few lines of
socket code systemd documents; it is a no-op when the variable is unset, so the daemon runs the
same outside systemd. `Heartbeat` is the watchdog: every pipeline stage calls `beat(stage)`, and
a thread pings WATCHDOG=1 only while every registered stage beat recently, so a hung capture or
inference stops the pings and systemd (WatchdogSec=) restarts the service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

_LOG = logging.getLogger(__name__)

_STATUS_MAX = 200  # STATUS= is one line in `systemctl status`; keep it readable
_DEFAULT_PERIOD_S = 5.0  # STATUS= refresh when systemd set no watchdog


class Notifier:
    """Sends sd_notify messages; every method returns False (and does nothing) when disabled."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        if address and self._address is None:
            _LOG.warning(
                "NOTIFY_SOCKET=%r is not a unix socket; systemd notifications disabled", address
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for $NOTIFY_SOCKET; the watchdog counts only if $WATCHDOG_PID is us (or unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None when there is no watchdog."""
        if not self.enabled or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2e6

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (frames flow end to end)."""
        return self.send(READY="1", STATUS=status)

    def status(self, text: str) -> bool:
        """Set the one-line status `systemctl status` shows."""
        return self.send(STATUS=text)

    def watchdog(self, status: str | None = None) -> bool:
        """Ping the watchdog (and optionally refresh the status in the same datagram)."""
        return self.send(WATCHDOG="1", STATUS=status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more from now before the start (or stop) timeout fires."""
        return self.send(EXTEND_TIMEOUT_USEC=str(max(1, round(seconds * 1e6))))

    def reloading(self) -> bool:
        """A config reload began; READY=1 ends it. MONOTONIC_USEC is required by Type=notify-reload."""
        return self.send(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self) -> bool:
        """Shutdown began."""
        return self.send(STOPPING="1")

    def send(self, **fields: str | None) -> bool:
        """Send `KEY=value` lines (None values skipped) as one datagram; False if not delivered."""
        if self._address is None:
            return False
        lines = [f"{key}={_one_line(value)}" for key, value in fields.items() if value is not None]
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto("\n".join(lines).encode("utf-8"), self._address)
        except OSError as err:
            # The manager may be restarting; a lost ping is what the watchdog is for, never a crash.
            _LOG.warning("cannot notify systemd at %r: %s", self._address, err)
            return False
        return True

    @contextlib.contextmanager
    def extending(self, seconds: float, limit_s: float | None = None) -> Iterator[None]:
        """Keep systemd waiting while the block runs (a TensorRT build of minutes).

        EXTEND_TIMEOUT_USEC extends only the start/stop timers (systemd 249, Ubuntu 22.04), so
        where a watchdog is set the same thread also pings WATCHDOG=1 at its interval: the
        block is on the way to frames, not hung. After `limit_s` the thread stops, so a build
        that hangs still ends in systemd's timeout or watchdog.
        """
        if not self.enabled:
            yield
            return
        done = threading.Event()
        period = min(seconds / 2, self.watchdog_interval or seconds / 2)
        deadline = time.monotonic() + (limit_s if limit_s is not None else float("inf"))

        def extend() -> None:
            while time.monotonic() < deadline:
                self.extend_timeout(seconds)
                if self.watchdog_interval is not None:
                    self.watchdog()
                if done.wait(period):
                    return
            _LOG.error("still busy after %.0f s: no longer keeping systemd waiting", limit_s)

        thread = threading.Thread(target=extend, name="notify-extend", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def close(self) -> None:
        """Close the socket; later sends reopen it."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _socket_address(value: str) -> str | bytes | None:
    """A sendto() address for $NOTIFY_SOCKET: '@name' is abstract (leading NUL), '/path' a file."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:, which this daemon never runs under


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """$WATCHDOG_USEC, unless $WATCHDOG_PID names another process (the watchdog is not ours)."""
    pid = env.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(value: str) -> str:
    line = " ".join(value.split())
    return line if len(line) <= _STATUS_MAX else line[: _STATUS_MAX - 1] + "…"


class Heartbeat:
    """The pipeline's watchdog: pings systemd only while every registered stage keeps beating.

    Stages call `beat(name)` once per unit of work (a frame read, a matte computed, a frame sent).
    A stage is expected once named in `stages`, passed to `register`, or after its first beat.
    `tick` is one round of the watchdog thread: WATCHDOG=1 plus STATUS=<summary> when healthy,
    only STATUS=stalled: ... otherwise. Call `tick` directly or run the thread (`start`/`stop`).
    """

    def __init__(
        self,
        notifier: Notifier,
        stages: Iterable[str] = (),
        summary: Callable[[], str] | None = None,
        *,
        stall_s: float = 10.0,
        period_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._stages = tuple(stages)
        self._stall_s = stall_s
        self._period_s = period_s or notifier.watchdog_interval or _DEFAULT_PERIOD_S
        self._summary = summary
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._limits: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for stage in self._stages:
            self.register(stage)

    @property
    def period_s(self) -> float:
        """Seconds between watchdog rounds."""
        return self._period_s

    def register(self, stage: str, stall_s: float | None = None) -> None:
        """Expect beats from `stage` from now on, within `stall_s` (default: the heartbeat's)."""
        with self._lock:
            self._last[stage] = self._clock()
            self._limits[stage] = stall_s or self._stall_s

    def beat(self, stage: str) -> None:
        """`stage` made progress."""
        now = self._clock()
        with self._lock:
            self._last[stage] = now
            self._limits.setdefault(stage, self._stall_s)

    def stalled_stages(self) -> list[str]:
        """Registered stages that have not beaten within their stall limit, sorted."""
        now = self._clock()
        with self._lock:
            return sorted(s for s, last in self._last.items() if now - last > self._limits[s])

    def tick(self) -> bool:
        """One watchdog round; True if WATCHDOG=1 was sent."""
        stalled = self.stalled_stages()
        if stalled:
            self._notifier.status("stalled: " + ", ".join(stalled))
            _LOG.warning("watchdog withheld: no progress from %s", ", ".join(stalled))
            return False
        return self._notifier.watchdog(self._status_line())

    def start(self) -> None:
        """Expect beats from the constructor's stages from now on, and run `tick` every period in
        a daemon thread (no thread when systemd does not listen)."""
        for stage in self._stages:
            self.register(stage, self._limits.get(stage))
        if not self._notifier.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; no pings after this returns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self._period_s):
                return

    def _status_line(self) -> str | None:
        if self._summary is None:
            return None
        try:
            return self._summary()
        except Exception:  # supervision boundary: a broken summary must not stop the pings
            _LOG.exception("status summary failed")
            return None
