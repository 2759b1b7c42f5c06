"""The RTSP server against real clients (ffmpeg, ffprobe, a raw socket client)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from rtsp_tools import (
    RtspClientError,
    StalledClient,
    Watcher,
    free_port,
    probe,
    read_frames,
)
from waiting import wait_until

from edge_matte.config.schema import StreamConfig
from edge_matte.errors import EdgeMatteError, MediaError
from edge_matte.output.stream import RtspServer, encoder_chain

WIDTH, HEIGHT, FPS = 320, 240, 20
# Four flat blocks (BGR): codec error on flat areas stays well under the tolerance.
BLOCKS = [  # (top, bottom, left, right), BGR
    ((0, 120, 0, 160), (200, 40, 40)),
    ((0, 120, 160, 320), (40, 200, 40)),
    ((120, 240, 0, 160), (40, 40, 200)),
    ((120, 240, 160, 320), (220, 220, 220)),
]
TOLERANCE = 10  # 8-bit levels


def block_image() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for (top, bottom, left, right), colour in BLOCKS:
        image[top:bottom, left:right] = colour
    return image


def stream_config(**overrides) -> StreamConfig:
    values = {"bind": "127.0.0.1", "port": free_port(), "keyframe_interval": 10}
    return StreamConfig(**{**values, **overrides})


def url(server: RtspServer, name: str = "composite", credentials: str = "") -> str:
    return f"rtsp://{credentials}127.0.0.1:{server.port}/{name}"


@contextmanager
def serving(
    config: StreamConfig, frames: dict[str, np.ndarray] | None = None
) -> Iterator[RtspServer]:
    """A started server fed at FPS from a thread (the daemon's output stage), stopped after."""
    frames = frames or {name: block_image() for name in config.outputs}
    server = RtspServer(config, WIDTH, HEIGHT, FPS)
    server.start()
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(1 / FPS):
            for name, image in frames.items():
                server.push(name, image)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield server
    finally:
        stop.set()
        feeder.join()
        server.stop()


def assert_blocks(image: np.ndarray) -> None:
    for (top, bottom, left, right), colour in BLOCKS:
        inner = image[top + 8 : bottom - 8, left + 8 : right - 8]  # edges blend (4:2:0)
        mean = inner.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colour).max() <= TOLERANCE, (colour, mean)


def test_stream_is_h264_at_the_configured_size() -> None:
    with serving(stream_config()) as server:
        stream = probe(url(server))
    assert stream["codec_name"] == "h264"
    assert (stream["width"], stream["height"]) == (WIDTH, HEIGHT)


def test_each_output_decodes_to_what_was_pushed() -> None:
    grey = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    config = stream_config(outputs=["composite", "alpha"])
    with serving(config, {"composite": block_image(), "alpha": grey}) as server:
        composite = read_frames(url(server, "composite"), 3)[-1]
        alpha = read_frames(url(server, "alpha"), 3)[-1]
    assert composite.shape == (HEIGHT, WIDTH, 3)
    assert_blocks(composite)
    assert np.abs(alpha.astype(int) - 128).max() <= TOLERANCE


def test_several_clients_watch_at_once() -> None:
    with serving(stream_config()) as server:
        watchers = [Watcher(url(server)) for _ in range(2)]
        try:
            assert all(watcher.wait_decoding() for watcher in watchers)
            assert server.client_count() == 2
            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(lambda _: read_frames(url(server), 5), range(2)))
        finally:
            for watcher in watchers:
                watcher.kill()
        assert wait_until(lambda: server.client_count() == 0, timeout=15)
    for frames in results:
        assert len(frames) == 5
        assert_blocks(frames[-1])


def test_a_client_can_leave_and_come_back() -> None:
    with serving(stream_config()) as server:
        first = read_frames(url(server), 3)
        assert wait_until(lambda: server.client_count() == 0, timeout=15)
        again = read_frames(url(server), 3)  # a fresh media after the last client left
        vanished = Watcher(url(server))
        assert vanished.wait_decoding()
        vanished.kill()  # gone without a TEARDOWN
        after_crash = read_frames(url(server), 3)
    for frames in (first, again, after_crash):
        assert_blocks(frames[-1])


