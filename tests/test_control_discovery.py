"""Home Assistant discovery against a real Mosquitto: entities announced, valid by Home
Assistant's own rules (tests/ha_discovery_rules.py), usable, fed by the real daemon, and removed.
Templates are rendered with Jinja2, as Home Assistant renders them, on real state/telemetry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import jinja2
import numpy as np
import pytest
from fault_tools import running as daemon_running
from fault_tools import small_config
from ha_discovery_rules import problems
from mqtt_broker import Broker, Probe, retained
from test_control_mqtt import online, running
from waiting import wait_until

from edge_matte.config.schema import MqttConfig
from edge_matte.control import discovery
from edge_matte.control.retained import fit_jpeg
from edge_matte.control.topics import Topics
from edge_matte.events import KINDS
from edge_matte.runtime.daemon import Daemon

DISCOVERY = "homeassistant/+/edge_matte_dev1/+/config"
TEMPLATES = jinja2.Environment()


def entity(probe: Probe, component: str, name: str) -> dict:
    return probe.wait_for(f"homeassistant/{component}/edge_matte_dev1/{name}/config").json()


def render(template: str, payload: dict[str, Any]) -> str:
    return TEMPLATES.from_string(template).render(value_json=payload, value=json.dumps(payload))


def announced(mqtt: MqttConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """object id -> (component, payload) of every entity announced under `mqtt`."""
    result = {}
    for topic, payload in discovery.messages(mqtt, Topics.from_config(mqtt)):
        if payload:
            _, component, _, name, _ = topic.split("/")
            result[name] = (component, json.loads(payload))
    return result


def test_every_entity_follows_home_assistants_rules() -> None:
    mqtt = MqttConfig(
        device_id="dev1", homeassistant=True, image_interval_s=5, configuration_url="http://x/"
    )
    entities = announced(mqtt)
    assert len(entities) == 17
    for name, (component, payload) in entities.items():
        assert problems(component, payload) == [], name
        assert payload["origin"]["name"] == "edge-matte" and payload["origin"]["sw_version"]
        device = payload["device"]
        assert device["manufacturer"] and device["sw_version"]
        assert device["configuration_url"] == "http://x/"
    for name in ("fps", "source_fps", "latency_p95", "temperature", "source_connected"):
        assert entities[name][1]["entity_category"] == "diagnostic", name
    latency = entities["latency_p95"][1]
    assert (latency["device_class"], latency["unit_of_measurement"]) == ("duration", "ms")
    assert entities["plate_state"][1]["device_class"] == "enum"
    assert entities["restart"][1]["device_class"] == "restart"
    assert set(entities["events"][1]["event_types"]) == set(KINDS)
    kinds = {entities[n][0] for n in ("source_connected", "degraded", "person_present", "problem")}
    assert kinds == {"binary_sensor"}
    assert "image" not in announced(mqtt.model_copy(update={"image_interval_s": 0}))


@pytest.mark.parametrize(
    ("component", "payload", "broken"),
    [
        ("sensor", {"stat_t": "s", "dev_cla": "latency"}, "sensor device_class 'latency'"),
        ("sensor", {"stat_t": "s", "dev_cla": "duration", "unit_of_meas": "fps"}, "unit 'fps'"),
        ("sensor", {"stat_t": "s", "ops": ["a"]}, "options without device_class enum"),
        ("sensor", {"stat_t": "s", "ent_cat": "config"}, "invalid for sensor"),
        ("binary_sensor", {"val_tpl": "x"}, "missing state_topic"),
        ("button", {"cmd_t": "c", "dev": {"name": "d"}, "uniq_id": "u"}, "without identifiers"),
        ("image", {"img_t": "i", "url_topic": "u"}, "exactly one of"),
        ("event", {"stat_t": "s"}, "missing event_types"),
        ("sensor", {"stat_t": "s", "o": {"sw": "1"}}, "origin without name"),
        ("sensor", {"stat_t": "s", "colour": "red"}, "unknown key colour"),
    ],
)
def test_the_rules_catch_what_home_assistant_refuses(
    component: str, payload: dict[str, Any], broken: str
) -> None:
    assert any(broken in problem for problem in problems(component, payload))


def test_entities_are_announced_work_and_are_removed_when_disabled(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        mqtt = broker.mqtt_config(device_id="dev1", homeassistant=True)
        with Probe(broker, "edge-matte/#", DISCOVERY) as probe, running(tmp_path, mqtt) as api:
            online(probe, mqtt)
            configs = {
                m.topic
                for m in probe.messages
                if m.topic.startswith("homeassistant/") and m.payload
            }
            assert len(configs) == 16  # no image: it is off
            select, button = (
                entity(probe, "select", "compose_mode"),
                entity(probe, "button", "plate_capture"),
            )
            switch = entity(probe, "switch", "plate_auto_refresh")

            command = select["command_template"].replace("{{ value }}", "blur")
            assert probe.request(
                select["command_topic"], command, "edge-matte/dev1/config/result"
            ).json()["ok"]
            assert api.config().compose.mode == "blur"
            assert probe.request(
                button["command_topic"], button["payload_press"], "edge-matte/dev1/cmd/result"
            ).json()["ok"]
            restart = entity(probe, "button", "restart")
            assert probe.request(
                restart["command_topic"], restart["payload_press"], "edge-matte/dev1/cmd/result"
            ).json()["ok"]
            for payload in (switch["payload_off"], switch["payload_on"]):
                probe.request(switch["command_topic"], payload, "edge-matte/dev1/cmd/result")
            refused = probe.request(
                switch["command_topic"], "MAYBE", "edge-matte/dev1/cmd/result"
            ).json()
            assert refused["ok"] is False and "ON or OFF" in refused["error"]
            assert [name for name, _ in api.commands] == [
                "plate/capture",
                "restart",
                "plate/freeze",
                "plate/unfreeze",
            ]

            fps_topic = "homeassistant/sensor/edge_matte_dev1/fps/config"
            probe.publish("homeassistant/status", "online")
            probe.request(
                "edge-matte/dev1/cmd/plate/clear", "{}", "edge-matte/dev1/cmd/result"
            )  # after the re-send
            assert len(probe.on(fps_topic)) == 2

            disable = '{"mqtt": {"homeassistant": false}}'
            assert probe.request(
                "edge-matte/dev1/config/set", disable, "edge-matte/dev1/config/result"
            ).json()["ok"]
            probe.wait_for(fps_topic, lambda m: m.payload == b"")
        with Probe(broker, DISCOVERY, "sync") as fresh:
            fresh.publish("sync", "x")
            fresh.wait_for("sync")  # retained discovery, if any, arrived before this
            assert [m.topic for m in fresh.messages] == ["sync"]


def test_templates_render_the_real_daemons_state_and_telemetry(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        mqtt = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "device_id": "dev1"}
        mqtt |= {"homeassistant": True, "telemetry_interval_s": 0.3, "image_interval_s": 0.5}
        mqtt |= {"image_max_bytes": 10_000}
        daemon = Daemon(small_config(tmp_path, mqtt=mqtt))
        with Probe(broker, "edge-matte/#", DISCOVERY) as probe, daemon_running(daemon):
            telemetry = probe.wait_for("edge-matte/dev1/telemetry").json()
            state = retained(broker, "edge-matte/dev1/state").json()
            for name, (component, config) in announced(daemon.config().mqtt).items():
                source = {"edge-matte/dev1/telemetry": telemetry, "edge-matte/dev1/state": state}
                payload = source.get(config.get("state_topic"))
                if payload is None:
                    continue
                value = render(config["value_template"], payload)
                for item in config.get("availability", [])[1:]:
                    available = render(item["value_template"], payload)
                    assert available in ("online", "offline"), name
                    if available == "offline":
                        value = None  # Home Assistant shows "unavailable", never "None"
                assert value != "None", name
                if component == "binary_sensor":
                    assert value in (config["payload_on"], config["payload_off"]), name
                if config.get("device_class") == "enum":
                    assert value in config["options"], name
            assert render(announced(daemon.config().mqtt)["fps"][1]["value_template"], telemetry)
            events = announced(daemon.config().mqtt)["events"][1]
            fired = json.loads(
                render(events["value_template"], {"kind": "plate.captured", "message": "m"})
            )
            assert fired["event_type"] in events["event_types"]

            image = probe.wait_for("edge-matte/dev1/image", lambda m: len(m.payload) > 0)
            assert len(image.payload) <= 10_000
            decoded = cv2.imdecode(np.frombuffer(image.payload, np.uint8), cv2.IMREAD_COLOR)
            assert decoded is not None
            assert retained(broker, "edge-matte/dev1/image").retain
            assert wait_until(lambda: len(probe.on("edge-matte/dev1/image")) >= 2)


def test_retained_image_is_scaled_down_to_fit_its_cap() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    jpeg = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert len(jpeg) > 100_000
    fitted = fit_jpeg(jpeg, 20_000)
    assert fitted is not None and len(fitted) <= 20_000
    assert cv2.imdecode(np.frombuffer(fitted, np.uint8), cv2.IMREAD_COLOR).shape[1] < 640
    assert fit_jpeg(jpeg, len(jpeg)) == jpeg  # within the cap: untouched
