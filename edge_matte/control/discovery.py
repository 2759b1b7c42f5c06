"""Home Assistant MQTT discovery: the device's sensors, binary sensors, controls, events, image.

Each entity is one retained message on `<discovery_prefix>/<component>/<node>/<object>/config`;
an empty retained payload on the same topic removes it, so disabling discovery (or moving the
device, or turning the image off) leaves no stale entities behind. Entities read the device's own
state/telemetry/events topics and write its ordinary request topics, so Home Assistant needs no
special handling. Figures that can be missing (no thermal zone, no frame yet) make their entity
unavailable rather than showing "None". Health figures are `diagnostic`; the restart button is
`config`. Full key names are used (no abbreviations), validated in tests/ha_discovery_rules.py.
"""

from __future__ import annotations

import json
from typing import Any, get_args

from edge_matte import __version__
from edge_matte.config.redact import mask
from edge_matte.config.schema import ComposeConfig, MqttConfig
from edge_matte.control.topics import (
    AUTO_REFRESH_SET,
    AVAILABILITY,
    CONFIG_SET,
    EVENTS,
    IMAGE,
    PLATE_CAPTURE,
    RESTART,
    SNAPSHOT_COMMAND,
    STATE,
    TELEMETRY,
    Topics,
    command_topic,
)
from edge_matte.events import KINDS
from edge_matte.plate import PlateState

ORIGIN = {"name": "edge-matte", "sw_version": __version__}
DIAGNOSTIC = {"entity_category": "diagnostic"}
MEASUREMENT = {"state_class": "measurement", **DIAGNOSTIC}


def _reading(name: str, key: str, unit: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """A numeric telemetry sensor; unavailable while the telemetry reports null for it."""
    return (
        "sensor",
        {
            "name": name,
            "state_topic": TELEMETRY,
            "value_template": f"{{{{ value_json.{key} }}}}",
            "unit_of_measurement": unit,
            "availability": [
                {"topic": AVAILABILITY},
                {
                    "topic": TELEMETRY,
                    "value_template": f"{{{{ 'online' if value_json.{key} is not none else 'offline' }}}}",
                },
            ],
            "availability_mode": "all",
            **MEASUREMENT,
            **extra,
        },
    )


def _flag(name: str, key: str, device_class: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """A binary sensor on a boolean of the retained state (unknown while it is null)."""
    template = f"{{{{ 'ON' if value_json.{key} else 'OFF' }}}}"
    return (
        "binary_sensor",
        {
            "name": name,
            "state_topic": STATE,
            "value_template": template,
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": device_class,
            **extra,
        },
    )


def _button(name: str, command: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return (
        "button",
        {"name": name, "command_topic": command_topic(command), "payload_press": "{}", **extra},
    )


# object id -> (component, entity config with topics relative to the device base)
_ENTITIES: dict[str, tuple[str, dict[str, Any]]] = {
    "fps": _reading("Output FPS", "output_fps", "fps"),
    "source_fps": _reading("Camera FPS", "source_fps", "fps"),
    "latency_p95": _reading("Latency p95", "latency.p95_ms", "ms", device_class="duration"),
    "temperature": _reading("Temperature", "temperature_c", "°C", device_class="temperature"),
    "plate_state": (
        "sensor",
        {
            "name": "Plate",
            "state_topic": STATE,
            "value_template": "{{ value_json.plate }}",
            "device_class": "enum",
            "options": [state.value for state in PlateState],
        },
    ),
    "engine": (
        "sensor",
        {"name": "Engine", "state_topic": STATE, "value_template": "{{ value_json.engine }}"},
    ),
    "source_connected": _flag("Camera", "source_connected", "connectivity", **DIAGNOSTIC),
    "degraded": _flag("Engine degraded", "degraded", "problem", **DIAGNOSTIC),
    "person_present": _flag("Person present", "person_present", "occupancy"),
    "problem": _flag(
        "Problem",
        "problem",
        "problem",
        json_attributes_topic=STATE,
        json_attributes_template="{{ {'problem': value_json.problem} | tojson }}",
    ),
    "compose_mode": (
        "select",
        {
            "name": "Composite mode",
            "state_topic": STATE,
            "command_topic": CONFIG_SET,
            "value_template": "{{ value_json.compose_mode }}",
            "command_template": '{"compose": {"mode": "{{ value }}"}}',
            "options": list(get_args(ComposeConfig.model_fields["mode"].annotation)),
        },
    ),
    "plate_capture": _button("Capture plate", PLATE_CAPTURE),
    "restart": _button(
        "Restart pipeline", RESTART, device_class="restart", entity_category="config"
    ),
    "snapshot": _button("Take snapshot", SNAPSHOT_COMMAND),
    "plate_auto_refresh": (
        "switch",
        {
            "name": "Plate auto-refresh",
            "state_topic": STATE,
            "command_topic": AUTO_REFRESH_SET,
            "value_template": "{{ 'OFF' if value_json.plate_frozen else 'ON' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        },
    ),
    "events": (
        "event",
        {
            "name": "Events",
            "state_topic": EVENTS,
            "event_types": list(KINDS),
            "value_template": (
                "{{ {'event_type': value_json.kind, 'message': value_json.message} | tojson }}"
            ),
        },
    ),
    "image": (
        "image",
        {"name": "Composite", "image_topic": IMAGE, "content_type": "image/jpeg"},
    ),
}
_TOPIC_KEYS = ("state_topic", "command_topic", "json_attributes_topic", "image_topic")


def messages(mqtt: MqttConfig, topics: Topics) -> list[tuple[str, str]]:
    """Retained (topic, payload) pairs: entity configs when enabled, removals when not (the
    image entity only while the retained image is published)."""
    if not mqtt.homeassistant:
        return removals(mqtt)
    return [
        (_topic(mqtt, name), _payload(mqtt, topics, name) if _announced(mqtt, name) else "")
        for name in _ENTITIES
    ]


def removals(mqtt: MqttConfig) -> list[tuple[str, str]]:
    """Empty retained payloads deleting every entity announced under these settings."""
    return [(_topic(mqtt, name), "") for name in _ENTITIES]


def _announced(mqtt: MqttConfig, name: str) -> bool:
    return name != "image" or mqtt.image_interval_s > 0


def _topic(mqtt: MqttConfig, name: str) -> str:
    component = _ENTITIES[name][0]
    return f"{mqtt.discovery_prefix}/{component}/edge_matte_{mqtt.device_id}/{name}/config"


def _payload(mqtt: MqttConfig, topics: Topics, name: str) -> str:
    entity = dict(_ENTITIES[name][1])
    for key in _TOPIC_KEYS:
        if key in entity:
            entity[key] = topics.at(entity[key])
    if "availability" in entity:
        entity["availability"] = [
            {**item, "topic": topics.at(item["topic"])} for item in entity["availability"]
        ]
    else:
        entity["availability_topic"] = topics.availability
    device = {
        "identifiers": [f"edge_matte_{mqtt.device_id}"],
        "name": f"edge-matte {mqtt.device_id}",
        "manufacturer": "edge-matte",
        "model": "background-matting appliance",
        "sw_version": __version__,
    }
    if mqtt.configuration_url:
        device["configuration_url"] = mask(mqtt.configuration_url)  # a token in its query
    entity.update(
        {"unique_id": f"edge_matte_{mqtt.device_id}_{name}", "device": device, "origin": ORIGIN}
    )
    return json.dumps(entity, ensure_ascii=False)
