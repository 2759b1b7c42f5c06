"""The browser view: a page, an MJPEG stream, a snapshot, a health check and the state as JSON.

Built on the standard library's threaded HTTP server (its parser, one thread per connection),
bounded in every direction: at most `max_clients` MJPEG viewers and a few more short requests
at once (further connections are refused at accept), a request must arrive within
`_REQUEST_TIMEOUT_S`, one client address may keep at most half the places waiting for its
request (a slowloris from one host leaves the rest to everyone else), and a viewer that takes no
data for `_SEND_TIMEOUT_S` is dropped rather than buffered. Without a password (loopback only)
the Host header must name this machine, so a web page cannot reach the view by DNS rebinding. Every viewer sends the same JPEG bytes (`mjpeg.JpegFeed`). Only the five routes
exist: no file is ever read from a request's path.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_matte.config.schema import HttpConfig
from edge_matte.errors import ConfigError, EdgeMatteError
from edge_matte.output.http_page import render_page
from edge_matte.output.mjpeg import JpegFeed

_LOG = logging.getLogger(__name__)

_REQUEST_TIMEOUT_S = 5.0  # a request line and headers must arrive within this
_SEND_TIMEOUT_S = 5.0  # a viewer that accepts no data for this long is dropped
_SEND_BUFFER = 256 * 1024
_EXTRA_CONNECTIONS = 8  # page, snapshot, health and state requests beside the viewers
_REQUEST_DEADLINE_S = 10.0  # and the whole request within this, however slowly it trickles
_FRAME_WAIT_S = 5.0
_VIEWER_CHECK_S = 1.0  # a viewer that hung up frees its place within this, frames or not
_HEALTHY_WITHIN_S = 3.0  # /healthz: a real camera frame came this recently
_BOUNDARY = "edgematteframe"
_LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")

Status = Callable[[], dict[str, Any]]


def check_config(config: HttpConfig) -> None:
    """ConfigError at start for a view anyone on the network could open: a non-loopback bind
    needs a password (file or credential 'http-password')."""
    if not config.enabled:
        return
    password = config.resolved_password()  # an unreadable password file is refused here too
    if not is_loopback(config.bind) and not password:
        raise ConfigError(
            f"http.bind is {config.bind}, reachable from the network, but no password is set: "
            "set http.password_file or the credential 'http-password', or bind 127.0.0.1"
        )


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8080` -> `::1`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class _Server(ThreadingHTTPServer):
    """Refuses connections beyond its bound at accept, before any thread starts."""

    daemon_threads = True
    request_queue_size = 64  # a burst of connects waits in the backlog, not for SYN retries

    def __init__(self, address: tuple[str, int], view: HttpView, limit: int) -> None:
        self.view = view
        self._slots = threading.BoundedSemaphore(limit)
        self._waiting: dict[str, int] = {}  # per client address: connections before a request
        self._waiting_cap = max(1, limit // 2)
        self._waiting_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit(client_address[0]):
            self.view.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started: give the places back, then report
            self.request_arrived(client_address[0])
            self._slots.release()
            raise

    def _admit(self, address: str) -> bool:
        """A place for one more connection, unless the total or this address's waiting is full."""
        with self._waiting_lock:
            if self._waiting.get(address, 0) >= self._waiting_cap:
                return False
            if not self._slots.acquire(blocking=False):
                return False
            self._waiting[address] = self._waiting.get(address, 0) + 1
            return True

    def request_arrived(self, address: str) -> None:
        """The connection from `address` no longer waits (its request came, or it ended)."""
        with self._waiting_lock:
            left = self._waiting[address] - 1
            if left:
                self._waiting[address] = left
            else:
                del self._waiting[address]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, not socketserver's traceback on stderr (unmasked, unbounded, in the
        journal): any client can reset a connection mid-answer, as often as it likes."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            _LOG.debug("HTTP: connection from %s failed: %s", client_address[0], error)
        else:
            _LOG.warning("HTTP: request from %s failed", client_address[0], exc_info=True)


