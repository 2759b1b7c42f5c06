"""The browser view on a running daemon: headless Chromium, ffmpeg and raw sockets as clients.

Everything here talks to a real `edge-matte run` over loopback: the page as Chromium renders
it, the MJPEG stream as ffmpeg and twenty concurrent readers decode it, the health check
against a real RTSP camera that is killed, auth and bind rules, and clients that misbehave.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from daemon_tools import (
    DaemonProcess,
    Truth,
    assert_composite,
    daemon_config,
    prepared,
    scene_truth,
    start_daemon,
    write_config,
)
from rtsp_tools import CameraServer, free_port
from waiting import wait_until

from edge_matte.config.schema import HttpConfig
from edge_matte.output.http_view import HttpView

WAIT_S = 30.0
GREEN = "#00ff00"
BOUNDARY = b"--edgematteframe"


@pytest.fixture(scope="module")
def truth() -> Truth:
    return scene_truth()


class View:
    """The daemon's browser view at 127.0.0.1:port, with optional Basic credentials."""

    def __init__(self, port: int, daemon: DaemonProcess, auth: str | None = None) -> None:
        self.port, self.daemon, self.auth = port, daemon, auth
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, auth: str | None = "default") -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        headers = {}
        credentials = self.auth if auth == "default" else auth
        if credentials is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def state(self) -> dict[str, Any]:
        status, _, body = self.get("/state.json")
        assert status == 200
        return json.loads(body)

    def fds(self) -> int:
        return sum(1 for _ in Path(f"/proc/{self.daemon.process.pid}/fd").iterdir())

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.daemon.process.pid}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]
        )


def _start(tmp_path: Path, **http: Any) -> tuple[View, DaemonProcess]:
    port = free_port()
    path, _ = prepared(tmp_path, http={"enabled": True, "port": port, **http})
    daemon = start_daemon(path)
    return View(port, daemon), daemon


@pytest.fixture
def view(tmp_path: Path) -> Iterator[View]:
    served, daemon = _start(tmp_path, max_clients=20, fps=15)
    with daemon:
        yield served


