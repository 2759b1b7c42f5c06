"""RTSP viewers misbehaving at a live daemon: hundreds of short sessions, a viewer that stalls
without reading, several at once. The pipeline keeps its rate; threads, descriptors and memory
come back to where they were once the viewers are gone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_tools import (
    FPS,
    output_rate,
    output_url,
    process_readings,
    running,
    slow,
    small_config,
)
from rtsp_tools import StalledClient, Watcher, read_frames
from waiting import wait_until

from edge_matte.runtime.daemon import Daemon
from edge_matte.tools.soak_load import RtspViewer

CYCLES = 200
SETTLE_S = 20.0  # a stalled session expires after 10 s; GStreamer tasks end a little later
RSS_ALLOWANCE = 40 * 2**20  # allocator high-water marks, GStreamer caches: bounded, not growing
EXPIRY_S = 60.0  # session timeout 10 s; gst-rtsp-server counts from the last data it could send
RATE_FLOOR = 0.8  # of the rate measured with nobody watching (noise on a busy 2-core machine)


def watch(url: str, packets: int = 5) -> int:
    """One complete viewer session receiving `packets` RTP packets; their payload bytes."""
    viewer = RtspViewer(url)
    try:
        viewer.play()
        received = viewer.read_rtp(packets)
        viewer.teardown()
    finally:
        viewer.close()
    return received


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(small_config(tmp_path_factory.mktemp("state")))
    with running(daemon):
        url = output_url(daemon)
        for _ in range(3):  # warm-up: GStreamer plug-ins loaded, encoder built once
            watch(url)
        read_frames(url, 2)
        yield daemon


def settled(daemon: Daemon) -> dict[str, int]:
    """Readings once no viewer is connected and the thread count has stopped falling."""
    assert wait_until(lambda: daemon.pipeline.stream.client_count() == 0, SETTLE_S)
    previous: list[int] = []

    def steady() -> bool:
        previous.append(process_readings()["threads"])
        return len(previous) >= 5 and len(set(previous[-5:])) == 1

    assert wait_until(steady, SETTLE_S, interval=0.2)
    return process_readings()


def assert_back_to(
    daemon: Daemon, baseline: dict[str, int], timeout: float = SETTLE_S, own_sockets: int = 0
) -> None:
    """Threads and descriptors return to the baseline (waited for); memory stays bounded.
    `own_sockets`: client sockets this test process still holds open itself."""
    assert wait_until(lambda: daemon.pipeline.stream.client_count() == 0, timeout)

    def back() -> bool:
        now = process_readings()
        fds = baseline["open_fds"] + own_sockets
        return now["threads"] <= baseline["threads"] and now["open_fds"] <= fds

    assert wait_until(back, SETTLE_S, interval=0.2), (baseline, process_readings())
    assert process_readings()["rss_bytes"] <= baseline["rss_bytes"] + RSS_ALLOWANCE


def test_200_connect_disconnect_cycles_leave_nothing_behind(daemon: Daemon) -> None:
    baseline = settled(daemon)
    quiet_rate = output_rate(daemon, 2.0)
    url = output_url(daemon)
    received: list[int] = []
    churn = threading.Thread(target=lambda: received.extend(watch(url) for _ in range(CYCLES)))
    churn.start()
    busy_rate = output_rate(daemon, 3.0)
    churn.join()
    assert len(received) == CYCLES and min(received) > 0  # every session really got video
    assert quiet_rate >= 0.8 * FPS
    assert busy_rate >= RATE_FLOOR * quiet_rate, (quiet_rate, busy_rate)
    assert_back_to(daemon, baseline)


def test_a_stalled_viewer_and_several_others_at_once(daemon: Daemon) -> None:
    baseline = settled(daemon)
    quiet_rate = output_rate(daemon, 2.0)
    url = output_url(daemon)
    stalled = StalledClient(url)
    watchers = [Watcher(url) for _ in range(3)]
    try:
        assert all(watcher.wait_decoding() for watcher in watchers)
        with ThreadPoolExecutor(3) as pool:
            sessions = pool.map(lambda _: watch(url), range(30))
            busy_rate = output_rate(daemon, 3.0)
            assert all(size > 0 for size in sessions)
        frames = read_frames(url, 3)  # a newcomer still gets pictures while one viewer is stuck
    finally:
        stalled.close()
        for watcher in watchers:
            watcher.kill()
    assert frames[-1].shape == (daemon.pipeline.size[1], daemon.pipeline.size[0], 3)
    assert busy_rate >= RATE_FLOOR * quiet_rate, (quiet_rate, busy_rate)
    assert_back_to(daemon, baseline)


@slow
def test_a_viewer_that_never_reads_nor_leaves_is_expired(daemon: Daemon) -> None:
    """Stalled and never closing its connection: its session expires, the shared media and its
    threads are released, and then the server hangs up on it, so its descriptors come back too."""
    baseline = settled(daemon)
    stalled = StalledClient(output_url(daemon))
    try:
        assert wait_until(lambda: stalled.unsent_bytes() > 100_000, 10)  # really backed up
        grown = process_readings()["threads"]
        assert grown > baseline["threads"]  # the media's streaming threads
        assert_back_to(daemon, baseline, EXPIRY_S, own_sockets=1)  # the viewer holds its end
        assert stalled.hung_up()
        assert output_rate(daemon, 1.0) >= 0.8 * FPS
    finally:
        stalled.close()
