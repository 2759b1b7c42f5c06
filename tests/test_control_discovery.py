"""Home Assistant discovery against a real Mosquitto: entities announced, usable, and removed."""

from __future__ import annotations

import json
from pathlib import Path

from mqtt_broker import Broker, Probe
from test_control_mqtt import online, running

DISCOVERY = "homeassistant/+/edge_matte_dev1/+/config"


def entity(probe: Probe, component: str, name: str) -> dict:
    return probe.wait_for(f"homeassistant/{component}/edge_matte_dev1/{name}/config").json()


def test_entities_are_announced_work_and_are_removed_when_disabled(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        mqtt = broker.mqtt_config(device_id="dev1", homeassistant=True)
        with Probe(broker, "edge-matte/#", DISCOVERY) as probe, running(tmp_path, mqtt) as api:
            online(probe, mqtt)
            assert (
                len({m.topic for m in probe.messages if m.topic.startswith("homeassistant/")}) == 6
            )
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
            for payload in (switch["payload_off"], switch["payload_on"]):
                probe.request(switch["command_topic"], payload, "edge-matte/dev1/cmd/result")
            refused = probe.request(
                switch["command_topic"], "MAYBE", "edge-matte/dev1/cmd/result"
            ).json()
            assert refused["ok"] is False and "ON or OFF" in refused["error"]
            assert [name for name, _ in api.commands] == [
                "plate/capture",
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


def test_sensor_templates_read_keys_the_telemetry_has(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        mqtt = broker.mqtt_config(device_id="dev1", homeassistant=True, telemetry_interval_s=0.2)
        with Probe(broker, "edge-matte/#", DISCOVERY) as probe, running(tmp_path, mqtt):
            telemetry = probe.wait_for("edge-matte/dev1/telemetry").json()
            for name in ("fps", "latency_p95", "temperature"):
                template = entity(probe, "sensor", name)["value_template"]
                path = template.removeprefix("{{ value_json.").removesuffix(" }}").split(".")
                value = telemetry
                for key in path:
                    value = value[key]
                assert value is None or isinstance(value, float), (name, value)
            assert (
                json.loads(probe.wait_for("edge-matte/dev1/state").payload)["compose_mode"]
                == "replace"
            )
