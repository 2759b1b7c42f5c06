"""`edge-matte soak`: run the daemon for N minutes under viewers and MQTT traffic, then judge it.

The daemon runs as `edge-matte run` in a child process, exactly as systemd runs it, so what is
measured (RSS, threads, descriptors from /proc/<pid>) is the daemon alone; its fps and client
count come from the STATUS= line of its sd_notify heartbeat, read on a socket the soak owns.
Meanwhile real RTSP viewers (full RTSP sessions over TCP, RTP read and counted) join and leave,
one in ten stalling without reading, and MQTT commands flow when `mosquitto` is on PATH.

Memory, threads and descriptors are compared at rest: after the warm-up and at the end the
viewers and commands pause until the daemon has no client, and those two readings are judged
(viewer sockets and GStreamer's per-client threads would otherwise make noise of the growth).
Verdict: RSS growth under 5 %, no thread or descriptor growth, no fps decay beyond 10 %, every
MQTT request answered, viewers served, a clean stop. Exit 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_matte.runtime.telemetry import SystemReader
from edge_matte.tools.soak_load import MqttTraffic, Viewers

_LOG = logging.getLogger(__name__)

RSS_GROWTH_LIMIT = 0.05
# The plate, the first encoder and the allocator settle over the first minutes; the resting
# baseline is taken after them (at most 5 min in, a third of shorter runs).
WARMUP_S = 300.0
FPS_DECAY_LIMIT = 0.10
VIEWER_SUCCESS = 0.95
READY_S = 120.0
SETTLE_S = 30.0
STEADY_S = 2.0  # the thread count must hold this long to count as settled
WATCHDOG_USEC = 2_000_000  # a heartbeat (and STATUS=) every second
_STATUS = re.compile(r"^(?P<fps>[\d.]+) fps, .*?(?P<clients>\d+) clients$")


@dataclass
class Reading:
    """One measurement of the daemon process."""

    elapsed_s: float
    rss_mb: float
    threads: int
    fds: int
    fps: float
    clients: int
    cpu_percent: float | None


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to soak")
    parser.add_argument("--interval-s", type=float, default=60.0, help="seconds between reports")
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="seconds before the resting baseline (default: a third of the run, at most 300)",
    )
    parser.add_argument("--width", type=int, default=1280, help="synthetic camera width")
    parser.add_argument("--height", type=int, default=720, help="synthetic camera height")
    parser.add_argument("--fps", type=float, default=30.0, help="synthetic camera frame rate")
    parser.add_argument("--viewers", type=int, default=4, help="RTSP viewers at most at once")
    parser.add_argument("--no-mqtt", action="store_true", help="no broker, no MQTT commands")
    parser.add_argument(
        "--config", type=Path, default=None, help="base config (matting, compose, plate) to soak"
    )
    parser.add_argument("--report", type=Path, default=None, help="write the readings as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the viewer/command schedule")


def main_soak(args: argparse.Namespace) -> int:
    """Run the soak described by `args`; 0 when every check passes."""
    with tempfile.TemporaryDirectory(prefix="edge-matte-soak-") as work:
        return Soak(args, Path(work)).run()


class Soak:
    """One soak run in a scratch directory: broker, daemon, viewers, MQTT traffic, readings."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self._args = args
        self._work = work
        self._rng = random.Random(args.seed)
        duration = args.minutes * 60.0
        self._duration = duration
        self._warmup = args.warmup_s if args.warmup_s is not None else min(WARMUP_S, duration / 3)
        self.readings: list[Reading] = []

    def run(self) -> int:
        broker = None if self._args.no_mqtt else start_broker(self._work)
        if broker is None:
            _say("MQTT: off" + ("" if self._args.no_mqtt else " (no mosquitto on PATH)"))
        notify = NotifyListener()
        config_path = self._write_config(broker[1] if broker else None)
        daemon = _spawn(config_path, notify, self._work / "daemon.log")
        try:
            return self._soak(daemon, notify, broker[1] if broker else None)
        finally:
            for process in (daemon, broker[0] if broker else None):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
            notify.close()

    def _soak(
        self, daemon: subprocess.Popen[bytes], notify: NotifyListener, broker_port: int | None
    ) -> int:
        if not notify.ready.wait(READY_S):
            _say(f"FAIL: the daemon did not become ready; see its log:\n{self._log_tail()}")
            return 1
        reader, probe = SystemReader(pid=str(daemon.pid)), SystemReader(pid=str(daemon.pid))
        viewers = Viewers(self._url(), self._args.viewers, self._rng)
        traffic = None if broker_port is None else MqttTraffic(broker_port, self._rng)
        loads = [load for load in (viewers, traffic) if load is not None]
        for load in loads:
            load.start()
        started = time.monotonic()
        baseline = None
        while time.monotonic() - started < self._duration and daemon.poll() is None:
            left = started + self._duration - time.monotonic()
            time.sleep(max(0.0, min(self._args.interval_s, left)))  # the reporting period
            reading = self._read(reader, notify, started)
            self.readings.append(reading)
            _say(_line("load", reading))
            if baseline is None and reading.elapsed_s >= self._warmup:
                baseline = self._at_rest(reader, probe, notify, started, loads, resume=True)
        alive = daemon.poll() is None
        final = (
            self._at_rest(reader, probe, notify, started, loads, resume=False) if alive else None
        )
        for load in loads:
            load.stop()
        stop = _stop_check(daemon, alive)
        checks = [stop, *judge(baseline, final, self._loaded(baseline), viewers, traffic)]
        self._report(baseline, final, checks)
        return 0 if checks and all(check.passed for check in checks) else 1

    def _read(self, reader: SystemReader, notify: NotifyListener, started: float) -> Reading:
        values = reader.read()
        fps, clients = notify.fps_and_clients()
        return Reading(
            round(time.monotonic() - started, 1),
            round((values["rss_bytes"] or 0) / 2**20, 1),
            values["threads"] or 0,
            values["open_fds"] or 0,
            fps,
            clients,
            values["cpu_percent"],
        )

    def _at_rest(
        self,
        reader: SystemReader,
        probe: SystemReader,
        notify: NotifyListener,
        started: float,
        loads: list[Any],
        resume: bool,
    ) -> Reading | None:
        """Pause the load, wait for no client and a steady thread count, measure, resume.

        `probe` polls the thread count, so `reader` measures CPU over the whole interval."""
        for load in loads:
            load.pause()
        deadline = time.monotonic() + SETTLE_S
        history: list[tuple[float, int]] = []
        settled = False
        while time.monotonic() < deadline and not settled:
            time.sleep(0.25)
            threads = probe.read()["threads"] or 0
            history = [(t, n) for t, n in history if n == threads] + [(time.monotonic(), threads)]
            idle = notify.fps_and_clients()[1] == 0
            settled = idle and history[-1][0] - history[0][0] >= STEADY_S
        reading = self._read(reader, notify, started) if settled else None
        _say(_line("rest", reading) if reading else "soak  rest  did not settle within 30 s")
        if resume:
            for load in loads:
                load.resume()
        return reading

    def _loaded(self, baseline: Reading | None) -> list[Reading]:
        since = baseline.elapsed_s if baseline else self._warmup
        return [reading for reading in self.readings if reading.elapsed_s > since]

    def _write_config(self, broker_port: int | None) -> Path:
        args = self._args
        base: dict[str, Any] = {}
        if args.config is not None:
            base = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        self._port = _free_port()
        self._broker_port = broker_port
        base["state_dir"] = str(self._work / "state")
        base["source"] = {"uri": "test://", "width": args.width, "height": args.height}
        base["source"]["fps"] = args.fps
        base["stream"] = {**base.get("stream", {}), "bind": "127.0.0.1", "port": self._port}
        base["mqtt"] = {"enabled": False}
        if broker_port is not None:
            base["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": broker_port}
            base["mqtt"] |= {"device_id": "soak", "telemetry_interval_s": 5.0}
        path = self._work / "edge-matte.yaml"
        path.write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
        return path

    def _url(self) -> str:
        return f"rtsp://127.0.0.1:{self._port}/composite"

    def _log_tail(self) -> str:
        return (self._work / "daemon.log").read_text(errors="replace")[-3000:]

    def _report(self, baseline: Reading | None, final: Reading | None, checks: list[Check]) -> None:
        verdict = "PASS" if checks and all(check.passed for check in checks) else "FAIL"
        _say(f"soak  {verdict} after {self._duration / 60:.1f} min")
        for check in checks:
            _say(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
        if self._args.report is not None:
            record = {
                "verdict": verdict,
                "minutes": self._args.minutes,
                "size": [self._args.width, self._args.height, self._args.fps],
                "baseline": asdict(baseline) if baseline else None,
                "final": asdict(final) if final else None,
                "readings": [asdict(reading) for reading in self.readings],
                "checks": [asdict(check) for check in checks],
            }
            self._args.report.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def judge(
    baseline: Reading | None,
    final: Reading | None,
    loaded: list[Reading],
    viewers: Viewers | None,
    traffic: MqttTraffic | None,
) -> list[Check]:
    """The verdict's checks; a missing measurement fails its check rather than passing it."""
    checks = []
    if baseline is None or final is None:
        checks.append(Check("rest", False, "no resting reading (warm-up longer than the run?)"))
    else:
        growth = (final.rss_mb - baseline.rss_mb) / baseline.rss_mb
        checks += [
            Check(
                "rss",
                growth < RSS_GROWTH_LIMIT,
                f"{baseline.rss_mb:.1f} -> {final.rss_mb:.1f} MB ({growth:+.1%}, limit {RSS_GROWTH_LIMIT:.0%})",
            ),
            Check(
                "threads",
                final.threads <= baseline.threads,
                f"{baseline.threads} -> {final.threads}",
            ),
            Check("fds", final.fds <= baseline.fds, f"{baseline.fds} -> {final.fds}"),
        ]
    checks.append(_fps_check(loaded))
    if viewers is not None:
        served = viewers.served_share()
        detail = f"{viewers.sessions} sessions, {viewers.failures} failed"
        detail += f" (last: {viewers.last_error})" if viewers.failures else ""
        checks.append(Check("viewers", served >= VIEWER_SUCCESS, detail))
    if traffic is not None:
        lost = traffic.unanswered()
        detail = f"{traffic.sent} requests, {traffic.refused} refused, {lost} unanswered"
        checks.append(Check("mqtt", traffic.sent > 0 and not lost and not traffic.refused, detail))
    return checks


def _fps_check(loaded: list[Reading]) -> Check:
    rates = [reading.fps for reading in loaded]
    if len(rates) < 2:
        return Check("fps", False, f"{len(rates)} loaded reading(s); need 2 (run longer)")
    half = len(rates) // 2
    early, late = statistics.median(rates[:half]), statistics.median(rates[half:])
    passed = late > 0 and late >= (1 - FPS_DECAY_LIMIT) * early
    return Check("fps", passed, f"median {early:.1f} -> {late:.1f} (min {min(rates):.1f})")


class NotifyListener:
    """The service manager's end of sd_notify: READY=1 and the latest STATUS= line."""

    def __init__(self) -> None:
        self.address = f"@edge-matte-soak-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.settimeout(0.5)
        self.ready = threading.Event()
        self.status = ""
        self._closed = threading.Event()
        threading.Thread(target=self._listen, name="soak-notify", daemon=True).start()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536).decode("utf-8", "replace")
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            if fields.get("READY") == "1":
                self.ready.set()
            self.status = fields.get("STATUS", self.status)

    def fps_and_clients(self) -> tuple[float, int]:
        match = _STATUS.match(self.status)
        return (float(match["fps"]), int(match["clients"])) if match else (0.0, -1)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()


