"""Every MQTT topic of one device, derived from its config in one place.

Device topics live under `<prefix>/<device_id>/`; fleet topics under `<prefix>/group/<group>/`.
Incoming topics are reduced to a path relative to either base (`config/set`, `cmd/plate/capture`)
so handlers never see which base a message came through.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_matte.config.schema import MqttConfig

CONFIG_SET = "config/set"
CMD_PREFIX = "cmd/"
CMD_RESULT = "cmd/result"
AUTO_REFRESH_SET = "plate/auto_refresh/set"  # Home Assistant switch (ON/OFF)


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

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def config(self) -> str:
        return f"{self.base}/config"

    @property
    def config_result(self) -> str:
        return f"{self.base}/config/result"

    @property
    def cmd_result(self) -> str:
        return f"{self.base}/{CMD_RESULT}"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def image(self) -> str:
        """Retained JPEG of the composite for Home Assistant's image entity (when enabled)."""
        return f"{self.base}/image"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def ha_status(self) -> str | None:
        """Home Assistant announces `online` here after it starts: discovery is re-sent."""
        return None if self.discovery_prefix is None else f"{self.discovery_prefix}/status"

    def subscriptions(self) -> list[str]:
        """Filters to subscribe to on every (re)connect."""
        filters = [f"{self.base}/{CONFIG_SET}", f"{self.base}/{CMD_PREFIX}#"]
        if self.group_base is not None:
            filters += [f"{self.group_base}/{CONFIG_SET}", f"{self.group_base}/{CMD_PREFIX}#"]
        if self.ha_status is not None:
            filters += [f"{self.base}/{AUTO_REFRESH_SET}", self.ha_status]
        return filters

    def route(self, topic: str) -> str | None:
        """The path of `topic` relative to this device's or group's base; None if neither."""
        for base in (self.base, self.group_base):
            if base is not None and topic.startswith(base + "/"):
                return topic[len(base) + 1 :]
        return None
