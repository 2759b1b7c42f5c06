"""The load `edge-matte soak` puts on a daemon: RTSP viewers coming and going, MQTT commands.

`RtspViewer` is a minimal real RTSP client over a socket (DESCRIBE, SETUP with RTP over TCP,
PLAY, read the interleaved RTP, TEARDOWN): cheap enough for hundreds of sessions, unlike a
decoder process. `Viewers` keeps a crowd of them joining and leaving at random, one in ten
stalling without reading. `MqttTraffic` sends config changes and commands and checks each is
answered. Both can `pause` (the soak measures the daemon at rest) and `resume`.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge_matte.control.topics import (
    CMD_RESULT,
    CONFIG_RESULT,
    CONFIG_SET,
    PLATE_FREEZE,
    PLATE_UNFREEZE,
    SNAPSHOT_COMMAND,
    command_topic,
)

if TYPE_CHECKING:
    import paho.mqtt.client as paho

STALLED_SHARE = 0.1
SESSION_S = (1.0, 20.0)  # a viewer stays this long (uniform)
ANSWER_S = 10.0  # an MQTT request unanswered this long counts as lost
REQUEST_PERIOD_S = 2.0
_SOCKET_TIMEOUT_S = 10.0


class RtspViewerError(Exception):
    """The server refused a request, closed the connection or sent something unexpected."""


class RtspViewer:
    """One RTSP session over TCP: `play`, then `read_rtp`, then `teardown` and `close`."""

    def __init__(self, url: str, timeout: float = _SOCKET_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        self._url = url
        self._cseq = 0
        self._session = ""
        self._buffer = b""
        if parts.port is None:
            raise ValueError(f"{url}: the soak test's RTSP URLs name their port")
        self._sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)

    def play(self) -> None:
        sdp = self._request("DESCRIBE", self._url, "Accept: application/sdp\r\n")
        found = re.search(rb"a=control:(\S*stream=\d+)", sdp)
        if found is None:
            raise RtspViewerError(f"no stream control in the SDP of {self._url}")
        control = found.group(1).decode()
        track = control if control.startswith("rtsp://") else f"{self._url}/{control}"
        self._request("SETUP", track, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n")
        self._request("PLAY", self._url, f"Session: {self._session}\r\n")

    def read_rtp(self, packets: int) -> int:
        """Read `packets` RTP packets of the video channel; their payload bytes."""
        total = 0
        while packets > 0:
            header = self._take(4)
            if header[:1] != b"$":  # an RTSP message between packets (a reply, a keepalive)
                self._buffer = header + self._buffer
                self._skip_body(self._read_head())
                continue
            payload = self._take(int.from_bytes(header[2:4], "big"))
            if header[1] == 0:
                packets -= 1
                total += len(payload)
        return total

    def teardown(self) -> None:
        self._send("TEARDOWN", self._url, f"Session: {self._session}\r\n")

    def close(self) -> None:
        self._sock.close()

    def _send(self, method: str, url: str, headers: str) -> None:
        self._cseq += 1
        self._sock.sendall(
            f"{method} {url} RTSP/1.0\r\nCSeq: {self._cseq}\r\n{headers}\r\n".encode()
        )

    def _request(self, method: str, url: str, headers: str) -> bytes:
        self._send(method, url, headers)
        head = self._read_head()
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status:
            raise RtspViewerError(f"{method} {url}: {status.decode(errors='replace')}")
        session = re.search(rb"Session: ([^;\r]+)", head)
        if session:
            self._session = session.group(1).decode()
        return self._skip_body(head)

    def _read_head(self) -> bytes:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        return head

    def _skip_body(self, head: bytes) -> bytes:
        length = re.search(rb"Content-Length: (\d+)", head)
        return self._take(int(length.group(1))) if length else b""

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise RtspViewerError(f"{self._url}: the server closed the connection")
        self._buffer += chunk


class Pausable:
    """A background load with start / pause / resume / stop."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> None:
        self._running.set()
        self._thread.start()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._running.clear()
        self._stop.set()
        self._thread.join(_SOCKET_TIMEOUT_S)

    def _run(self) -> None:
        raise NotImplementedError