class MjpegReader:
    """A raw-socket MJPEG viewer that parses parts; `slow=True` connects and never reads."""

    def __init__(self, view: View, receive_buffer: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", view.port), timeout=20)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        while self.file.readline() not in (b"\r\n", b""):
            pass

    def part(self) -> bytes:
        """The next JPEG."""
        line = self.file.readline()
        while line.strip() != BOUNDARY:
            if not line:
                raise EOFError("stream ended")
            line = self.file.readline()
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return self.file.read(length)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


# -- routes -------------------------------------------------------------------------------------


def test_routes_serve_the_composite_and_nothing_else(view: View, truth: Truth) -> None:
    status, headers, body = view.get("/snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert_composite([_decode(body)], truth, GREEN)
    assert view.get("/healthz")[0] == 200
    state = view.state()
    assert state["engine"] == "classic" and state["plate"] == "ready"
    assert state["plate_known_fraction"] == 1.0
    assert wait_until(lambda: view.state()["fps"] > 0, WAIT_S)
    assert state["http"]["view"] == "composite"
    for path in ("/etc/passwd", "/../../etc/passwd", "/static/", "/stream.mjpg/..", "/x/../", "/?"):
        status, _, body = view.get(path)
        assert status == 404 or path == "/?", (path, status)
        assert b"root:" not in body and b"Index of" not in body
    with socket.create_connection(("127.0.0.1", view.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        assert sock.recv(64).split()[1] == b"501"


def test_page_in_headless_chromium_shows_the_image_and_state(view: View, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs chromium (scripts/setup.sh installs it)")
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,360",
    ]  # fmt: skip
    shot = tmp_path / "page.png"
    subprocess.run([*command, f"--screenshot={shot}", view.url + "/"], capture_output=True,
                   timeout=60, check=True)  # fmt: skip
    page = cv2.imread(str(shot))
    assert page.shape[:2] == (360, 900)
    image = page[:, : 900 - 280]  # the live view's column; the state is on the right
    assert image.std() > 20  # a picture, not an empty box
    green = (image[:, :, 1] > 200) & (image[:, :, 0] < 60) & (image[:, :, 2] < 60)
    assert green.mean() > 0.2  # the composite's new background
    dom = subprocess.run([*command, "--dump-dom", view.url + "/"], capture_output=True,
                         timeout=60, check=True, text=True).stdout  # fmt: skip
    assert '<td id="v-engine">classic</td>' in dom
    assert '<td id="v-plate">ready</td>' in dom
    assert '<td id="v-plate_known_fraction">1.0</td>' in dom
    # The page refreshes itself: served with no viewer, it counts its own stream a moment later.
    assert wait_until(lambda: view.state()["http"]["viewers"] == 0, WAIT_S)
    later = subprocess.run([*command, "--virtual-time-budget=5000", "--dump-dom", view.url + "/"],
                           capture_output=True, timeout=60, check=True, text=True).stdout  # fmt: skip
    assert '<td id="v-viewers">1</td>' in later and 'src="/stream.mjpg"' in later


# -- MJPEG --------------------------------------------------------------------------------------


def test_mjpeg_for_ffmpeg_and_twenty_viewers_one_encode_per_frame(view: View, truth: Truth) -> None:
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "mjpeg", "-i",
         view.url + "/stream.mjpg", "-frames:v", "5", "-f", "image2pipe", "-c:v", "png", "-"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.count(b"IEND") == 5
    # A viewer that hung up is noticed at the next frame sent to it.
    assert wait_until(lambda: view.state()["http"]["viewers"] == 0, WAIT_S)
    readers = [MjpegReader(view) for _ in range(20)]
    try:
        assert all(reader.status == 200 for reader in readers)
        over = MjpegReader(view)
        assert over.status == 503  # max_clients is 20
        over.close()
        encoded = view.state()["http"]["jpegs"]
        parts: list[list[bytes]] = [[] for _ in readers]

        def read(index: int) -> None:
            parts[index] = [readers[index].part() for _ in range(10)]

        threads = [threading.Thread(target=read, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        encoded = view.state()["http"]["jpegs"] - encoded
        assert all(len(got) == 10 for got in parts)
        assert_composite([_decode(got[-1]) for got in parts], truth, GREEN)
        # 200 parts went out; the encoder made about one JPEG per frame for all of them.
        assert encoded < 40, f"{encoded} JPEGs encoded for 20 viewers x 10 frames"
        assert view.state()["http"]["viewers"] == 20
    finally:
        for reader in readers:
            reader.close()
    assert wait_until(lambda: view.state()["http"]["viewers"] == 0, WAIT_S)


def test_fifty_connect_disconnect_cycles_leak_no_fds_or_memory(view: View) -> None:
    def cycle() -> None:
        reader = MjpegReader(view)
        reader.part()
        reader.close()
        # Its place is freed at the next frame; 50 hang-ups within that would fill the 20.
        assert wait_until(lambda: view.state()["http"]["viewers"] == 0, WAIT_S)

    for _ in range(10):  # warm up: threads, buffers, the encoder
        cycle()
    assert wait_until(lambda: view.state()["http"]["viewers"] == 0, WAIT_S)
    fds, rss = view.fds(), view.rss_kib()
    for _ in range(50):
        cycle()
    assert wait_until(lambda: view.state()["http"]["viewers"] == 0, WAIT_S)
    assert wait_until(lambda: view.fds() <= fds, WAIT_S), f"fds {fds} -> {view.fds()}"
    assert view.rss_kib() - rss < 8 * 1024, f"RSS {rss} -> {view.rss_kib()} KiB"


def test_garbage_slow_and_stalled_clients_do_not_disturb_a_viewer(view: View) -> None:
    viewer = MjpegReader(view)
    gaps: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        last = time.monotonic()
        while not stop.is_set():
            viewer.part()
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        rng = np.random.default_rng(19)
        for _ in range(30):  # garbage: random bytes, a broken request line, a huge header
            with socket.create_connection(("127.0.0.1", view.port), timeout=10) as sock:
                sock.sendall(rng.integers(0, 256, 300, np.uint8).tobytes() + b"\r\n\r\n")
                _answer(sock)
        for request in (b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /" + b"a" * 70000):
            with socket.create_connection(("127.0.0.1", view.port), timeout=10) as sock:
                sock.sendall(request + b"\r\n\r\n")
                assert b"<title>edge-matte" not in _answer(sock)  # an error, not the page
        slow = [socket.create_connection(("127.0.0.1", view.port), timeout=30) for _ in range(5)]
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        stalled = MjpegReader(view, receive_buffer=4096)  # takes the headers, then reads nothing
        started = time.monotonic()
        for sock in slow:  # the server gives up on each within its request deadline
            assert sock.recv(64) == b""
            sock.close()
        assert time.monotonic() - started < 15.0
        assert wait_until(lambda: view.state()["http"]["dropped_viewers"] >= 1, WAIT_S)
        stalled.close()
        assert view.get("/healthz")[0] == 200
    finally:
        stop.set()
        watcher.join(10)
        viewer.close()
    assert len(gaps) > 50 and max(gaps[1:]) < 1.0, f"viewer stalled {max(gaps[1:]):.2f} s"


def test_idle_connections_are_bounded_in_count_and_time(view: View) -> None:
    viewer = MjpegReader(view)  # holds one of the 20 + 8 places, and keeps it
    idle = [socket.create_connection(("127.0.0.1", view.port), timeout=15) for _ in range(32)]
    try:
        # One address may keep half the 28 places waiting: the others are still free for
        # everyone else, at once, while the idle ones hold theirs.
        other = socket.create_connection(("127.0.0.1", view.port), 10, ("127.0.0.2", 0))
        with other:
            other.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert _answer(other).startswith(b"HTTP/1.0 ")
        started = time.monotonic()
        closed = sum(_answer(sock) == b"" for sock in idle)  # each ends: at once, or at 10 s
        assert time.monotonic() - started < 15.0
        assert closed == 32
        viewer.part()  # still served
        assert view.state()["http"]["refused"] == 32 - 14
    finally:
        for sock in idle:
            sock.close()
        viewer.close()


def test_without_a_password_the_view_answers_only_to_local_host_names(view: View) -> None:
    """DNS rebinding: a page from evil.example re-resolved to 127.0.0.1 sends its own Host."""
    for host, status in (
        ("evil.example", 403),
        (f"evil.example:{view.port}", 403),
        (f"localhost:{view.port}", 200),
        (f"127.0.0.1:{view.port}", 200),
        (f"[::1]:{view.port}", 200),
    ):
        connection = http.client.HTTPConnection("127.0.0.1", view.port, timeout=20)
        try:
            connection.request("GET", "/state.json", headers={"Host": host})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == status, (host, body)
        assert body.startswith(b"{") == (status == 200), body  # the state only when allowed


def _answer(sock: socket.socket) -> bytes:
    """What the server answers before closing (b"" if it reset the connection)."""
    try:
        return sock.recv(4096)
    except ConnectionResetError:
        return b""


def test_clients_resetting_mid_request_leave_one_log_line_each_not_a_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """socketserver prints a traceback to stderr (the journal, unmasked) for every failed
    connection: any client could fill the journal by resetting connections mid-request."""
    view = HttpView(HttpConfig(enabled=True, port=free_port()), dict)
    view.start()
    caplog.set_level(logging.DEBUG, logger="edge_matte.output.http_view")
    try:
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", view.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(b"GET / HTTP/1.0\r\nX: a\r\n")  # the headers never end: the
            sock.close()  # server is still reading when the reset (linger 0) comes

        def failed() -> list[logging.LogRecord]:
            return [record for record in caplog.records if "failed" in record.getMessage()]

        assert wait_until(lambda: len(failed()) == 5, WAIT_S), caplog.text
    finally:
        view.close()
    assert all(record.exc_info is None for record in failed())
    assert "Traceback" not in capfd.readouterr().err


# -- health, auth and bind ---------------------------------------------------------------------


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(request)
        return sock.recv(4096)


def test_auth_scheme_in_any_case_and_head_for_health_checks(tmp_path: Path) -> None:
    secret = tmp_path / "http-password"
    secret.write_text("s3cret\n")
    config = HttpConfig(enabled=True, port=free_port(), password_file=secret)
    view = HttpView(config, dict)
    view.start()
    token = base64.b64encode(b"admin:s3cret").decode()
    try:
        for scheme in ("Basic", "basic", "BASIC"):
            assert view.authorised(f"{scheme} {token}"), scheme
        for header in (f"Bearer {token}", token, f"Basic {token}x", "Basic", "", "Basic \xff"):
            assert not view.authorised(header), header
        # No frame has come: unhealthy, and HEAD answers like GET, without a body.
        head = _raw(view.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 503") and head.endswith(b"\r\n\r\n"), head
        refused = _raw(view.port, b"HEAD /state.json HTTP/1.0\r\n\r\n")
        assert refused.startswith(b"HTTP/1.0 405") and b"Allow: GET" in refused, refused
    finally:
        view.close()


def test_healthz_follows_the_camera_not_the_no_signal_card(tmp_path: Path) -> None:
    camera = CameraServer(free_port())
    camera.start()
    port = free_port()
    config = daemon_config(tmp_path / "state", free_port(), http={"enabled": True, "port": port})
    config["source"] = {"uri": camera.url, "width": 320, "height": 240, "fps": 15,
                        "timeout_s": 1.0, "reconnect_max_s": 1.0}  # fmt: skip
    try:
        with start_daemon(write_config(tmp_path / "c.yaml", config)) as daemon:
            served = View(port, daemon)
            assert wait_until(lambda: served.get("/healthz")[0] == 200, WAIT_S)
            camera.kill()
            assert wait_until(lambda: served.get("/healthz")[0] == 503, WAIT_S)
            status, _, body = served.get("/snapshot.jpg")  # the no-signal card still shows
            assert status == 200 and _decode(body).shape == (240, 320, 3)
            camera.start()
            assert wait_until(lambda: served.get("/healthz")[0] == 200, WAIT_S)
    finally:
        camera.kill()


def test_basic_auth_when_a_password_is_set(tmp_path: Path) -> None:
    secret = tmp_path / "http-password"
    secret.write_text("s3cret\n")
    served, daemon = _start(tmp_path, username="viewer", password_file=str(secret))
    with daemon:
        for path in ("/", "/stream.mjpg", "/snapshot.jpg", "/state.json"):
            for credentials in (None, "viewer:wrong", "other:s3cret", "viewer:s3cret2"):
                status, headers, _ = served.get(path, auth=credentials)
                assert status == 401, (path, credentials)
                assert headers["WWW-Authenticate"] == 'Basic realm="edge-matte"'
        served.auth = "viewer:s3cret"
        assert served.get("/")[0] == 200 and served.get("/snapshot.jpg")[0] == 200
        assert served.get("/healthz", auth=None)[0] == 200  # for load balancers
        # Behind a password, any host name reaches it (a kiosk on the LAN asks by its name).
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=20)
        token = base64.b64encode(b"viewer:s3cret").decode()
        try:
            headers = {"Host": "kiosk.local", "Authorization": f"Basic {token}"}
            connection.request("GET", "/state.json", headers=headers)
            assert connection.getresponse().status == 200
        finally:
            connection.close()


@pytest.mark.parametrize(
    ("http", "problem"),
    [
        ({"bind": "0.0.0.0"}, "http.bind is 0.0.0.0"),
        ({"bind": "::"}, "no password is set"),
        ({"password_file": "/nonexistent/pw"}, "cannot read secret file"),
    ],
)
def test_network_bind_without_password_is_refused_at_start(
    tmp_path: Path, http: dict[str, Any], problem: str
) -> None:
    path, _ = prepared(tmp_path, http={"enabled": True, "port": free_port(), **http})
    done = subprocess.run(
        [sys.executable, "-m", "edge_matte.cli", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr


def test_port_taken_is_an_error_and_the_port_is_left_alone(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        path, _ = prepared(tmp_path, http={"enabled": True, "port": holder.getsockname()[1]})
        daemon = DaemonProcess(path)
        with daemon:
            assert daemon.process.wait(60) == 1
            assert "HTTP view cannot listen" in daemon.log()


def test_reload_opens_the_view_and_changes_fps_without_dropping_viewers(tmp_path: Path) -> None:
    port = free_port()
    path, _ = prepared(tmp_path)
    config = yaml.safe_load(path.read_text())
    with start_daemon(path) as daemon:
        served = View(port, daemon)
        config["http"] = {"enabled": True, "port": port, "fps": 15}
        write_config(path, config)
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _answers(served), WAIT_S), daemon.log()[-2000:]
        viewer = MjpegReader(served)
        viewers = 0
        reading = threading.Thread(target=lambda: _read_all(viewer), daemon=True)
        reading.start()
        try:
            assert _jpeg_rate(served) > 8  # 15 fps asked; one viewer reading all
            config["http"]["fps"] = 2
            write_config(path, config)
            daemon.process.send_signal(signal.SIGHUP)
            assert wait_until(lambda: daemon.log().count("config reloaded") == 2, WAIT_S)
            assert _jpeg_rate(served) < 4
            assert reading.is_alive()  # the same connection: a live change, not a new server
            viewers = served.state()["http"]["viewers"]
        finally:
            viewer.close()
        assert viewers == 1
        assert daemon.stop() == 0


def _read_all(viewer: MjpegReader) -> None:
    try:
        while True:
            viewer.part()
    except (OSError, EOFError, ValueError):
        return  # closed by the test


def _jpeg_rate(view: View, seconds: float = 2.0) -> float:
    """JPEGs encoded per second over a measuring window."""
    before, started = view.state()["http"]["jpegs"], time.monotonic()
    time.sleep(seconds)  # the measuring window
    return (view.state()["http"]["jpegs"] - before) / (time.monotonic() - started)


def _answers(view: View) -> bool:
    try:
        return view.get("/healthz")[0] == 200
    except OSError:
        return False
