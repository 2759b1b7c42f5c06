"""Home Assistant MQTT discovery rules, written down from Home Assistant's own source, so the
device's discovery payloads are checked the way Home Assistant would read them.

Where each rule comes from (home-assistant/core, homeassistant/components/...). Read from stored
copies of the source: mqtt/abbreviations.py, mqtt/image.py, mqtt/event.py, sensor/const.py. The
rest (binary_sensor/button/event device classes, entity categories, the origin schema, the
`o`/`cont_type`/`evt_typ`/`img_t` abbreviations of releases newer than the stored
abbreviations.py) is written from those same files as released, not re-read here.
- mqtt/abbreviations.py: ABBREVIATIONS and DEVICE_ABBREVIATIONS (the subset used here is copied
  below; a payload may use either form, discovery expands the short one). `o` (origin) and its
  keys `name`/`sw`/`url` are expanded the same way (ORIGIN_ABBREVIATIONS in newer releases).
- mqtt/discovery.py: a payload with a `device` must carry `identifiers` or `connections`;
  `origin` needs a `name` (MQTT_ORIGIN_INFO_SCHEMA).
- mqtt/sensor.py, binary_sensor.py, event.py, image.py, button.py, select.py, switch.py: the
  required keys of each platform (state_topic; command_topic; options for select; event_types for
  event; exactly one of image_topic/url_topic for image, content_type only with image_topic).
- sensor/const.py: SensorDeviceClass, SensorStateClass and DEVICE_CLASS_UNITS (duration: d, h,
  min, s, ms, µs; temperature: °C, °F, K); sensor/__init__.py: `options` only with device class
  `enum`, which takes no unit and no state class.
- binary_sensor/__init__.py BinarySensorDeviceClass; button/__init__.py ButtonDeviceClass;
  event/__init__.py EventDeviceClass; helpers/entity.py EntityCategory (config, diagnostic); MQTT
  sensors and binary sensors refuse entity_category `config`.
- mqtt/const.py + mqtt/mixins.py: availability is either `availability_topic` or an
  `availability` list of {topic, payload_available, payload_not_available, value_template};
  availability_mode is one of all, any, latest.
"""

from __future__ import annotations

from typing import Any

ABBREVIATIONS = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "cont_type": "content_type",
    "dev": "device",
    "dev_cla": "device_class",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "evt_typ": "event_types",
    "ic": "icon",
    "img_t": "image_topic",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "name": "name",
    "o": "origin",
    "obj_id": "object_id",
    "ops": "options",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_prs": "payload_press",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {
    "cns": "connections",
    "cu": "configuration_url",
    "ids": "identifiers",
    "name": "name",
    "mf": "manufacturer",
    "mdl": "model",
    "hw": "hw_version",
    "sw": "sw_version",
    "sa": "suggested_area",
}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}