def _spawn(config_path: Path, notify: NotifyListener, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    command = [sys.executable, "-m", "edge_matte.cli", "run", "--config", str(config_path)]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _stop_check(daemon: subprocess.Popen[bytes], alive: bool) -> Check:
    """SIGTERM the daemon: it must have lived through the soak and must stop cleanly."""
    if not alive:
        return Check("stop", False, f"the daemon exited by itself with code {daemon.returncode}")
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(10)
    except subprocess.TimeoutExpired:
        return Check("stop", False, "still running 10 s after SIGTERM")
    return Check("stop", code == 0, f"exit code {code} on SIGTERM")


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    """A private Mosquitto on a free loopback port, or None without `mosquitto` on PATH."""
    if shutil.which("mosquitto") is None:
        return None
    port = _free_port()
    conf = work / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to a user that cannot read our scratch dir
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _line(kind: str, reading: Reading) -> str:
    return (
        f"soak  {kind:<4} t={reading.elapsed_s:7.0f}s  rss={reading.rss_mb:7.1f} MB  "
        f"threads={reading.threads:3d}  fds={reading.fds:3d}  fps={reading.fps:5.1f}  "
        f"clients={reading.clients}  cpu={'-' if reading.cpu_percent is None else reading.cpu_percent}%"
    )


def _say(text: str) -> None:
    print(text, flush=True)
