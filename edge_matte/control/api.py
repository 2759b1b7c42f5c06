"""The narrow interface remote control goes through; the daemon is its one implementation.

MQTT (and any future HTTP control) only ever calls these six methods, so validation, rollback and
persistence live in one place (the daemon) and the transport stays a thin translator.
"""

from __future__ import annotations

from typing import Any, Protocol

from edge_matte.config.schema import Config
from edge_matte.control.topics import DAEMON_COMMANDS

__all__ = ["DAEMON_COMMANDS", "ControlApi"]  # the command names are spelled in `topics`


class ControlApi(Protocol):
    """What a running appliance exposes to remote control.

    Keys that Home Assistant discovery templates read (keep them stable):
    state: `compose_mode` (str), `plate_frozen`, `source_connected`, `degraded` (bool),
    `person_present` (bool or null), `plate`, `engine` (str), `problem` (str or null).
    telemetry: `output_fps`, `source_fps`, `latency.p95_ms`, `temperature_c` (the hottest
    zone; null where there is none).
    """

    def state(self) -> dict[str, Any]:
        """Pipeline state, engine, degraded, source, resolution, plate state/age, composite
        mode, config hash, version (JSON-serialisable)."""
        ...

    def telemetry(self) -> dict[str, Any]:
        """Per-stage fps, latency p50/p95, dropped frames, inference ms, RTSP clients and the
        system readings of `edge_matte.runtime.telemetry` (JSON-serialisable)."""
        ...

    def config(self) -> Config:
        """The effective config."""
        ...

    def apply_config(self, config: Config) -> None:
        """Refuse changes to device-only keys (`edge_matte.control.remote`), save the change to the
        overrides file, then apply it live (or restart the affected stage).

        Raise EdgeMatteError (ConfigError/StorageError/MediaError) and change nothing on failure.
        """
        ...

    def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run one of DAEMON_COMMANDS with validated `args`; raise EdgeMatteError on failure.

        `background/set` gets either {"name": str} (a file in the media dir; the daemon checks
        confinement) or {"image_base64": str} (valid base64, decoded size already bounded).
        """
        ...

    def snapshot_jpeg(self) -> bytes:
        """A JPEG of the latest composite; raise EdgeMatteError when there is none yet."""
        ...
