"""Typed events and a tiny thread-safe fan-out bus.

Stages emit events (plate captured, camera lost, engine fallback, ...); the daemon logs them and
the MQTT control publishes them. Stages only know `emit`, never who listens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Something worth telling an operator about."""

    kind: str  # dotted name, e.g. "plate.captured", "source.lost", "engine.fallback"
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "data": self.data, "time": self.time}


Emit = Callable[[Event], None]

# Every kind the daemon emits (Home Assistant's event entity must list them in advance).
KINDS = (
    "pipeline.running",
    "pipeline.failed",
    "source.connected",
    "source.lost",
    "source.recovered",
    "source.ended",
    "camera.controls_refused",
    "engine.fallback",
    "plate.loaded",
    "plate.capturing",
    "plate.captured",
    "plate.improved",
    "plate.refreshed",
    "plate.stale",
    "plate.misaligned",
    "plate.realigned",
    "plate.cleared",
    "plate.save_failed",
    "plate.usable",
    "plate.unusable",
    "scene.occupied",
    "scene.empty",
    "compose.asset_failed",
    "config.applied",
    "config.rejected",
    "config.save_failed",
    "config.file_wins",
    "display.opened",
    "display.unavailable",
    "display.lost",
    "display.reopened",
)

# Events that report a failure are logged above INFO, so `journalctl -p warning` shows each one;
# every other event (plate captured, camera connected, config applied) is routine.
LEVELS = {
    "pipeline.failed": logging.ERROR,
    "config.save_failed": logging.ERROR,
    "source.lost": logging.WARNING,
    "engine.fallback": logging.WARNING,
    "compose.asset_failed": logging.WARNING,
    "plate.save_failed": logging.WARNING,
    "plate.misaligned": logging.WARNING,
    "plate.unusable": logging.WARNING,
    "display.unavailable": logging.WARNING,
    "display.lost": logging.WARNING,
    "config.rejected": logging.WARNING,
    "camera.controls_refused": logging.WARNING,
}


def level(event: Event) -> int:
    """The logging level an event is logged at."""
    return LEVELS.get(event.kind, logging.INFO)


def log_only(event: Event) -> None:
    """An `Emit` for code run without a bus (offline CLI, tests)."""
    _LOG.log(level(event), "%s: %s", event.kind, event.message)


class EventBus:
    """Fan events out to subscribers; a failing subscriber is logged, never propagated."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Emit] = []

    def subscribe(self, callback: Emit) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def emit(self, event: Event) -> None:
        _LOG.log(level(event), "event %s: %s", event.kind, event.message)
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # a broken listener must not break the pipeline
                _LOG.exception("event subscriber failed for %s", event.kind)
