"""Home Assistant MQTT discovery: the device's sensors, select, button and switch.

Each entity is one retained message on `<discovery_prefix>/<component>/<node>/<object>/config`;
an empty retained payload on the same topic removes it, so disabling discovery (or moving the
device) leaves no stale entities behind. Entities read the device's own state/telemetry topics
and write its ordinary request topics, so Home Assistant needs no special handling.
"""

from __future__ import annotations

import json
from typing import Any, get_args

from .. import __version__
from ..config import ComposeConfig, MqttConfig
from .topics import AUTO_REFRESH_SET, CMD_PREFIX, CONFIG_SET, Topics

# object id -> (component, entity config with topics relative to the device base)
_ENTITIES: dict[str, tuple[str, dict[str, Any]]] = {
    "fps": (
        "sensor",
        {
            "name": "Output FPS",
            "state_topic": "telemetry",
            "unit_of_measurement": "fps",
            "value_template": "{{ value_json.stages.output.fps }}",
            "state_class": "measurement",
        },
    ),
    "latency_p95": (
        "sensor",
        {
            "name": "Latency p95",
            "state_topic": "telemetry",
            "unit_of_measurement": "ms",
            "value_template": "{{ value_json.latency.p95_ms }}",
            "state_class": "measurement",
        },
    ),
    "temperature": (
        "sensor",
        {
            "name": "Temperature",
            "state_topic": "telemetry",
            "unit_of_measurement": "°C",
            "device_class": "temperature",
            "state_class": "measurement",
            "value_template": "{{ value_json.temperature_c }}",
        },
    ),
    "compose_mode": (
        "select",
        {
            "name": "Composite mode",
            "state_topic": "state",
            "command_topic": CONFIG_SET,
            "value_template": "{{ value_json.compose_mode }}",
            "command_template": '{"compose": {"mode": "{{ value }}"}}',
            "options": list(get_args(ComposeConfig.model_fields["mode"].annotation)),
        },
    ),
    "plate_capture": (
        "button",
        {
            "name": "Capture plate",
            "command_topic": f"{CMD_PREFIX}plate/capture",
            "payload_press": "{}",
        },
    ),
    "plate_auto_refresh": (
        "switch",
        {
            "name": "Plate auto-refresh",
            "state_topic": "state",
            "command_topic": AUTO_REFRESH_SET,
            "value_template": "{{ 'OFF' if value_json.plate_frozen else 'ON' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        },
    ),
}
_TOPIC_KEYS = ("state_topic", "command_topic")


def messages(mqtt: MqttConfig, topics: Topics) -> list[tuple[str, str]]:
    """Retained (topic, payload) pairs: entity configs when enabled, removals when not."""
    if not mqtt.homeassistant:
        return removals(mqtt)
    return [(_topic(mqtt, name), _payload(mqtt, topics, name)) for name in _ENTITIES]


def removals(mqtt: MqttConfig) -> list[tuple[str, str]]:
    """Empty retained payloads deleting every entity announced under these settings."""
    return [(_topic(mqtt, name), "") for name in _ENTITIES]


def _topic(mqtt: MqttConfig, name: str) -> str:
    component = _ENTITIES[name][0]
    return f"{mqtt.discovery_prefix}/{component}/edge_matte_{mqtt.device_id}/{name}/config"


def _payload(mqtt: MqttConfig, topics: Topics, name: str) -> str:
    entity = dict(_ENTITIES[name][1])
    for key in _TOPIC_KEYS:
        if key in entity:
            entity[key] = f"{topics.base}/{entity[key]}"
    entity.update(
        {
            "unique_id": f"edge_matte_{mqtt.device_id}_{name}",
            "availability_topic": topics.availability,
            "device": {
                "identifiers": [f"edge_matte_{mqtt.device_id}"],
                "name": f"edge-matte {mqtt.device_id}",
                "model": "edge-matte",
                "sw_version": __version__,
            },
        }
    )
    return json.dumps(entity, ensure_ascii=False)
