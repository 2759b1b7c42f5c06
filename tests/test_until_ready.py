"""What viewers see before there is a plate (`plate.until_ready`), read back over real RTSP.

The scene is the still synthetic room with a subject standing there from frame 0: the keeper
never captures it (a scene must change before its first plate), so the daemon stays without a
plate for the whole test and every composite frame is the until-ready view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from daemon_tools import (
    BACKGROUND_TOLERANCE,
    SUBJECT_TOLERANCE,
    Truth,
    daemon_config,
    mean_error,
    rgb_hex_to_bgr,
    scene_truth,
    start_daemon,
    write_config,
)
from mqtt_broker import Broker, Probe
from rtsp_tools import Watcher, free_port, read_frames
from test_daemon import FrameCounter
from test_daemon_mqtt import BASE, config_set, online, state

from edge_matte.control import overrides
from edge_matte.output.compose import privacy_blur

GREEN = "#00ff00"
FPS = 15


@pytest.fixture(scope="module")
def truth() -> Truth:
    return scene_truth()


def without_plate(tmp_path: Path, **sections: dict) -> tuple[Path, str]:
    """A daemon config (classic engine, green replacement) with no saved plate; its RTSP URL."""
    port = free_port()
    config = daemon_config(tmp_path / "state", port, **sections)
    return write_config(tmp_path / "edge-matte.yaml", config), f"rtsp://127.0.0.1:{port}/composite"


def shown(frames: list[np.ndarray], truth: Truth) -> str:
    """Which until-ready view the frames are (or "none of them"), by their distance to each."""
    everywhere = np.ones(truth.image.shape[:2], bool)
    views = {
        "replacement": rgb_hex_to_bgr(GREEN),
        "blur": privacy_blur(truth.image),
        "room": truth.image,
    }
    errors = {name: mean_error(frames, everywhere, image) for name, image in views.items()}
    best = min(errors, key=errors.get)
    limit = SUBJECT_TOLERANCE if best == "room" else BACKGROUND_TOLERANCE
    return best if errors[best] <= limit else f"none of them: {errors}"


def test_the_default_shows_only_the_replacement(tmp_path: Path, truth: Truth) -> None:
    path, url = without_plate(tmp_path)
    with start_daemon(path):
        frames = read_frames(url, 3)
    assert shown(frames, truth) == "replacement"
    # Nothing of the subject reaches the viewer before it can be separated from the room.
    assert mean_error(frames, truth.subject_mask, truth.image) > 50


@pytest.mark.parametrize("view", ["blur", "room"])
def test_the_configured_view_is_shown(tmp_path: Path, truth: Truth, view: str) -> None:
    path, url = without_plate(tmp_path, plate={"until_ready": view})
    with start_daemon(path):
        frames = read_frames(url, 3)
    assert shown(frames, truth) == view


def test_until_ready_changes_live_over_mqtt(tmp_path: Path, truth: Truth) -> None:
    with Broker(tmp_path / "broker") as broker:
        mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "device_id": "e2e"}
        path, url = without_plate(tmp_path, mqtt=mqtt)
        with Probe(broker, f"{BASE}/#") as probe, start_daemon(path):
            online(broker)
            assert state(broker)["plate"] in ("none", "capturing")
            assert shown(read_frames(url, 2), truth) == "replacement"
            viewer = Watcher(url)
            try:
                decoded = FrameCounter(viewer)
                assert decoded.wait_beyond(0)
                answer = config_set(probe, {"id": 1, "plate": {"until_ready": "blur"}})
                assert answer == {"id": 1, "ok": True, "errors": []}
                assert shown(read_frames(url, 3), truth) == "blur"
                # Live: the stream went on (a pipeline restart would have ended this viewer).
                assert decoded.wait_beyond(decoded.frames + FPS)
                assert viewer.process.poll() is None
            finally:
                viewer.kill()
    # Saved as a remote override; the operator's file is left as it was.
    assert "plate" not in yaml.safe_load(path.read_text())
    saved = yaml.safe_load((tmp_path / "state" / overrides.FILE_NAME).read_text())
    assert "blur" in str(saved) and "plate.until_ready" in str(saved)
