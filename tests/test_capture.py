"""Frame sources on real files, a real RTSP camera (killed and restarted) and missing devices."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError
from rtsp_tools import CameraServer, free_port
from waiting import wait_until

from edge_matte.capture.opener import mask_uri, open_source
from edge_matte.capture.resilient import ResilientSource
from edge_matte.config.schema import SourceConfig
from edge_matte.errors import SourceEnded, SourceError, SourceTimeout
from edge_matte.events import Event
from edge_matte.frames import Frame

CLIP_FRAMES = 30


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 320x240 30-frame H.264 clip (noisy, so it is big enough to cut), and broken copies."""
    folder = tmp_path_factory.mktemp("clips")
    clip = folder / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi",
            "-i", "testsrc2=size=320x240:rate=30,noise=alls=40:allf=t",
            "-frames:v", str(CLIP_FRAMES), "-c:v", "libx264", "-pix_fmt", "yuv420p",
            "-g", "10", "-movflags", "+faststart", str(clip),
        ],
        check=True,
    )  # fmt: skip
    data = clip.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "junk.mp4").write_bytes(os.urandom(5000))
    (folder / "empty.mp4").write_bytes(b"")
    return {path.stem: path for path in folder.iterdir()}


def file_config(path: Path, **overrides) -> SourceConfig:
    return SourceConfig(uri=f"file://{path}", **{"width": 320, "height": 240, **overrides})


def read_until_end(source) -> list[Frame]:
    frames = []
    with pytest.raises(SourceEnded):
        while True:
            frames.append(source.read(5.0))
    return frames


def test_file_source_delivers_the_clip_then_ends(clips: dict[str, Path]) -> None:
    source = open_source(file_config(clips["clip"], loop=False))
    try:
        assert (source.info.width, source.info.height, source.info.fps) == (320, 240, 30.0)
        frames = read_until_end(source)
        with pytest.raises(SourceEnded):  # and stays ended
            source.read(0.1)
    finally:
        source.close()
    assert frames[-1].index == CLIP_FRAMES - 1  # every frame was read (some may be skipped)
    assert all(frame.image.shape == (240, 320, 3) for frame in frames)
    assert [f.index for f in frames] == sorted({f.index for f in frames})


def test_frames_are_resized_to_the_configured_size(clips: dict[str, Path]) -> None:
    source = open_source(file_config(clips["clip"], width=160, height=120))
    try:
        frame = source.read(5.0)
    finally:
        source.close()
    assert frame.image.shape == (120, 160, 3)
    assert (source.info.width, source.info.height) == (160, 120)
    assert (source.native.width, source.native.height) == (320, 240)  # what the file holds


def test_looping_file_goes_past_its_end(clips: dict[str, Path]) -> None:
    source = open_source(file_config(clips["clip"], loop=True))
    try:
        index = 0
        while index < CLIP_FRAMES + 10:
            index = source.read(5.0).index
    finally:
        source.close()


def test_a_slow_reader_gets_the_newest_frame(clips: dict[str, Path]) -> None:
    source = open_source(file_config(clips["clip"], loop=True))
    try:
        first = source.read(5.0)
        assert wait_until(lambda: source.dropped >= 3, timeout=10)  # frames passed us by
        latest = source.read(5.0)
    finally:
        source.close()
    assert latest.index > first.index + 3


def test_truncated_file_is_an_error_not_an_end(clips: dict[str, Path]) -> None:
    source = open_source(file_config(clips["truncated"], loop=False))
    try:
        with pytest.raises(SourceError, match="truncated") as caught:
            while True:
                source.read(5.0)
    finally:
        source.close()
    assert not isinstance(caught.value, SourceEnded)


@pytest.mark.parametrize("name", ["junk", "empty", "missing"])
def test_unreadable_files_fail_to_open(clips: dict[str, Path], name: str) -> None:
    path = clips["clip"].with_name(f"{name}.mp4")
    with pytest.raises(SourceError, match=str(path)):
        open_source(file_config(path))


def test_missing_v4l2_device() -> None:
    with pytest.raises(SourceError, match="/dev/video97 does not exist"):
        open_source(SourceConfig(uri="v4l2:///dev/video97"))


@pytest.mark.skipif(
    importlib.util.find_spec("jetson_utils") is not None, reason="jetson-utils is installed"
)
def test_csi_without_jetson_utils_says_what_is_missing() -> None:
    with pytest.raises(SourceError, match="csi://0 needs jetson-utils"):
        open_source(SourceConfig(uri="csi://0"))


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(ValidationError, match="unsupported scheme"):
        SourceConfig(uri="http://camera/stream")
    unchecked = SourceConfig.model_construct(uri="gopher://camera", width=64, height=48)
    with pytest.raises(SourceError, match="unsupported source gopher://camera"):
        open_source(unchecked)