SENSOR_DEVICE_CLASSES = {
    "date", "enum", "timestamp", "apparent_power", "aqi", "area", "atmospheric_pressure",
    "battery", "blood_glucose_concentration", "carbon_monoxide", "carbon_dioxide",
    "conductivity", "current", "data_rate", "data_size", "distance", "duration", "energy",
    "energy_distance", "energy_storage", "frequency", "gas", "humidity", "illuminance",
    "irradiance", "moisture", "monetary", "nitrogen_dioxide", "nitrogen_monoxide",
    "nitrous_oxide", "ozone", "ph", "pm1", "pm10", "pm25", "power_factor", "power",
    "precipitation", "precipitation_intensity", "pressure", "reactive_power", "signal_strength",
    "sound_pressure", "speed", "sulphur_dioxide", "temperature", "volatile_organic_compounds",
    "volatile_organic_compounds_parts", "voltage", "volume", "volume_storage",
    "volume_flow_rate", "water", "weight", "wind_direction", "wind_speed",
}  # fmt: skip
SENSOR_UNITS = {"duration": {"d", "h", "min", "s", "ms", "µs"}, "temperature": {"°C", "°F", "K"}}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
}  # fmt: skip
BUTTON_DEVICE_CLASSES = {"identify", "restart", "update"}
EVENT_DEVICE_CLASSES = {"button", "doorbell", "motion"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
AVAILABILITY_MODES = {"all", "any", "latest"}

COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "payload_available", "payload_not_available", "device", "enabled_by_default",
    "entity_category", "icon", "json_attributes_topic", "json_attributes_template", "name",
    "object_id", "origin", "qos", "encoding", "unique_id", "entity_picture",
}  # fmt: skip
PLATFORM_KEYS = {
    "sensor": {"state_topic", "value_template", "device_class", "state_class",
               "unit_of_measurement", "options", "expire_after", "force_update",
               "suggested_display_precision"},
    "binary_sensor": {"state_topic", "value_template", "device_class", "payload_on",
                      "payload_off", "expire_after", "force_update", "off_delay"},
    "button": {"command_topic", "command_template", "payload_press", "device_class", "retain"},
    "select": {"state_topic", "command_topic", "command_template", "value_template", "options",
               "optimistic", "retain"},
    "switch": {"state_topic", "command_topic", "value_template", "payload_on", "payload_off",
               "state_on", "state_off", "device_class", "optimistic", "retain"},
    "event": {"state_topic", "value_template", "event_types", "device_class"},
    "image": {"image_topic", "url_topic", "url_template", "content_type", "image_encoding"},
}  # fmt: skip
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "button": {"command_topic"},
    "select": {"command_topic", "options"},
    "switch": {"command_topic"},
    "event": {"state_topic", "event_types"},
    "image": set(),
}


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as discovery reads it: abbreviated keys replaced by their full names."""
    full = {ABBREVIATIONS.get(key, key): value for key, value in payload.items()}
    if isinstance(full.get("device"), dict):
        full["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in full["device"].items()}
    if isinstance(full.get("origin"), dict):
        full["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in full["origin"].items()}
    if isinstance(full.get("availability"), list):
        full["availability"] = [
            {ABBREVIATIONS.get(k, k): v for k, v in item.items()} for item in full["availability"]
        ]
    return full


def problems(component: str, payload: dict[str, Any]) -> list[str]:
    """Every rule above that `payload` (a discovery config of `component`) breaks."""
    entity = expand(payload)
    found = [
        f"unknown key {key}" for key in entity if key not in COMMON_KEYS | PLATFORM_KEYS[component]
    ]
    found += [f"missing {key}" for key in REQUIRED[component] if key not in entity]
    found += _device_problems(entity)
    found += _availability_problems(entity)
    category = entity.get("entity_category")
    if category is not None and category not in ENTITY_CATEGORIES:
        found.append(f"entity_category {category!r}")
    if category == "config" and component in ("sensor", "binary_sensor"):
        found.append(f"entity_category config is invalid for {component}")
    found += _CLASS_CHECKS.get(component, lambda _: [])(entity)
    return found


def _device_problems(entity: dict[str, Any]) -> list[str]:
    found = []
    device = entity.get("device")
    if device is not None:
        if "unique_id" not in entity:
            found.append("device without unique_id")
        if not (device.get("identifiers") or device.get("connections")):
            found.append("device without identifiers or connections")
    origin = entity.get("origin")
    if origin is not None and not origin.get("name"):
        found.append("origin without name")
    return found


def _availability_problems(entity: dict[str, Any]) -> list[str]:
    found = []
    if "availability" in entity and "availability_topic" in entity:
        found.append("availability and availability_topic together")
    for item in entity.get("availability", []):
        if "topic" not in item:
            found.append("availability item without topic")
    mode = entity.get("availability_mode")
    if mode is not None and mode not in AVAILABILITY_MODES:
        found.append(f"availability_mode {mode!r}")
    return found


def _sensor_problems(entity: dict[str, Any]) -> list[str]:
    found = []
    device_class = entity.get("device_class")
    if device_class is not None and device_class not in SENSOR_DEVICE_CLASSES:
        found.append(f"sensor device_class {device_class!r}")
    state_class = entity.get("state_class")
    if state_class is not None and state_class not in STATE_CLASSES:
        found.append(f"state_class {state_class!r}")
    unit = entity.get("unit_of_measurement")
    if device_class in SENSOR_UNITS and unit not in SENSOR_UNITS[device_class]:
        found.append(f"unit {unit!r} for device_class {device_class}")
    if "options" in entity and device_class != "enum":
        found.append("options without device_class enum")
    if device_class == "enum" and (
        unit is not None or state_class is not None or "options" not in entity
    ):
        found.append("enum sensor needs options and takes no unit or state_class")
    return found


def _class_in(allowed: set[str], kind: str) -> Any:
    def check(entity: dict[str, Any]) -> list[str]:
        device_class = entity.get("device_class")
        if device_class is not None and device_class not in allowed:
            return [f"{kind} device_class {device_class!r}"]
        return []

    return check


def _image_problems(entity: dict[str, Any]) -> list[str]:
    topics = [key for key in ("image_topic", "url_topic") if key in entity]
    found = [] if len(topics) == 1 else ["image needs exactly one of image_topic, url_topic"]
    if "content_type" in entity and "url_topic" in entity:
        found.append("content_type with url_topic")
    return found


_CLASS_CHECKS = {
    "sensor": _sensor_problems,
    "binary_sensor": _class_in(BINARY_SENSOR_DEVICE_CLASSES, "binary_sensor"),
    "button": _class_in(BUTTON_DEVICE_CLASSES, "button"),
    "event": _class_in(EVENT_DEVICE_CLASSES, "event"),
    "image": _image_problems,
}