class Viewers(Pausable):
    """Up to `limit` viewers at once, each watching for a random time; counts what they got."""

    def __init__(self, url: str, limit: int, rng: random.Random) -> None:
        super().__init__()
        self._url = url
        self._limit = limit
        self._rng = rng
        self._lock = threading.Lock()
        self._active: list[threading.Thread] = []
        self.sessions = 0
        self.failures = 0
        self.last_error = ""

    def pause(self) -> None:
        """Stop admitting viewers and wait until every current one has left."""
        super().pause()
        with self._lock:
            active = list(self._active)
        for thread in active:
            thread.join(_SOCKET_TIMEOUT_S * 2)

    def _run(self) -> None:
        while not self._stop.wait(self._rng.uniform(0.2, 1.0)):
            with self._lock:
                self._active = [thread for thread in self._active if thread.is_alive()]
                if not self._running.is_set() or len(self._active) >= self._limit:
                    continue
                stalled = self._rng.random() < STALLED_SHARE
                duration = self._rng.uniform(*SESSION_S)
                thread = threading.Thread(target=self._watch, args=(duration, stalled), daemon=True)
                self._active.append(thread)
            thread.start()

    def _watch(self, duration: float, stalled: bool) -> None:
        until = time.monotonic() + duration
        try:
            viewer = RtspViewer(self._url)
            try:
                viewer.play()
                received = 0
                while time.monotonic() < until and self._running.is_set():
                    if stalled:  # connected and playing, reading nothing
                        self._stop.wait(0.2)
                    else:
                        received += viewer.read_rtp(20)
                if not stalled and received == 0:
                    raise RtspViewerError("no video received")
                viewer.teardown()
            finally:
                viewer.close()
        except (OSError, RtspViewerError) as err:
            self._count(str(err))
        else:
            self._count(None)

    def _count(self, error: str | None) -> None:
        with self._lock:
            self.sessions += 1
            if error is not None:
                self.failures += 1
                self.last_error = error

    def served_share(self) -> float:
        with self._lock:
            return 1.0 - self.failures / self.sessions if self.sessions else 0.0


class MqttTraffic(Pausable):
    """A config change or command to device `soak` every 2 s; each must be answered."""

    def __init__(self, port: int, rng: random.Random, base: str = "edge-matte/soak") -> None:
        super().__init__()
        import paho.mqtt.client as paho  # only needed with a broker
        from paho.mqtt.enums import CallbackAPIVersion

        self._rng = rng
        self._base = base
        self._lock = threading.Lock()
        self._pending: dict[int, float] = {}
        self.sent = self.answered = self.refused = self.late = 0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="edge-matte-soak-commands"
        )
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        answers = (CONFIG_RESULT, CMD_RESULT)
        self._client.subscribe([(f"{base}/{answer}", 1) for answer in answers])
        self._client.loop_start()

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(REQUEST_PERIOD_S):
            self._expire()
            if not self._running.is_set():
                continue
            number += 1
            topic, body = self._request(number)
            payload = json.dumps({"id": number, **body})
            with self._lock:
                self._pending[number] = time.monotonic()
                self.sent += 1
            self._client.publish(f"{self._base}/{topic}", payload, qos=1)

    def _request(self, number: int) -> tuple[str, dict[str, Any]]:
        """The `number`-th request: live config changes (each persisted) and commands, in turn."""
        colour = f"#{self._rng.randrange(1 << 24):06x}"
        requests = [
            (CONFIG_SET, {"compose": {"mode": "blur"}}),
            (CONFIG_SET, {"compose": {"mode": "replace", "background": colour}}),
            (command_topic(PLATE_FREEZE), {}),
            (command_topic(PLATE_UNFREEZE), {}),
            (command_topic(SNAPSHOT_COMMAND), {}),
        ]
        return requests[number % len(requests)]

    def unanswered(self) -> int:
        """Requests without an answer within 10 s, or still waiting."""
        with self._lock:
            return self.late + len(self._pending)

    def _on_message(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        try:
            answer = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            if self._pending.pop(answer.get("id"), None) is not None:
                self.answered += 1
                self.refused += not answer.get("ok", False)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            for number, sent in list(self._pending.items()):
                if now - sent > ANSWER_S:
                    del self._pending[number]
                    self.late += 1

    def pause(self) -> None:
        super().pause()
        deadline = time.monotonic() + ANSWER_S
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        super().stop()
        self._expire()
        self._client.loop_stop()
        self._client.disconnect()