def test_synthetic_scene_is_dispatched() -> None:
    source = open_source(SourceConfig(uri="test://", width=64, height=48, fps=30))
    try:
        frame = source.read(5.0)
    finally:
        source.close()
    assert frame.image.shape == (48, 64, 3)
    assert frame.truth_alpha is not None


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
        ("rtsp://admin@cam/live", "rtsp://***@cam/live"),
        ("rtsp://cam:554/live", "rtsp://cam:554/live"),
        ("file:///media/clip.mp4", "file:///media/clip.mp4"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_rtsp_credentials_never_reach_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = SourceConfig(uri=f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/live", timeout_s=2)
    with pytest.raises(SourceError) as caught:
        open_source(config)
    assert "***@127.0.0.1" in str(caught.value)
    assert "hunter2" not in str(caught.value) + caplog.text


def rtsp_config(camera: CameraServer, **overrides) -> SourceConfig:
    values = {"width": 320, "height": 240, "fps": 15, "timeout_s": 2.0}
    values |= {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    return SourceConfig(uri=camera.url, **{**values, **overrides})


def test_rtsp_camera_frozen_is_a_timeout() -> None:
    with CameraServer(free_port()) as camera:
        source = open_source(rtsp_config(camera))
        try:
            assert source.read(10.0).image.shape == (240, 320, 3)
            os.kill(camera.pid, signal.SIGSTOP)  # alive, connected, silent
            try:
                with pytest.raises(SourceTimeout):
                    while True:
                        source.read(0.5)
            finally:
                os.kill(camera.pid, signal.SIGCONT)
        finally:
            source.close()


def test_a_camera_stamps_its_frames_with_the_monotonic_clock() -> None:
    """A camera's media time is when its frame was read (OpenCV's stream position restarts with
    the camera): increasing, and within the moment the reader thread published the frame."""
    with CameraServer(free_port()) as camera:
        source = open_source(rtsp_config(camera))
        try:
            frames = [source.read(10.0) for _ in range(5)]
        finally:
            source.close()
    stamps = [frame.media_time for frame in frames]
    assert stamps == sorted(set(stamps))
    assert all(0 <= frame.time - frame.media_time < 0.5 for frame in frames)


class Recorder:
    """An Emit that keeps the events."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]


def pump_until(source: ResilientSource, condition, timeout: float = 30.0) -> list[Frame]:
    """Read like the daemon does (short timeouts, never stopping) until `condition()`."""
    frames = []

    def step() -> bool:
        with contextlib.suppress(SourceTimeout):
            frames.append(source.read(0.2))
        return condition(frames)

    assert wait_until(step, timeout=timeout, interval=0)
    return frames


def test_rtsp_camera_killed_and_restarted_recovers_without_restart() -> None:
    camera = CameraServer(free_port())
    camera.start()
    events = Recorder()
    config = rtsp_config(camera)
    source = ResilientSource(lambda: open_source(config), config, events)
    source.start()
    try:
        pump_until(source, lambda frames: len(frames) >= 5)
        assert source.connected and events.kinds() == ["source.connected"]

        camera.kill()  # kill -9 mid-stream
        pump_until(source, lambda _: "source.lost" in events.kinds())
        assert not source.connected
        assert source.last_error
        assert source.problem().count(config.uri) == 1  # named once on the no-signal card
        with pytest.raises(SourceTimeout, match="no signal") as caught:
            source.read(0.2)
        assert str(caught.value).count(config.uri) == 1

        camera.start()  # same port
        frames = pump_until(source, lambda frames: len(frames) >= 5)
    finally:
        source.close()
        camera.kill()
    assert events.kinds() == ["source.connected", "source.lost", "source.recovered"]
    assert source.reconnects == 1
    assert all(frame.image.shape == (240, 320, 3) for frame in frames)


def test_resilient_source_starts_without_its_camera() -> None:
    camera = CameraServer(free_port())
    events = Recorder()
    config = rtsp_config(camera)
    source = ResilientSource(lambda: open_source(config), config, events)
    source.start()
    try:
        pump_until(source, lambda _: "source.lost" in events.kinds())
        assert (source.info.width, source.info.height) == (320, 240)  # the no-signal size
        camera.start()
        pump_until(source, lambda frames: len(frames) >= 3)
    finally:
        source.close()
        camera.kill()
    assert events.kinds() == ["source.lost", "source.recovered"]  # never connected before


def test_resilient_source_opens_nothing_until_started(clips: dict[str, Path]) -> None:
    """Construction is inert: a listener subscribed after it still hears the first open."""
    events = Recorder()
    config = file_config(clips["junk"])
    opened = threading.Event()

    def opener():
        opened.set()
        return open_source(config)

    source = ResilientSource(opener, config, events)
    try:
        assert not opened.is_set()
        assert f"reopen {config.uri}" not in {thread.name for thread in threading.enumerate()}
        with pytest.raises(SourceTimeout, match="opening"):
            source.read(0.1)
        source.start()
        pump_until(source, lambda _: "source.lost" in events.kinds())
        with pytest.raises(RuntimeError, match="already started"):
            source.start()
    finally:
        source.close()
    assert opened.is_set() and events.kinds() == ["source.lost"]


def test_resilient_source_passes_a_file_end_through(clips: dict[str, Path]) -> None:
    events = Recorder()
    config = file_config(clips["clip"], loop=False)
    source = ResilientSource(lambda: open_source(config), config, events)
    source.start()
    try:
        with pytest.raises(SourceEnded):
            pump_until(source, lambda _: False)
    finally:
        source.close()
    assert events.kinds() == ["source.connected"]


def test_resilient_source_gives_up_on_a_silent_camera_and_reconnects() -> None:
    events = Recorder()
    with CameraServer(free_port()) as camera:
        config = rtsp_config(camera)
        source = ResilientSource(lambda: open_source(config), config, events)
        source.start()
        try:
            pump_until(source, lambda frames: len(frames) >= 3)
            os.kill(camera.pid, signal.SIGSTOP)  # no error, just silence
            try:
                pump_until(source, lambda _: "source.lost" in events.kinds())
            finally:
                os.kill(camera.pid, signal.SIGCONT)
            assert "no frame for 2 s" in (source.last_error or "")
            assert source.problem() == f"{config.uri}: {source.last_error}"
            pump_until(source, lambda frames: len(frames) >= 3)
        finally:
            source.close()
    assert events.kinds() == ["source.connected", "source.lost", "source.recovered"]
