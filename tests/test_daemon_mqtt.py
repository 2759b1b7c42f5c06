"""MQTT control of a live daemon: `edge-matte run` against a real Mosquitto, seen by real clients.

Covers what only the whole appliance can show: the retained state describes the running
pipeline, a config change reaches the RTSP output and the file on disk and survives a restart,
bad requests (path traversal, generated garbage) are answered with errors while the video keeps
flowing and the config file keeps its bytes, and a broker crash is followed by republished state.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from daemon_tools import (
    SUBJECT_TOLERANCE,
    Truth,
    assert_composite,
    mean_error,
    prepared,
    rgb_hex_to_bgr,
    scene_truth,
    start_daemon,
)
from mqtt_broker import Broker, Probe, retained
from rtsp_tools import free_port, read_frames
from waiting import wait_until

BASE = "edge-matte/e2e"
GREEN = "#00ff00"
RECONNECT_S = 30.0  # paho retries from 1 s with backoff; generous for a loaded CI machine


@pytest.fixture(scope="module")
def truth() -> Truth:
    return scene_truth()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


def with_mqtt(tmp_path: Path, broker: Broker, **sections: dict[str, Any]) -> tuple[Path, str]:
    """A daemon config with MQTT on (device `e2e`) and the true plate saved; and its RTSP URL."""
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "device_id": "e2e"}
    return prepared(tmp_path, mqtt=mqtt, **sections)


def online(broker: Broker) -> None:
    """Wait until the daemon announces itself (a fresh subscriber: nothing seen before counts)."""
    with Probe(broker, f"{BASE}/availability") as probe:
        probe.wait_for(f"{BASE}/availability", lambda m: m.payload == b"online", RECONNECT_S)


def config_set(probe: Probe, patch: dict[str, Any]) -> dict[str, Any]:
    return probe.request(f"{BASE}/config/set", json.dumps(patch), f"{BASE}/config/result").json()


def command(probe: Probe, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return probe.request(f"{BASE}/cmd/{name}", json.dumps(args), f"{BASE}/cmd/result").json()


def state(broker: Broker) -> dict[str, Any]:
    return retained(broker, f"{BASE}/state").json()


def test_config_set_is_live_persisted_and_survives_a_restart(
    tmp_path: Path, broker: Broker, truth: Truth
) -> None:
    path, url = with_mqtt(tmp_path, broker)
    with Probe(broker, f"{BASE}/#") as probe:
        with start_daemon(path) as daemon:
            online(broker)
            before = state(broker)
            assert before["engine"] == "classic" and before["degraded"] is False
            assert before["plate"] == "ready" and before["compose_mode"] == "replace"
            assert before["resolution"] == [320, 240]

            operator_file = path.read_bytes()
            answer = config_set(probe, {"id": "m1", "compose": {"mode": "blur"}})
            assert answer == {"id": "m1", "ok": True, "errors": []}
            assert state(broker)["compose_mode"] == "blur"
            assert path.read_bytes() == operator_file  # the change is kept beside it
            saved = yaml.safe_load((tmp_path / "state" / "config-overrides.yaml").read_text())
            assert saved["overrides"]["compose.mode"]["value"] == "blur"
            blurred = read_frames(url, 3)
            assert mean_error(blurred, truth.background_mask, rgb_hex_to_bgr(GREEN)) > 50
            assert mean_error(blurred, truth.subject_mask, truth.image) <= SUBJECT_TOLERANCE
            assert daemon.stop() == 0
        probe.publish(f"{BASE}/state", b"", retain=True)  # only the next daemon can set it again

        with start_daemon(path):
            online(broker)
            assert state(broker)["compose_mode"] == "blur"
            blurred = read_frames(url, 2)
            assert mean_error(blurred, truth.background_mask, rgb_hex_to_bgr(GREEN)) > 50


def test_the_first_open_of_the_camera_is_reported_over_mqtt(tmp_path: Path, broker: Broker) -> None:
    """Building the daemon opens nothing, so the camera's first open is an event on MQTT too
    (it used to fail while the daemon was built, before MQTT listened: only the state told)."""
    device = tmp_path / "video0"  # never created: the USB camera is unplugged
    path, _ = with_mqtt(tmp_path, broker, source={"uri": f"v4l2://{device}", "ready_wait_s": 0})
    with Probe(broker, f"{BASE}/events") as probe, start_daemon(path):
        lost = probe.wait_for(f"{BASE}/events", lambda m: m.json()["kind"] == "source.lost")
        assert "does not exist" in lost.json()["message"]
        assert state(broker)["source_connected"] is False


def test_snapshot_is_a_jpeg_of_the_composite_and_restart_comes_back(
    tmp_path: Path, broker: Broker, truth: Truth
) -> None:
    path, url = with_mqtt(tmp_path, broker)
    with Probe(broker, f"{BASE}/#") as probe, start_daemon(path):
        online(broker)
        answer = command(probe, "snapshot", {"id": 3})
        assert answer["ok"] is True and answer["id"] == 3, answer
        jpeg = probe.wait_for(f"{BASE}/snapshot").payload
        assert answer["result"]["bytes"] == len(jpeg)
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (240, 320, 3)
        assert_composite([image], truth, GREEN)

        answer = command(probe, "restart", {"id": "r"})
        assert answer == {
            "id": "r",
            "command": "restart",
            "ok": True,
            "result": {"restarted": True},
        }
        assert_composite(read_frames(url, 2), truth, GREEN)  # a new pipeline, same plate


# -- bad input ---------------------------------------------------------------------------------

# Values the config schema refuses, per dotted key.
WRONG_VALUES: dict[str, list[Any]] = {
    "source.width": ["wide", -5, 10**9, [320], 3.5],
    "source.fps": [0, -1, "fast"],
    "source.uri": ["foo://x", 7],
    "compose.mode": ["sparkle", 3, ["blur"]],
    "compose.background": ["#12", "#gg0000", 5],
    "compose.blur_sigma": [0, -3, "soft"],
    "stream.port": [0, 70000, "rtsp"],
    "stream.outputs": [[], ["depth"], "composite"],
    "matting.engine": ["gpu", 1],
    "plate.capture_frames": [0, 1000, "many"],
    "mqtt.port": [-1, "broker"],
    "mqtt.device_id": ["a b", "x" * 65, ""],
    "log_level": ["LOUD", 10],
    "state_dir": [["a"], {"b": 1}],
}
# Patches the schema accepts but the daemon refuses before changing anything.
DAEMON_REFUSED: list[dict[str, Any]] = [
    {"compose": {"background": "../../etc/passwd"}},
    {"compose": {"background": "/etc/hostname"}},
    {"compose": {"background": "missing.png"}},
    {"compose": {"background": "/etc/hostname"}, "source": {"fps": 14}},
    {"source": {"uri": "test://?walkers=3"}},
    {"source": {"uri": "test://?fps=0"}},
    {"matting": {"weights": "/nonexistent/pytorch_mobilenetv2.pth"}},
]
BAD_ASSET_NAMES = ["../../etc/passwd", "/etc/passwd", "a/../../b.png", "missing.png", "x\u0000.png"]


def _patch(key: str, value: Any) -> dict[str, Any]:
    section, _, field = key.partition(".")
    return {section: {field: value}} if field else {section: value}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def invalid_requests(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """`count` (relative topic, payload) pairs, each invalid by construction in a random way."""
    words = "abcdefghijklmnopqrstuvwxyz_"

    def word() -> str:
        return "x" + "".join(rng.choice(words) for _ in range(rng.randint(1, 8)))  # no real key

    def scalar() -> Any:  # never null: in a merge patch null deletes, which may be valid
        return rng.choice([True, 0, -1, 2.5, "", word(), [1, 2], {"k": 1}])

    def wrong_value() -> dict[str, Any]:
        key = rng.choice(sorted(WRONG_VALUES))
        return _patch(key, rng.choice(WRONG_VALUES[key]))

    def dumps(value: Any) -> bytes:
        body = dict(value, id=rng.randint(0, 10**6)) if isinstance(value, dict) else value
        return json.dumps(body).encode()

    config_makers = [
        lambda: b"\xff" + rng.randbytes(rng.randint(0, 40)),  # not UTF-8
        lambda: json.dumps(wrong_value()).encode()[: rng.randint(1, 20)],  # cut short
        lambda: dumps(scalar()) if rng.random() < 0.5 else b"[" + dumps(wrong_value()) + b"]",
        lambda: dumps({word(): scalar()}),  # unknown section
        lambda: dumps({rng.choice(["source", "compose", "stream", "plate"]): {word(): scalar()}}),
        lambda: dumps(wrong_value()),
        lambda: dumps({**wrong_value(), **wrong_value()}),
        lambda: dumps({"compose": _nested(rng.randint(33, 60))}),  # too deep
        lambda: dumps({"compose": {"background": "#00ff00\u0000"}}),
        lambda: dumps(rng.choice(DAEMON_REFUSED)),
        lambda: dumps(rng.choice(DAEMON_REFUSED)),
    ]
    command_makers = [
        lambda: (f"cmd/{word()}", dumps({})),  # unknown command
        lambda: (
            f"cmd/{rng.choice(['plate/clear', 'plate/freeze', 'restart', 'snapshot'])}",
            dumps({word(): scalar()}),  # arguments they do not take
        ),
        lambda: ("cmd/background/set", dumps({"name": rng.choice(BAD_ASSET_NAMES)})),
        lambda: ("cmd/background/set", dumps({"name": rng.choice([1, [], None, ""])})),
        lambda: (
            "cmd/background/set",
            dumps(
                {
                    "image_base64": rng.choice(
                        ["!!notbase64", "", base64.b64encode(rng.randbytes(64)).decode()]
                    )
                }
            ),
        ),
        lambda: ("cmd/background/set", dumps({"name": "a.png", "image_base64": "AAAA"})),
        lambda: ("cmd/background/set", dumps({})),
        lambda: ("cmd/plate/capture", b"\xff\xfe" + rng.randbytes(8)),
    ]
    requests = []
    for _ in range(count):
        if rng.random() < 0.5:
            requests.append(("config/set", rng.choice(config_makers)()))
        else:
            requests.append(rng.choice(command_makers)())
    return requests


def wait_for_count(probe: Probe, topic: str, total: int) -> None:
    wait_until(lambda: len(probe.on(topic)) >= total, what=f"{total} messages on {topic}")


def answer_topic(relative: str) -> str:
    return f"{BASE}/config/result" if relative == "config/set" else f"{BASE}/cmd/result"


def test_bad_requests_are_refused_and_change_nothing(
    tmp_path: Path, broker: Broker, truth: Truth
) -> None:
    path, url = with_mqtt(tmp_path, broker)
    outside = tmp_path / "outside.png"  # a real image, but not in the media directory
    cv2.imwrite(str(outside), np.zeros((24, 32, 3), np.uint8))
    with Probe(broker, f"{BASE}/#") as probe, start_daemon(path) as daemon:
        online(broker)
        saved = path.read_bytes()
        digest = state(broker)["config_hash"]

        answer = command(probe, "background/set", {"id": 7, "name": "../../etc/passwd"})
        assert answer["ok"] is False and answer["id"] == 7 and ".." in answer["error"], answer
        # An absolute path smuggled in beside a change that rebuilds the pipeline.
        answer = config_set(probe, {"compose": {"background": str(outside)}, "source": {"fps": 14}})
        assert answer["ok"] is False and "outside the media directory" in answer["errors"][0]
        # The port is the device owner's: refused before any pipeline is touched (a restart
        # that fails is undone: tests/test_remote_property.py).
        answer = config_set(probe, {"stream": {"port": free_port()}})
        assert answer["errors"] == [
            "stream.port: can only be changed in the config file on the device"
        ]
        assert path.read_bytes() == saved
        assert_composite(read_frames(url, 2), truth, GREEN)

        requests = invalid_requests(random.Random(20240611), 300)
        answers = [
            probe.request(f"{BASE}/{rel}", body, answer_topic(rel)) for rel, body in requests
        ]
        accepted = [
            (req, a.payload) for req, a in zip(requests, answers, strict=True) if a.json()["ok"]
        ]
        assert not accepted, accepted[:3]

        # The same requests as one burst: answered (some "busy"), none applied.
        seen = {topic: len(probe.on(topic)) for topic in map(answer_topic, ("config/set", "cmd/x"))}
        for relative, body in requests:
            probe.publish(f"{BASE}/{relative}", body)
        expected = dict(seen)
        for relative, _ in requests:
            expected[answer_topic(relative)] += 1
        for topic, total in expected.items():
            wait_for_count(probe, topic, total)
        burst = [m.json() for topic in expected for m in probe.on(topic)[seen[topic] :]]
        assert not [answer for answer in burst if answer["ok"]]

        assert path.read_bytes() == saved
        assert state(broker)["config_hash"] == digest
        assert_composite(read_frames(url, 2), truth, GREEN)
        assert daemon.process.poll() is None


def test_broker_crash_then_state_republished_and_online_again(
    tmp_path: Path, broker: Broker, truth: Truth
) -> None:
    path, url = with_mqtt(tmp_path, broker)
    with start_daemon(path) as daemon:
        online(broker)
        broker.kill()  # retained messages die with it (no persistence)
        broker.start()
        online(broker)  # nothing is retained after the crash: this is the daemon again
        republished = state(broker)
        assert republished["engine"] == "classic" and republished["plate"] == "ready"
        assert republished["compose_mode"] == "replace"
        assert_composite(read_frames(url, 2), truth, GREEN)
        assert daemon.process.poll() is None
