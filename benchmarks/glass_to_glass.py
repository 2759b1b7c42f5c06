"""What edge-matte adds to a viewer's latency: a camera read directly vs through the daemon.

    python benchmarks/glass_to_glass.py [--seconds 15] [--size 640x480] [--fps 30]

A camera (an RTSP server in this process, x264 zerolatency like a typical IP camera) serves
frames whose top band encodes the CLOCK_MONOTONIC millisecond at which each frame was pushed
(20 bits as white/black cells, with an inverted row as a check). `edge-matte run` reads that
camera in `passthrough` mode and serves it again. Two ffmpeg clients with the low-latency flags
the README recommends read the camera and the daemon at the same time; each decoded frame's
latency is `now - encoded time`. The camera's own encode, the network hop and the client's decode
are in both figures, so their difference is what the appliance adds (decode, pipeline,
re-encode, serve). Clocks are the same machine's. Printed as JSON: median and p95 of each path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_matte.config.schema import StreamConfig  # noqa: E402
from edge_matte.output.stream import RtspServer  # noqa: E402

BITS = 20
WRAP = 1 << BITS
BAND = 48  # pixel rows per code row (two rows: the bits, then their inverse)


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def stamp(frame: np.ndarray, ms: int) -> None:
    """Write `ms` (mod 2^20) into the top two bands of a grey-level BGR frame."""
    cell = frame.shape[1] // BITS
    for bit in range(BITS):
        on = (ms >> bit) & 1
        frame[:BAND, bit * cell : (bit + 1) * cell] = 255 if on else 0
        frame[BAND : 2 * BAND, bit * cell : (bit + 1) * cell] = 0 if on else 255


def read_stamp(grey: np.ndarray) -> int | None:
    """The millisecond a decoded frame carries, None if its code rows disagree (not a stamp)."""
    cell = grey.shape[1] // BITS
    value = 0
    for bit in range(BITS):
        inner = slice(bit * cell + cell // 4, (bit + 1) * cell - cell // 4)
        top = grey[BAND // 4 : 3 * BAND // 4, inner].mean() > 128
        bottom = grey[BAND + BAND // 4 : BAND + 3 * BAND // 4, inner].mean() > 128
        if top == bottom:
            return None
        value |= int(top) << bit
    return value


def camera(port: int, width: int, height: int, fps: float, stop: threading.Event) -> None:
    """Serve stamped frames at `fps` on rtsp://127.0.0.1:PORT/composite until `stop`."""
    config = StreamConfig(bind="127.0.0.1", port=port, keyframe_interval=30)
    server = RtspServer(config, width, height, fps)
    server.start()
    frame = np.full((height, width, 3), 96, np.uint8)
    started = time.monotonic()
    index = 0
    try:
        while not stop.is_set():
            stamp(frame, now_ms())
            server.push("composite", frame)
            index += 1
            stop.wait(max(0.0, started + index / fps - time.monotonic()))
    finally:
        server.stop()


def client(url: str, width: int, height: int, latencies: list[int], stop: threading.Event) -> None:
    """Read `url` with ffmpeg's low-latency flags; append each decoded frame's latency (ms)."""
    command = [
        "ffmpeg", "-loglevel", "error", "-fflags", "nobuffer", "-flags", "low_delay",
        "-probesize", "32", "-analyzeduration", "0", "-rtsp_transport", "tcp", "-i", url,
        "-f", "rawvideo", "-pix_fmt", "gray", "-",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    size = width * height
    try:
        while not stop.is_set():
            data = process.stdout.read(size)
            if len(data) < size:
                return
            ms = read_stamp(np.frombuffer(data, np.uint8).reshape(height, width))
            if ms is not None:
                latencies.append((now_ms() - ms) % WRAP)
    finally:
        process.kill()
        process.wait()


def summary(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "frames": len(ordered),
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring window")
    parser.add_argument("--size", default="640x480", help="camera frame size WxH")
    parser.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    camera_port, daemon_port = free_port(), free_port()
    stop = threading.Event()
    threading.Thread(
        target=camera, args=(camera_port, width, height, args.fps, stop), daemon=True
    ).start()
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "state_dir": tmp,
            "source": {"uri": f"rtsp://127.0.0.1:{camera_port}/composite", "width": width,
                       "height": height, "fps": args.fps},
            "matting": {"engine": "classic"},
            "compose": {"mode": "passthrough"},
            "stream": {"bind": "127.0.0.1", "port": daemon_port},
        }  # fmt: skip
        path = Path(tmp) / "edge-matte.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "NOTIFY_SOCKET": ""}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edge_matte.cli", "run", "--config", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            time.sleep(5.0)  # the daemon connects to the camera and starts serving
            direct: list[int] = []
            through: list[int] = []
            readers = [
                threading.Thread(target=client, args=(url, width, height, out, stop), daemon=True)
                for url, out in (
                    (f"rtsp://127.0.0.1:{camera_port}/composite", direct),
                    (f"rtsp://127.0.0.1:{daemon_port}/composite", through),
                )
            ]
            for reader in readers:
                reader.start()
            time.sleep(3.0)  # clients settle (first keyframe, buffers drained)
            direct.clear()
            through.clear()
            time.sleep(args.seconds)  # the measuring window
            stop.set()
        finally:
            daemon.terminate()
            daemon.wait(10)
    result = {"camera_direct": summary(direct), "through_edge_matte": summary(through)}
    result["added_median_ms"] = (
        result["through_edge_matte"]["median_ms"] - result["camera_direct"]["median_ms"]
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