def test_a_stalled_client_blocks_neither_push_nor_other_clients() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    config = stream_config(bitrate_kbps=100_000)  # noise at full rate: fills buffers fast
    with serving(config, {"composite": noise}) as server:
        stalled = StalledClient(url(server))
        try:
            # the server's socket towards it is backed up: it really stalls
            assert wait_until(lambda: stalled.unsent_bytes() > 1_000_000, timeout=30)
            for _ in range(100):
                server.push("composite", noise)  # would hang here if push could block
            frames = read_frames(url(server), 5)
        finally:
            stalled.close()
    assert len(frames) == 5


def test_basic_auth() -> None:
    config = stream_config(username="viewer", password="s3cret")
    with serving(config) as server:
        with pytest.raises(RtspClientError, match="401"):
            read_frames(url(server), 1)
        with pytest.raises(RtspClientError, match="401"):
            read_frames(url(server, credentials="viewer:wrong@"), 1)
        frames = read_frames(url(server, credentials="viewer:s3cret@"), 3)
    assert_blocks(frames[-1])


def test_auth_without_a_password_is_refused() -> None:
    server = RtspServer(stream_config(username="viewer"), WIDTH, HEIGHT, FPS)
    with pytest.raises(EdgeMatteError, match="password"):
        server.start()


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RtspServer(stream_config(port=port), WIDTH, HEIGHT, FPS)
        with pytest.raises(EdgeMatteError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.start()


def test_stop_with_a_client_watching_ends_its_stream() -> None:
    with serving(stream_config()) as server:
        watcher = Watcher(url(server))
        try:
            assert watcher.wait_decoding()
            server.stop()
            assert not any(thread.name == "rtsp-server" for thread in threading.enumerate())
            assert watcher.wait(timeout=15) == 0  # told the stream ended: no hang, no error
        finally:
            watcher.kill()
    # leaving `serving` stops a second time, which must be harmless


def test_a_stopped_server_can_start_again_on_its_port() -> None:
    """The daemon restarts the server to apply a reloaded config (SIGHUP)."""
    config = stream_config()
    for level in (60, 180):
        with serving(config, {"composite": np.full((HEIGHT, WIDTH, 3), level, np.uint8)}) as server:
            frame = read_frames(url(server), 2)[-1]
        assert abs(float(frame.mean()) - level) <= TOLERANCE


def test_push_checks_its_arguments() -> None:
    with serving(stream_config()) as server:
        with pytest.raises(ValueError, match="debug"):
            server.push("debug", block_image())
        with pytest.raises(MediaError, match="expected"):
            server.push("composite", np.zeros((HEIGHT // 2, WIDTH, 3), np.uint8))


def test_nvv4l2_encoder_requested_where_it_does_not_exist() -> None:
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst as gst

    gst.init(None)
    if gst.ElementFactory.find("nvv4l2h264enc") is not None:
        pytest.skip("this machine has the Jetson encoder")
    with pytest.raises(EdgeMatteError, match="nvv4l2h264enc"):
        encoder_chain(StreamConfig(encoder="nvv4l2"), gst)
    assert "x264enc" in encoder_chain(StreamConfig(encoder="auto"), gst)


class JetsonGst:
    """A Jetson's GStreamer registry as encoder_chain asks it: which elements exist."""

    def __init__(self, *elements: str) -> None:
        names = set(elements)

        class ElementFactory:
            @staticmethod
            def find(name: str):
                return name if name in names else None

        self.ElementFactory = ElementFactory


def test_the_jetson_encoder_runs_at_full_clocks_as_jetson_utils_sets_it() -> None:
    """jetson-utils' gstEncoder adds maxperf-enable=1 to nvv4l2h264enc (cpp/codec/gstEncoder.cpp)."""
    gst = JetsonGst("nvv4l2h264enc", "nvvidconv", "h264parse", "x264enc")
    chain = encoder_chain(StreamConfig(encoder="nvv4l2", keyframe_interval=30), gst)
    encoder = next(part for part in chain.split(" ! ") if part.startswith("nvv4l2h264enc"))
    assert set(encoder.split()[1:]) >= {"maxperf-enable=1", "insert-sps-pps=1", "idrinterval=30"}
    assert "maxperf" not in encoder_chain(StreamConfig(encoder="x264"), gst)
