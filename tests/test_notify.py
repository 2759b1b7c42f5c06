"""sd_notify against real AF_UNIX datagram sockets (a file path and the abstract namespace)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_matte.runtime.notify import Heartbeat, Notifier

WAIT_S = 5.0  # generous deadline for a datagram that should arrive


class Listener:
    """The service manager's end: a bound datagram socket and a parser for what arrives."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as $NOTIFY_SOCKET spells it

    def receive(self, timeout: float = WAIT_S) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode("utf-8")
        return dict(line.split("=", 1) for line in data.split("\n"))

    def receive_until(self, key: str, timeout: float = WAIT_S) -> dict[str, str]:
        """The next message carrying `key`, skipping others; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        skipped: list[dict[str, str]] = []
        while True:
            try:
                message = self.receive(max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for a {key}= message; "
                    f"last ones: {skipped[-5:]}"
                ) from None
            if key in message:
                return message
            skipped.append(message)

    def quiet_for(self, key: str, window: float, deadline: float) -> bool:
        """True once `window` seconds pass without a message carrying `key` (before `deadline`)."""
        last = time.monotonic()
        while time.monotonic() < deadline:
            try:
                if key in self.receive(timeout=0.05):
                    last = time.monotonic()
            except TimeoutError:
                pass
            if time.monotonic() - last >= window:
                return True
        return False


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"edge-matte-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Listener(sock, "@" + name)


@pytest.fixture
def notifier(listener: Listener) -> Iterator[Notifier]:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
    yield notifier
    notifier.close()


def test_messages_arrive_as_systemd_expects_them(listener: Listener, notifier: Notifier) -> None:
    assert notifier.ready("fps 30.0 | engine classic")
    assert listener.receive() == {"READY": "1", "STATUS": "fps 30.0 | engine classic"}
    notifier.status("plate\ncaptured   now")
    assert listener.receive() == {"STATUS": "plate captured now"}
    notifier.watchdog()
    assert listener.receive() == {"WATCHDOG": "1"}
    notifier.extend_timeout(90)
    assert listener.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}
    before = time.monotonic_ns() // 1000
    notifier.reloading()
    message = listener.receive()
    assert message["RELOADING"] == "1"
    assert int(message["MONOTONIC_USEC"]) >= before
    notifier.stopping()
    assert listener.receive() == {"STOPPING": "1"}


def test_abstract_namespace_socket(abstract_listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": abstract_listener.address})
    assert notifier.enabled
    assert notifier.ready()
    assert abstract_listener.receive() == {"READY": "1"}
    notifier.close()


def test_status_is_one_bounded_line(listener: Listener, notifier: Notifier) -> None:
    notifier.status("x" * 1000)
    status = listener.receive()["STATUS"]
    assert len(status) <= 200 and status.endswith("…")


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "20000000"}])
def test_without_notify_socket_everything_is_a_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_env(environ)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    heartbeat = Heartbeat(notifier)
    heartbeat.start()  # no thread, no error
    heartbeat.stop()
    assert heartbeat.tick() is False


def test_unreachable_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled and notifier.ready() is False


def test_non_unix_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not a unix socket" in caplog.text


@pytest.mark.parametrize(
    ("watchdog_pid", "usec", "expected"),
    [
        (None, "20000000", 10.0),
        ("self", "20000000", 10.0),
        ("other", "20000000", None),
        (None, "0", None),
        (None, "soon", None),
        ("not-a-pid", "20000000", None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    listener: Listener, watchdog_pid: str | None, usec: str, expected: float | None
) -> None:
    environ = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": usec}
    if watchdog_pid is not None:
        pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}
        environ["WATCHDOG_PID"] = pids.get(watchdog_pid, watchdog_pid)
    assert Notifier.from_env(environ).watchdog_interval == expected


def test_extending_keeps_sending_until_the_block_ends(
    listener: Listener, notifier: Notifier
) -> None:
    with notifier.extending(0.2):
        first = listener.receive_until("EXTEND_TIMEOUT_USEC")
        second = listener.receive_until("EXTEND_TIMEOUT_USEC")
    assert first["EXTEND_TIMEOUT_USEC"] == second["EXTEND_TIMEOUT_USEC"] == "200000"
    assert listener.quiet_for("EXTEND_TIMEOUT_USEC", window=0.5, deadline=time.monotonic() + WAIT_S)


def test_a_build_that_outlasts_its_limit_stops_keeping_systemd_waiting(listener: Listener) -> None:
    """A hung build must still end in systemd's watchdog: the keep-alives stop after the limit."""
    notifier = Notifier(listener.address, watchdog_usec=100_000)
    with notifier.extending(0.2, limit_s=0.3):
        assert listener.receive_until("WATCHDOG")["WATCHDOG"] == "1"
        assert listener.quiet_for("WATCHDOG", window=0.5, deadline=time.monotonic() + WAIT_S)
    notifier.close()


