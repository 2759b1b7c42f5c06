"""MqttControl against a real Mosquitto, with a small real ControlApi standing in for the daemon.

Run as a script (`python test_control_mqtt.py CONFIG`) it serves one control until killed: the
will test kills that process with SIGKILL so the broker, not the client, says `offline`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for the script mode

from daemon_tools import save_config  # noqa: E402
from mqtt_broker import Broker, Probe, make_tls_files, retained  # noqa: E402
from waiting import wait_until  # noqa: E402

from edge_matte.config import schema as config_mod
from edge_matte.config.schema import Config, MqttConfig  # noqa: E402
from edge_matte.control.mqtt import REQUEST_SLOTS, MqttControl  # noqa: E402
from edge_matte.errors import MediaError  # noqa: E402
from edge_matte.events import Event  # noqa: E402
from edge_matte.runtime.telemetry import system_readings  # noqa: E402

REFUSED_ASSET = "refused-by-daemon.png"


class StandInApi:
    """A real ControlApi: holds a Config, persists it as a file, records commands."""

    def __init__(self, config: Config, path: Path) -> None:
        self._config = config
        self.path = path
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.control: MqttControl | None = None
        self.gate = threading.Event()  # `plate/clear` waits for it: a slow daemon
        self.gate.set()
        save_config(config, path)

    def state(self) -> dict[str, Any]:
        return {
            "pipeline": "running",
            "compose_mode": self._config.compose.mode,
            "plate": "ready",
            "plate_frozen": False,
            "config_hash": self._config.digest(),
            "commands": len(self.commands),
        }

    def telemetry(self) -> dict[str, Any]:
        return {
            "output_fps": 25.0,
            "source_fps": 25.0,
            "stages": {"output": {"fps": 25.0}},
            "latency": {"p50_ms": 40.0, "p95_ms": 55.0},
            **system_readings(),
        }

    def config(self) -> Config:
        return self._config

    def apply_config(self, config: Config) -> None:
        if config.compose.background == REFUSED_ASSET:
            raise MediaError(f"{REFUSED_ASSET}: not an image")
        save_config(config, self.path)
        old, self._config = self._config, config
        if old.mqtt != config.mqtt and self.control is not None:
            self.control.reconfigure(config.mqtt)

    def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if ".." in args.get("name", ""):
            raise MediaError(f"{args['name']}: outside the media directory")
        if name == "plate/clear":
            self.gate.wait()
        self.commands.append((name, args))
        return {"count": len(self.commands)}

    def snapshot_jpeg(self) -> bytes:
        return cv2.imencode(".jpg", np.full((24, 32, 3), 128, np.uint8))[1].tobytes()


@contextmanager
def running(tmp_path: Path, mqtt: MqttConfig) -> Iterator[StandInApi]:
    """A started control over a StandInApi whose config file lives in tmp_path."""
    api = StandInApi(Config(mqtt=mqtt), tmp_path / "config.yaml")
    control = MqttControl(mqtt, api)
    api.control = control
    control.start()
    try:
        yield api
    finally:
        control.stop()


def base(mqtt: MqttConfig) -> str:
    return f"{mqtt.topic_prefix}/{mqtt.device_id}"


def online(probe: Probe, mqtt: MqttConfig) -> None:
    probe.wait_for(f"{base(mqtt)}/availability", lambda m: m.payload == b"online")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running_broker:
        yield running_broker


@pytest.fixture
def device(broker: Broker, tmp_path: Path) -> Iterator[tuple[StandInApi, Probe, str]]:
    """A connected control (device `dev1`, group `lobby`) and a probe seeing all its topics."""
    mqtt = broker.mqtt_config(device_id="dev1", group="lobby", max_payload_bytes=2048)
    with Probe(broker, "edge-matte/#") as probe, running(tmp_path, mqtt) as api:
        online(probe, mqtt)
        yield api, probe, base(mqtt)


def test_fresh_subscriber_sees_retained_state_config_and_online(
    broker: Broker, tmp_path: Path
) -> None:
    mqtt = broker.mqtt_config(device_id="dev1", password="s3cret-pw")
    with Probe(broker, "edge-matte/#") as probe, running(tmp_path, mqtt):
        online(probe, mqtt)
        assert retained(broker, "edge-matte/dev1/availability").payload == b"online"
        assert retained(broker, "edge-matte/dev1/state").json()["pipeline"] == "running"
        config = retained(broker, "edge-matte/dev1/config")
        assert config.json()["mqtt"]["device_id"] == "dev1"
        assert b"s3cret-pw" not in config.payload
        topics = [m.topic for m in probe.messages]
        assert topics.index("edge-matte/dev1/state") < topics.index("edge-matte/dev1/availability")


def test_config_set_is_applied_persisted_answered_and_republished(
    device: tuple[StandInApi, Probe, str],
) -> None:
    api, probe, dev = device
    answer = probe.request(
        f"{dev}/config/set", '{"id": "r1", "compose": {"mode": "blur"}}', f"{dev}/config/result"
    )
    assert answer.json() == {"id": "r1", "ok": True, "errors": []}
    assert api.config().compose.mode == "blur"
    assert config_mod.load(api.path).compose.mode == "blur"
    assert probe.on(f"{dev}/config")[-1].json()["compose"]["mode"] == "blur"
    assert probe.on(f"{dev}/state")[-1].json()["compose_mode"] == "blur"


@pytest.mark.parametrize(
    ("payload", "request_id", "keys"),
    [
        (b'{"id": "r1", "compose": {"mode": 3}', None, ["<payload>: malformed JSON"]),
        (b'{"id": "r2", "compose": {"mode": 3}}', "r2", ["compose.mode"]),
        (
            b'{"id": "r3", "compose": {"colour": "red"}, "sorce": {}}',
            "r3",
            ["compose.colour: unknown key", "sorce: unknown key"],
        ),
        (
            b'{"id": "r4", "source": {"fps": 1000}, "plate": {"capture_frames": 0}}',
            "r4",
            ["source.fps", "plate.capture_frames"],
        ),
        (
            b'{"id": "r5", "compose": {"background": "' + b"x" * 3000 + b'"}}',
            None,
            ["<payload>: larger than"],
        ),
        (b'["not", "an", "object"]', None, ["<payload>: must be a JSON object"]),
        (
            b'{"id": "r7", "compose": {"background": "' + REFUSED_ASSET.encode() + b'"}}',
            "r7",
            [REFUSED_ASSET],
        ),
        (
            b'{"id": "r9", "compose": {"blur_sigma": "\\u0000"}}',
            "r9",  # the id is clean: the refusal carries it
            ["compose.blur_sigma: contains a NUL"],
        ),
        (b'{"id": ["r10"], "log_level": "DEBUG"}', None, ["id: must be a string or an integer"]),
    ],
)
def test_invalid_config_set_is_answered_and_changes_nothing(
    device: tuple[StandInApi, Probe, str], payload: bytes, request_id: str | None, keys: list[str]
) -> None:
    api, probe, dev = device
    before_file, before_config = api.path.read_bytes(), api.config()
    answer = probe.request(f"{dev}/config/set", payload, f"{dev}/config/result").json()
    assert answer["ok"] is False and answer["id"] == request_id
    for key in keys:
        assert any(key in error for error in answer["errors"]), (key, answer["errors"])
    assert api.path.read_bytes() == before_file
    assert api.config() is before_config


def test_commands_are_validated_executed_and_answered(
    device: tuple[StandInApi, Probe, str],
) -> None:
    api, probe, dev = device

    def command(name: str, payload: str | bytes = b"{}") -> dict[str, Any]:
        return probe.request(f"{dev}/cmd/{name}", payload, f"{dev}/cmd/result").json()

    assert command("plate/capture", '{"id": 5}') == {
        "id": 5,
        "command": "plate/capture",
        "ok": True,
        "result": {"count": 1},
    }
    assert command("background/set", '{"name": "beach.png"}')["ok"] is True
    traversal = command("background/set", '{"id": "t", "name": "../../etc/passwd"}')
    assert traversal["ok"] is False and "outside the media directory" in traversal["error"]
    assert (
        "image_base64: not valid base64"
        in command("background/set", '{"image_base64": "!!"}')["error"]
    )
    unknown = command("plate/explode", "{}")
    assert unknown["ok"] is False and "unknown command 'plate/explode'" in unknown["error"]
    assert "now: unknown argument" in command("plate/freeze", '{"now": true}')["error"]
    snapshot = command("snapshot")
    jpeg = probe.wait_for(f"{dev}/snapshot").payload
    assert snapshot["result"] == {"bytes": len(jpeg)}
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (24, 32, 3)
    assert [name for name, _ in api.commands] == ["plate/capture", "background/set"]
    assert probe.on(f"{dev}/state")[-1].json()["commands"] == 2


def test_a_flood_beyond_the_queue_is_answered_busy_and_the_rest_served(
    device: tuple[StandInApi, Probe, str],
) -> None:
    api, probe, dev = device
    api.gate.clear()  # the daemon is stuck in the first request
    for index in range(REQUEST_SLOTS + 8):
        probe.publish(f"{dev}/cmd/plate/clear", json.dumps({"id": index}))
    results = wait_until(
        lambda: len(probe.on(f"{dev}/cmd/result")) == 8 and probe.on(f"{dev}/cmd/result")
    )
    assert [m.json()["id"] for m in results] == list(range(REQUEST_SLOTS, REQUEST_SLOTS + 8))
    assert all("too many requests" in m.json()["error"] for m in results)
    api.gate.set()
    wait_until(lambda: len(probe.on(f"{dev}/cmd/result")) == REQUEST_SLOTS + 8, what="all answers")
    assert len(api.commands) == REQUEST_SLOTS
    assert api.control.status()["busy_refusals"] == 8


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_retained_commands_are_refused_not_executed(
    broker: Broker, tmp_path: Path, protocol: str
) -> None:
    mqtt = broker.mqtt_config(device_id="dev1", protocol=protocol)
    with Probe(broker, "edge-matte/#") as probe:
        probe.publish("edge-matte/dev1/cmd/restart", b"{}", retain=True)
        with running(tmp_path, mqtt) as api:
            answer = probe.wait_for("edge-matte/dev1/cmd/result").json()
            assert answer["ok"] is False and "retained" in answer["error"]
            assert api.commands == []


def test_group_commands_for_own_group_act_and_others_never_arrive(
    device: tuple[StandInApi, Probe, str],
) -> None:
    api, probe, dev = device
    assert probe.request(
        "edge-matte/group/lobby/cmd/plate/capture", "{}", f"{dev}/cmd/result"
    ).json()["ok"]
    probe.publish("edge-matte/group/hall/cmd/plate/clear", "{}")
    probe.publish("edge-matte/group/hall/config/set", '{"compose": {"mode": "blur"}}')
    # Requests are answered in order: once this one is, the two above were dropped or done.
    probe.request(f"{dev}/cmd/plate/freeze", "{}", f"{dev}/cmd/result")
    assert [name for name, _ in api.commands] == ["plate/capture", "plate/freeze"]
    assert len(probe.on(f"{dev}/cmd/result")) == 2
    assert probe.on(f"{dev}/config/result") == [] and api.config().compose.mode == "replace"
    answer = probe.request(
        "edge-matte/group/lobby/config/set", '{"compose": {"mode": "blur"}}', f"{dev}/config/result"
    )
    assert answer.json()["ok"] and api.config().compose.mode == "blur"


def test_broker_crash_reconnect_republishes_and_bounds_queued_events(
    broker: Broker, tmp_path: Path
) -> None:
    mqtt = broker.mqtt_config(device_id="dev1")
    with running(tmp_path, mqtt) as api:
        with Probe(broker, "edge-matte/dev1/availability") as before:
            online(before, mqtt)
        broker.kill()
        wait_until(lambda: not api.control.status()["connected"], what="disconnect noticed")
        for index in range(500):
            api.control.publish_event(Event("test.offline", f"event {index}"))
        broker.start()
        with Probe(broker, "edge-matte/#") as probe:
            online(probe, mqtt)
            assert probe.wait_for("edge-matte/dev1/state").json()["pipeline"] == "running"
            assert retained(broker, "edge-matte/dev1/state").json()["pipeline"] == "running"
            events = [m.json()["message"] for m in probe.on("edge-matte/dev1/events")]
            assert events == [f"event {index}" for index in range(400, 500)]
            assert probe.request(
                "edge-matte/dev1/cmd/plate/capture", "{}", "edge-matte/dev1/cmd/result"
            ).json()["ok"]


def test_unreachable_broker_does_not_block_and_is_joined_when_it_appears(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    mqtt = broker.mqtt_config(device_id="dev1")
    with running(tmp_path, mqtt) as api:
        error = wait_until(lambda: api.control.status()["error"], what="connect error")
        assert "Connection refused" in error and str(broker.port) in error
        with broker, Probe(broker, "edge-matte/dev1/availability") as probe:
            online(probe, mqtt)
            status = api.control.status()
            assert status["connected"] and status["error"] is None


def test_stop_says_stopping_then_offline(broker: Broker, tmp_path: Path) -> None:
    mqtt = broker.mqtt_config(device_id="dev1")
    with Probe(broker, "edge-matte/dev1/availability") as probe:
        with running(tmp_path, mqtt):
            online(probe, mqtt)
        probe.wait_for("edge-matte/dev1/availability", lambda m: m.payload == b"offline")
        assert [m.payload for m in probe.messages][-2:] == [b"stopping", b"offline"]
    assert retained(broker, "edge-matte/dev1/availability").payload == b"offline"


def test_will_says_offline_when_the_client_is_killed(broker: Broker, tmp_path: Path) -> None:
    mqtt = broker.mqtt_config(device_id="dev9", protocol="5")
    config_path = tmp_path / "control.yaml"
    save_config(Config(mqtt=mqtt), config_path)
    with Probe(broker, "edge-matte/dev9/availability") as probe:
        process = subprocess.Popen([sys.executable, __file__, str(config_path)])
        try:
            online(probe, mqtt)
        finally:
            process.kill()
            process.wait()
        probe.wait_for("edge-matte/dev9/availability", lambda m: m.payload == b"offline")
    assert retained(broker, "edge-matte/dev9/availability").payload == b"offline"


def test_password_auth_reports_refusal_and_acl_limits_topics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = "user device\ntopic readwrite edge-matte/dev1/#\n\nuser probe\ntopic readwrite #\n"
    users = {"device": "right-pw", "probe": "probe-pw"}
    with Broker(tmp_path / "broker", users=users, acl=acl) as broker:
        wrong = broker.mqtt_config(device_id="dev1", username="device", password="wrong-pw")
        with caplog.at_level(logging.ERROR), running(tmp_path / "wrong", wrong) as api:
            error = wait_until(lambda: api.control.status()["error"], what="auth refusal")
        assert "refused the connection: Not authorized (check mqtt.username" in error
        assert error in caplog.text
        secret = tmp_path / "mqtt-password"
        secret.write_text("right-pw\n")
        right = broker.mqtt_config(
            device_id="dev1", group="lobby", username="device", password_file=secret
        )
        with (
            Probe(broker, "edge-matte/#", username="probe", password="probe-pw") as probe,
            running(tmp_path / "right", right) as api,
        ):
            online(probe, right)
            probe.publish(
                "edge-matte/group/lobby/cmd/plate/clear", "{}"
            )  # the ACL hides group topics
            probe.request("edge-matte/dev1/cmd/plate/capture", "{}", "edge-matte/dev1/cmd/result")
            assert [name for name, _ in api.commands] == ["plate/capture"]


def test_config_set_keeps_an_inline_broker_password(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker", users={"device": "right-pw"}) as broker:
        mqtt = broker.mqtt_config(device_id="dev1", username="device", password="right-pw")
        with running(tmp_path, mqtt) as api:
            wait_until(lambda: api.control.status()["connected"], what="connected")
            with Probe(broker, "edge-matte/#", username="device", password="right-pw") as probe:
                probe.request(
                    "edge-matte/dev1/config/set",
                    '{"log_level": "DEBUG"}',
                    "edge-matte/dev1/config/result",
                )
            assert config_mod.load(api.path).mqtt.password.get_secret_value() == "right-pw"


def test_acl_refused_publication_is_reported_with_mqtt5(tmp_path: Path) -> None:
    acl = "user device\ntopic read edge-matte/dev1/#\ntopic write edge-matte/dev1/availability\n"
    with Broker(tmp_path / "broker", users={"device": "pw"}, acl=acl) as broker:
        mqtt = broker.mqtt_config(device_id="dev1", username="device", password="pw", protocol="5")
        with running(tmp_path, mqtt) as api:
            wait_until(
                lambda: api.control.status()["refused_publications"] > 0, what="refused publication"
            )


def test_tls_with_generated_ca_and_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with Broker(tmp_path / "broker", tls=tls) as broker:
        mqtt = broker.mqtt_config(device_id="dev1")
        with Probe(broker, "edge-matte/#") as probe, running(tmp_path, mqtt):
            online(probe, mqtt)
            assert probe.request(
                "edge-matte/dev1/config/set",
                '{"log_level": "DEBUG"}',
                "edge-matte/dev1/config/result",
            ).json()["ok"]
        other = make_tls_files(tmp_path / "other-ca")
        untrusted = broker.mqtt_config(
            device_id="dev2",
            tls={"ca_file": other.ca, "cert_file": tls.client_cert, "key_file": tls.client_key},
        )
        with running(tmp_path / "untrusted", untrusted) as api:
            error = wait_until(lambda: api.control.status()["error"], what="TLS failure")
            assert "certificate verify failed" in error


def test_config_set_of_mqtt_settings_reconnects_and_moves_topics(
    device: tuple[StandInApi, Probe, str], broker: Broker
) -> None:
    api, probe, dev = device
    probe.request(
        f"{dev}/config/set", '{"mqtt": {"telemetry_interval_s": 0.2}}', f"{dev}/config/result"
    )
    probe.wait_for(f"{dev}/telemetry", lambda m: m.json()["stages"]["output"]["fps"] == 25.0)
    answer = probe.request(
        f"{dev}/config/set", '{"id": "move", "mqtt": {"device_id": "dev2"}}', f"{dev}/config/result"
    )
    assert answer.json() == {"id": "move", "ok": True, "errors": []}
    probe.wait_for("edge-matte/dev2/availability", lambda m: m.payload == b"online")
    assert config_mod.load(api.path).mqtt.device_id == "dev2"
    assert retained(broker, "edge-matte/dev1/availability").payload == b"offline"
    assert probe.request(
        "edge-matte/dev2/cmd/plate/capture", "{}", "edge-matte/dev2/cmd/result"
    ).json()["ok"]
    with Probe(broker, "edge-matte/dev1/#", "sync") as fresh:
        fresh.publish("sync", "x")
        fresh.wait_for("sync")  # every retained message for dev1 was delivered before this
        assert {m.topic for m in fresh.messages} == {"edge-matte/dev1/availability", "sync"}


def _serve(config_path: Path) -> None:
    """Script mode: run one control until killed."""
    config = config_mod.load(config_path)
    api = StandInApi(config, config_path)
    MqttControl(config.mqtt, api).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
