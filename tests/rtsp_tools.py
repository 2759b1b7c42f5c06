"""Real RTSP clients (ffmpeg, ffprobe) and a killable RTSP camera for tests.

`CameraServer` runs gst-rtsp-server in a child process so a test can kill -9 it mid-stream and
start it again on the same port, as a network camera that loses power would behave.
"""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from waiting import wait_until


class RtspClientError(Exception):
    """A client could not connect, authenticate or decode; the message carries its stderr."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _client_command(url: str, n: int) -> list[str]:
    # PPM frames carry their own size, so the stream's size need not be known in advance.
    return [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp",
        "-timeout", "5000000", "-i", url, "-frames:v", str(n),
        "-f", "image2pipe", "-c:v", "ppm", "-",
    ]  # fmt: skip


def _parse_ppm(data: bytes) -> list[np.ndarray]:
    """Split ffmpeg's concatenated binary PPMs ("P6\\nW H\\n255\\n" + RGB) into BGR arrays."""
    frames = []
    offset = 0
    while offset < len(data):
        header_end = offset
        for _ in range(3):
            header_end = data.index(b"\n", header_end) + 1
        magic, size, _maxval = data[offset:header_end].split(b"\n")[:3]
        if magic != b"P6":
            raise RtspClientError(f"unexpected image header {magic!r} from ffmpeg")
        width, height = map(int, size.split())
        end = header_end + width * height * 3
        rgb = np.frombuffer(data[header_end:end], np.uint8).reshape(height, width, 3)
        frames.append(rgb[:, :, ::-1].copy())
        offset = end
    return frames


def read_frames(url: str, n: int, timeout: float = 20.0) -> list[np.ndarray]:
    """Decode `n` frames from `url` with ffmpeg over TCP; BGR uint8 arrays."""
    try:
        done = subprocess.run(
            _client_command(url, n), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise RtspClientError(f"no {n} frames from {url} within {timeout} s") from err
    if done.returncode != 0:
        raise RtspClientError(done.stderr.decode(errors="replace").strip() or "ffmpeg failed")
    frames = _parse_ppm(done.stdout)
    if len(frames) < n:
        raise RtspClientError(f"only {len(frames)} of {n} frames from {url}")
    return frames


class Watcher:
    """A viewer that keeps decoding until killed; reports its progress to wait on."""

    def __init__(self, url: str) -> None:
        command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp"]
        command += ["-i", url, "-progress", "pipe:1", "-stats_period", "0.1", "-f", "null", "-"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    def wait_decoding(self, timeout: float = 20.0) -> bool:
        """True once it has decoded a frame; AssertionError if it exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        stdout = self.process.stdout
        last = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = stdout.readline() if ready else ""
            if ready and not line:
                raise AssertionError(f"the viewer exited before decoding a frame; last: {last!r}")
            if line.startswith("frame=") and int(line.split("=")[1]) > 0:
                return True
            last = line.strip() or last
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for a decoded frame; last value: {last!r}"
        )

    def wait(self, timeout: float) -> int:
        """Its exit code once it ends by itself (subprocess.TimeoutExpired if it does not)."""
        self.process.communicate(timeout=timeout)
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate()


def probe(url: str, timeout: float = 20.0) -> dict:
    """ffprobe's view of the first video stream: codec_name, width, height, profile."""
    command = [
        "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-select_streams", "v:0",
        "-show_entries", "stream=codec_name,width,height,profile", "-of", "json", url,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise RtspClientError(f"ffprobe got nothing from {url} within {timeout} s") from err
    if done.returncode != 0:
        raise RtspClientError(done.stderr.strip() or "ffprobe failed")
    streams = json.loads(done.stdout).get("streams", [])
    if not streams:
        raise RtspClientError(f"no video stream at {url}")
    return streams[0]


class StalledClient:
    """An RTSP client that sets up playback over TCP, then never reads: the worst viewer."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._url = url
        self._cseq = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._sock.settimeout(10)
        self._sock.connect((parts.hostname, parts.port))
        sdp = self._request("DESCRIBE", url, "Accept: application/sdp\r\n")
        control = re.search(rb"a=control:(\S*stream=\d+)", sdp).group(1).decode()
        track = control if control.startswith("rtsp://") else f"{url}/{control}"
        transport = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
        self._request("SETUP", track, transport)
        self._request("PLAY", url, f"Session: {self._session}\r\n")

    def _request(self, method: str, url: str, headers: str) -> bytes:
        self._cseq += 1
        self._sock.sendall(
            f"{method} {url} RTSP/1.0\r\nCSeq: {self._cseq}\r\n{headers}\r\n".encode()
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += self._sock.recv(4096)
        head, body = reply.split(b"\r\n\r\n", 1)
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RtspClientError(f"{method} failed: {head.splitlines()[0]!r}")
        session = re.search(rb"Session: ([^;\r]+)", head)
        if session:
            self._session = session.group(1).decode()
        declared = re.search(rb"Content-Length: (\d+)", head)
        length = int(declared.group(1)) if declared else 0
        while len(body) < length:
            body += self._sock.recv(4096)
        return body

    def unsent_bytes(self) -> int:
        """Bytes the server has queued towards us in the kernel (/proc/net/tcp tx_queue)."""
        row = self._server_end()
        return int(row[4].split(":")[0], 16) if row else 0

    def hung_up(self) -> bool:
        """The server closed its end (its socket is no longer ESTABLISHED), we never did."""
        row = self._server_end()
        return row is None or row[3] != "01"

    def _server_end(self) -> list[str] | None:
        """The server's socket of this connection, as its /proc/net/tcp row."""
        server_port = self._sock.getpeername()[1]
        own_port = self._sock.getsockname()[1]
        with Path("/proc/net/tcp").open() as table:
            for row in table.read().splitlines()[1:]:
                fields = row.split()
                local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
                if (local, remote) == (server_port, own_port):
                    return fields
        return None

    def close(self) -> None:
        self._sock.close()


_CAMERA_SCRIPT = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

port, width, height, fps = sys.argv[1:5]
Gst.init(None)
server = GstRtspServer.RTSPServer.new()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory.new()
factory.set_shared(True)
factory.set_launch(
    f"( videotestsrc is-live=true pattern=smpte ! video/x-raw,width={width},height={height},"
    f"framerate={fps}/1 ! videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency "
    f"speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
server.get_mount_points().add_factory("/camera", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"""


class CameraServer:
    """An RTSP camera serving a live SMPTE test pattern at rtsp://127.0.0.1:PORT/camera."""

    def __init__(self, port: int, width: int = 320, height: int = 240, fps: int = 15) -> None:
        self.port = port
        self._args = [str(port), str(width), str(height), str(fps)]
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/camera"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("camera server is not running")
        return self._process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the child and wait until it listens."""
        command = [sys.executable, "-c", _CAMERA_SCRIPT, *self._args]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        ready = self._process.stdout.readline().strip() if self._process.stdout else ""
        if ready != "ready":
            self.kill()
            raise RuntimeError(f"camera server on port {self.port} did not start")
        try:
            wait_until(lambda: _accepts(self.port), timeout, f"camera server on port {self.port}")
        except AssertionError:
            self.kill()
            raise

    def kill(self) -> None:
        """kill -9, as a camera losing power; the port is free again afterwards."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stdout:
                self._process.stdout.close()
            self._process = None

    def __enter__(self) -> CameraServer:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.kill()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