class FakeClock:
    """A hand-driven monotonic clock, so stall limits are checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stalled_stages_follow_each_stage_limit(listener: Listener, notifier: Notifier) -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(notifier, stall_s=10.0, clock=clock, summary=lambda: "fps 29.9")
    heartbeat.register("capture")
    heartbeat.register("inference", stall_s=60.0)  # e.g. a slow engine warm-up
    clock.now += 9.0
    heartbeat.beat("output")  # first beat registers it with the default limit
    assert heartbeat.stalled_stages() == []
    assert heartbeat.tick() is True
    assert listener.receive() == {"WATCHDOG": "1", "STATUS": "fps 29.9"}

    clock.now += 2.0  # capture last beat 11 s ago
    assert heartbeat.stalled_stages() == ["capture"]
    assert heartbeat.tick() is False
    assert listener.receive() == {"STATUS": "stalled: capture"}

    clock.now += 50.0
    assert heartbeat.stalled_stages() == ["capture", "inference", "output"]
    heartbeat.beat("inference")
    heartbeat.beat("capture")
    heartbeat.beat("output")
    assert heartbeat.stalled_stages() == []


def test_constructor_stages_are_expected_from_start(listener: Listener, notifier: Notifier) -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(notifier, ("capture", "matte"), clock=clock)
    clock.now += 11.0  # e.g. an engine build between construction and start
    assert heartbeat.stalled_stages() == ["capture", "matte"]
    heartbeat.start()
    try:
        assert heartbeat.stalled_stages() == []
        clock.now += 11.0
        heartbeat.beat("capture")
        assert heartbeat.stalled_stages() == ["matte"]
    finally:
        heartbeat.stop()


def test_broken_summary_does_not_stop_the_pings(listener: Listener, notifier: Notifier) -> None:
    def summary() -> str:
        raise RuntimeError("bug in the daemon's summary")

    heartbeat = Heartbeat(notifier, summary=summary)
    assert heartbeat.tick() is True
    assert listener.receive() == {"WATCHDOG": "1"}


class Stage:
    """A pipeline stage in a thread that beats until told to hang or stop."""

    def __init__(self, heartbeat: Heartbeat, name: str) -> None:
        self.hung = threading.Event()
        self._stop = threading.Event()
        self._heartbeat = heartbeat
        self._name = name
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            if not self.hung.is_set():
                self._heartbeat.beat(self._name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_a_hung_stage_stops_the_watchdog_pings(listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "100000"})
    heartbeat = Heartbeat(
        notifier, stall_s=0.3, summary=lambda: "fps 30.0 | engine classic | plate ready"
    )
    assert heartbeat.period_s == pytest.approx(0.05)
    stages = [Stage(heartbeat, "capture"), Stage(heartbeat, "inference")]
    heartbeat.start()
    try:
        for _ in range(3):  # periodic pings with the summary while everything flows
            assert listener.receive_until("WATCHDOG") == {
                "WATCHDOG": "1",
                "STATUS": "fps 30.0 | engine classic | plate ready",
            }

        stages[1].hung.set()  # inference hangs
        assert listener.quiet_for("WATCHDOG", window=0.5, deadline=time.monotonic() + WAIT_S)
        assert heartbeat.stalled_stages() == ["inference"]
        assert listener.receive_until("STATUS") == {"STATUS": "stalled: inference"}

        stages[1].hung.clear()  # it recovers: pings resume
        assert listener.receive_until("WATCHDOG")["WATCHDOG"] == "1"
    finally:
        heartbeat.stop()
        for stage in stages:
            stage.stop()
        notifier.close()
    assert listener.quiet_for("WATCHDOG", window=0.3, deadline=time.monotonic() + WAIT_S)
