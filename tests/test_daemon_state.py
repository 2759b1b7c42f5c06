"""Retained `state` and `config` follow the truth: a real daemon, a real Mosquitto, a subscriber.

Each test watches the retained topics while something changes inside the daemon without any
MQTT request: the plate is learnt (none -> capturing -> ready), a SIGHUP reload changes the
composite mode, an RTSP camera that was not there comes up. Each transition must reach the
broker as a retained message, so Home Assistant (and any late subscriber) sees the truth.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_tools import DaemonProcess, daemon_config, prepared, write_config
from mqtt_broker import Broker, Probe, retained
from rtsp_tools import CameraServer, free_port

BASE = "edge-matte/state"
STATE, CONFIG = f"{BASE}/state", f"{BASE}/config"
WAIT_S = 30.0  # a loaded 2-core CI machine
# Someone walks through once (motion tells the keeper the scene is live), then the room stays empty.
WALK_THROUGH = (
    "test://?enter_frame=5&walk_frames=10&stay_frames=5&empty_frames=1000000&noise_sigma=1"
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


def mqtt_section(broker: Broker) -> dict[str, Any]:
    return {"enabled": True, "host": "127.0.0.1", "port": broker.port, "device_id": "state"}


def states(probe: Probe) -> list[dict[str, Any]]:
    return [message.json() for message in probe.on(STATE) if message.payload]


def wait_state(probe: Probe, daemon: DaemonProcess, **expected: Any) -> dict[str, Any]:
    """The first retained state with every `expected` key at its value."""
    try:
        message = probe.wait_for(
            STATE,
            lambda m: (
                bool(m.payload)
                and all(json.loads(m.payload).get(k) == v for k, v in expected.items())
            ),
            WAIT_S,
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{daemon.log()}") from None
    return message.json()


def test_plate_learnt_without_a_request_is_republished(tmp_path: Path, broker: Broker) -> None:
    config = daemon_config(
        tmp_path / "state",
        free_port(),
        source={"uri": WALK_THROUGH},
        plate={"stillness_s": 0.5},
        mqtt=mqtt_section(broker),
    )
    path = write_config(tmp_path / "edge-matte.yaml", config)
    with Probe(broker, STATE) as probe, DaemonProcess(path) as daemon:
        ready = wait_state(probe, daemon, plate="ready")
        seen = [state["plate"] for state in states(probe)]
        assert seen.index("capturing") < seen.index("ready"), seen
        assert ready["pipeline"] == "running" and ready["source_connected"] is True
        assert retained(broker, STATE).json()["plate"] == "ready"


def test_sighup_reload_republishes_config_and_state(tmp_path: Path, broker: Broker) -> None:
    path, _ = prepared(tmp_path, mqtt=mqtt_section(broker))
    with Probe(broker, STATE, CONFIG) as probe, DaemonProcess(path) as daemon:
        daemon.wait_ready()
        wait_state(probe, daemon, compose_mode="replace", pipeline="running")
        edited = yaml.safe_load(path.read_text())
        edited["compose"]["mode"] = "blur"
        path.write_text(yaml.safe_dump(edited))
        daemon.process.send_signal(signal.SIGHUP)
        wait_state(probe, daemon, compose_mode="blur")
        probe.wait_for(CONFIG, lambda m: json.loads(m.payload)["compose"]["mode"] == "blur")
        assert retained(broker, CONFIG).json()["compose"]["mode"] == "blur"
        assert retained(broker, STATE).json()["compose_mode"] == "blur"


def test_rtsp_camera_appearing_later_is_republished(tmp_path: Path, broker: Broker) -> None:
    camera = CameraServer(free_port())
    source = {"uri": camera.url, "timeout_s": 2.0, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}
    path, _ = prepared(tmp_path, source=source, mqtt=mqtt_section(broker))
    try:
        with Probe(broker, STATE) as probe, DaemonProcess(path) as daemon:
            wait_state(probe, daemon, source_connected=False, pipeline="running")
            camera.start()
            connected = wait_state(probe, daemon, source_connected=True)
            assert connected["pipeline"] == "running"
            assert retained(broker, STATE).json()["source_connected"] is True
    finally:
        camera.kill()
