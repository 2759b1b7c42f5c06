"""Every MQTT topic and command name of one device, in one place.

Device topics live under `<prefix>/<device_id>/`; fleet topics under `<prefix>/group/<group>/`.
The constants below are paths relative to either base; `Topics` turns them into full topics for
one device. Incoming topics are reduced to such a relative path (`config/set`,
`cmd/plate/capture`) so handlers never see which base a message came through.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_matte.config.schema import MqttConfig

# Published by the device (relative to its base).
AVAILABILITY = "availability"
STATE = "state"
TELEMETRY = "telemetry"
CONFIG = "config"
EVENTS = "events"
SNAPSHOT = "snapshot"
IMAGE = "image"
CONFIG_RESULT = "config/result"
CMD_RESULT = "cmd/result"

# Requests to the device (relative to its base or its group's).
CONFIG_SET = "config/set"
CMD_PREFIX = "cmd/"
AUTO_REFRESH_SET = "plate/auto_refresh/set"  # Home Assistant switch (ON/OFF)

# Command names, requested on `cmd/<name>`.
PLATE_CAPTURE = "plate/capture"
PLATE_FREEZE = "plate/freeze"
PLATE_UNFREEZE = "plate/unfreeze"
PLATE_CLEAR = "plate/clear"
BACKGROUND_SET = "background/set"
RESTART = "restart"
SNAPSHOT_COMMAND = "snapshot"  # answered by the control itself (`ControlApi.snapshot_jpeg`)

# What `ControlApi.command` executes; every command is one of these or SNAPSHOT_COMMAND.
DAEMON_COMMANDS = (
    PLATE_CAPTURE,
    PLATE_FREEZE,
    PLATE_UNFREEZE,
    PLATE_CLEAR,
    BACKGROUND_SET,
    RESTART,
)
COMMANDS = (*DAEMON_COMMANDS, SNAPSHOT_COMMAND)


def command_topic(name: str) -> str:
    """The relative topic that requests command `name`."""
    return CMD_PREFIX + name


@dataclass(frozen=True)
class Topics:
    """Topic names for one device (and its fleet group, if any)."""

    base: str
    group_base: str | None = None
    discovery_prefix: str | None = None  # None: Home Assistant discovery is off

    @classmethod
    def from_config(cls, mqtt: MqttConfig) -> Topics:
        group = f"{mqtt.topic_prefix}/group/{mqtt.group}" if mqtt.group else None
        discovery = mqtt.discovery_prefix if mqtt.homeassistant else None
        return cls(f"{mqtt.topic_prefix}/{mqtt.device_id}", group, discovery)

    def at(self, relative: str) -> str:
        """The device's full topic for a path relative to its base (one of the constants)."""
        return f"{self.base}/{relative}"

    @property
    def availability(self) -> str:
        return self.at(AVAILABILITY)

    @property
    def state(self) -> str:
        return self.at(STATE)

    @property
    def telemetry(self) -> str:
        return self.at(TELEMETRY)

    @property
    def config(self) -> str:
        return self.at(CONFIG)

    @property
    def snapshot(self) -> str:
        return self.at(SNAPSHOT)

    @property
    def image(self) -> str:
        """Retained JPEG of the composite for Home Assistant's image entity (when enabled)."""
        return self.at(IMAGE)

    @property
    def events(self) -> str:
        return self.at(EVENTS)

    @property
    def ha_status(self) -> str | None:
        """Home Assistant announces `online` here after it starts: discovery is re-sent."""
        return None if self.discovery_prefix is None else f"{self.discovery_prefix}/status"

    def subscriptions(self) -> list[str]:
        """Filters to subscribe to on every (re)connect."""
        filters = [self.at(CONFIG_SET), self.at(f"{CMD_PREFIX}#")]
        if self.group_base is not None:
            filters += [f"{self.group_base}/{CONFIG_SET}", f"{self.group_base}/{CMD_PREFIX}#"]
        if self.ha_status is not None:
            filters += [self.at(AUTO_REFRESH_SET), self.ha_status]
        return filters

    def route(self, topic: str) -> str | None:
        """The path of `topic` relative to this device's or group's base; None if neither."""
        for base in (self.base, self.group_base):
            if base is not None and topic.startswith(base + "/"):
                return topic[len(base) + 1 :]
        return None