class HttpView:
    """Serves the browser view of one output; feed it with `offer` (never blocks)."""

    def __init__(self, config: HttpConfig, status: Status) -> None:
        self.config = config
        self._status = status
        self._password = config.resolved_password()
        self.feed = JpegFeed(config.fps, config.jpeg_quality)
        self._viewers = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.refused = 0  # connections refused at accept (over the bound)
        self.dropped_viewers = 0  # viewers dropped for not taking data

    @property
    def view(self) -> str:
        return self.config.output

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self.config.port

    def viewers(self) -> int:
        with self._lock:
            return self._viewers

    def offer(self, image: Any, live: bool) -> None:
        self.feed.offer(image, live)

    def update(self, config: HttpConfig) -> None:
        """Live change of output, fps and JPEG quality."""
        self.config = config
        self.feed.configure(config.fps, config.jpeg_quality)

    def start(self) -> None:
        """Bind and serve; EdgeMatteError if the address cannot be bound."""
        limit = self.config.max_clients + _EXTRA_CONNECTIONS
        try:
            self._server = _Server((self.config.bind, self.config.port), self, limit)
        except OSError as err:
            where = f"{self.config.bind}:{self.config.port}"
            raise EdgeMatteError(f"HTTP view cannot listen on {where}: {err.strerror}") from err
        self.feed.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.5,), name="edge-matte-http", daemon=True
        )
        self._thread.start()
        _LOG.info("browser view on http://%s:%d/", self.config.bind, self.port)

    def close(self) -> None:
        """Stop serving; viewers see their stream end within a frame wait."""
        self.feed.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def healthy(self) -> bool:
        """Real camera frames reached the view lately (the no-signal card does not count)."""
        live_at = self.feed.live_at
        return live_at is not None and time.monotonic() - live_at < _HEALTHY_WITHIN_S

    def authorised(self, header: str | None) -> bool:
        """Basic auth, compared in constant time; anyone when no password is set."""
        if not self._password:
            return True
        token = base64.b64encode(f"{self.config.username}:{self._password}".encode()).decode()
        scheme, _, given = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":  # the scheme is case-insensitive (RFC 9110 11.1)
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())

    def host_allowed(self, header: str | None) -> bool:
        """Without a password the view is loopback-only, and so must be the name it was asked
        by: a page on evil.example re-resolved to 127.0.0.1 (DNS rebinding) sends its own."""
        return bool(self._password) or header is None or is_loopback(_host_name(header))

    def state(self) -> dict[str, Any]:
        """The device's state and this view's counters (the page and /state.json)."""
        with self._lock:
            counters: dict[str, Any] = {
                "viewers": self._viewers,
                "dropped_viewers": self.dropped_viewers,
            }
        counters.update(view=self.view, jpegs=self.feed.encoded, refused=self.refused)
        return {**self._status(), "http": counters}

    def enter_viewer(self) -> bool:
        with self._lock:
            if self._viewers >= self.config.max_clients:
                return False
            self._viewers += 1
            return True

    def leave_viewer(self, dropped: bool = False) -> None:
        """A viewer has gone (`dropped`: for not taking data)."""
        with self._lock:
            self._viewers -= 1
            self.dropped_viewers += dropped


def _hung_up(connection: socket.socket) -> bool:
    """Whether the client closed its end (a viewer sends nothing after its request)."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Handler(BaseHTTPRequestHandler):
    """The five routes; anything else is 404, nothing touches the file system."""

    server: _Server
    timeout = _REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.0"
    server_version = "edge-matte"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self._waiting = True
        # The per-read timeout alone lets a client trickle a byte every few seconds for ever.
        self._deadline = threading.Timer(_REQUEST_DEADLINE_S, self._expire)
        self._deadline.start()

    def _arrived(self) -> None:
        """The request is in: no deadline, and no longer one of this address's waiting places."""
        self._deadline.cancel()
        if self._waiting:
            self._waiting = False
            self.server.request_arrived(self.client_address[0])

    def _expire(self) -> None:
        with contextlib.suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._arrived()
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self._arrived()
        view = self.server.view
        route = self.path.split("?", 1)[0]
        if route == "/healthz":  # no secrets in a yes/no, and load balancers hold no password
            ok = view.healthy()
            self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"no camera frames\n")
            return
        if not view.host_allowed(self.headers.get("Host")):
            self._send(403, "text/plain", b"this view answers to localhost only\n")
            return
        if not view.authorised(self.headers.get("Authorization")):
            self._send(
                401,
                "text/plain",
                b"authentication required\n",
                {"WWW-Authenticate": 'Basic realm="edge-matte"'},
            )
            return
        if route == "/":
            page = render_page(view.state())
            self._send(200, "text/html; charset=utf-8", page.encode())
        elif route == "/stream.mjpg":
            self._stream(view)
        elif route == "/snapshot.jpg":
            jpeg = view.feed.current(_FRAME_WAIT_S)
            if jpeg is None:
                self._send(503, "text/plain", b"no frame yet\n")
            else:
                self._send(200, "image/jpeg", jpeg)
        elif route == "/state.json":
            body = json.dumps(view.state(), default=str).encode()
            self._send(200, "application/json", body)
        else:
            self._send(404, "text/plain", b"not found\n")

    def do_HEAD(self) -> None:  # noqa: N802
        """/healthz answers HEAD (load balancers' checks); the other routes are GET only."""
        self._arrived()
        if self.path.split("?", 1)[0] == "/healthz":
            self.send_response(200 if self.server.view.healthy() else 503)
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
        else:
            self._send(405, "text/plain", b"", {"Allow": "GET"})

    def _send(
        self, code: int, kind: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, view: HttpView) -> None:
        if not view.enter_viewer():
            self._send(503, "text/plain", b"too many viewers\n", {"Retry-After": "5"})
            return
        dropped = False
        try:
            self.connection.settimeout(_SEND_TIMEOUT_S)
            # Bounded kernel buffering too: a stalled viewer times out after a few frames.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self._send_parts(view.feed)
        except TimeoutError:
            dropped = True
            _LOG.info(
                "HTTP: dropped a viewer at %s that took no data for %.0f s",
                self.client_address[0],
                _SEND_TIMEOUT_S,
            )
        except OSError:
            pass  # the viewer went away
        finally:
            view.leave_viewer(dropped)

    def _send_parts(self, feed: JpegFeed) -> None:
        """Each new JPEG as one part, until the viewer hangs up or the feed closes."""
        number = 0
        while not _hung_up(self.connection):
            got = feed.wait_next(number, _VIEWER_CHECK_S)
            if got is None:
                if feed.closed:
                    return
                continue
            number, jpeg = got
            head = (
                f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            )
            self.wfile.write(head.encode() + jpeg + b"\r\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        _LOG.debug("HTTP %s: " + format, self.client_address[0], *args)
