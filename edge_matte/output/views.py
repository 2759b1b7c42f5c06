"""The local outputs beside RTSP: the device's screen and the browser view.

They live with the daemon, not with a pipeline, so a pipeline restart (a new engine or source)
neither blanks the screen nor drops the browser's viewers. The pipeline's output stage hands
them the views it has already composited (`offer`), a reference swap each: no second
composite, and nothing here can block or slow it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_matte.config.schema import Config
from edge_matte.errors import EdgeMatteError
from edge_matte.events import Emit, Event
from edge_matte.output import display as display_mod
from edge_matte.output import display_sinks, http_view

_LOG = logging.getLogger(__name__)

_EVENTS_KEPT = 8


def check_config(config: Config) -> None:
    """ConfigError for a display or browser view that cannot work (called before start)."""
    display_sinks.check_config(config.display)
    http_view.check_config(config.http)


class ViewOutputs:
    """Owns the screen and the browser view of one daemon; both optional."""

    def __init__(self, config: Config, emit: Emit, status: Callable[[], dict[str, Any]]) -> None:
        self._config = config
        self._emit = emit
        self._status = status
        self._events: deque[dict[str, Any]] = deque(maxlen=_EVENTS_KEPT)
        self._events_lock = threading.Lock()  # events come from every thread
        self.display: display_mod.Display | None = None
        self.http: http_view.HttpView | None = None

    def start(self) -> None:
        """Open what the config enables; EdgeMatteError if the HTTP port cannot be bound."""
        self._start_display(self._config)
        self._start_http(self._config)

    def close(self) -> None:
        if self.display is not None:
            self.display.close()
            self.display = None
        if self.http is not None:
            self.http.close()
            self.http = None

    def wanted(self) -> set[str]:
        """The views (composite, alpha, debug) the outputs show now."""
        return {output.view for output in self._outputs()}

    def offer(self, views: dict[str, np.ndarray], live: bool) -> None:
        """The output stage's newest views; `live` is False for the no-signal card."""
        for output in self._outputs():
            image = views.get(output.view)
            if image is not None:  # a view switched on this very frame comes with the next
                output.offer(image, live)

    def apply(self, new: Config) -> None:
        """Take a changed display/http section: output, rotate, fit (and fps, quality) live;
        anything else reopens that output. EdgeMatteError leaves the old HTTP server serving."""
        old = self._config
        if new.display == old.display and new.http == old.http:
            self._config = new  # the source's fps may have changed: a reopened display uses it
            return
        check_config(new)
        self._config = new
        if new.display != old.display:
            if _only(old.display, new.display, {"output", "rotate", "fit"}) and self.display:
                self.display.update(new.display)
            else:
                if self.display is not None:
                    self.display.close()
                    self.display = None
                self._start_display(new)
        if new.http != old.http:
            if _only(old.http, new.http, {"output", "fps", "jpeg_quality"}) and self.http:
                self.http.update(new.http)
            else:
                self._restart_http(old, new)

    def remember(self, event: Event) -> None:
        """Bus subscriber: the last few events, for the page."""
        entry = {"kind": event.kind, "message": event.message, "time": event.time}
        with self._events_lock:
            self._events.appendleft(entry)

    def status(self) -> dict[str, Any]:
        """The device's state for the page and /state.json."""
        with self._events_lock:
            events = list(self._events)
        return {**self._status(), "events": events, **self.telemetry()}

    def telemetry(self) -> dict[str, Any]:
        readings: dict[str, Any] = {}
        if self.display is not None:
            readings["display"] = self.display.stats()
        if self.http is not None:
            readings["http_viewers"] = self.http.viewers()
        return readings

    def _outputs(self) -> list[Any]:
        return [output for output in (self.display, self.http) if output is not None]

    def _start_display(self, config: Config) -> None:
        if config.display.enabled:
            self.display = display_mod.Display(config.display, self._emit, config.source.fps)
            self.display.start()

    def _start_http(self, config: Config) -> None:
        if config.http.enabled:
            view = http_view.HttpView(config.http, self.status)
            view.start()
            self.http = view

    def _restart_http(self, old: Config, new: Config) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        try:
            self._start_http(new)
        except EdgeMatteError:
            self._config = old
            self._start_http(old)
            raise


def _only(old: Any, new: Any, fields: set[str]) -> bool:
    """Whether `old` and `new` differ in `fields` only."""
    return all(
        getattr(old, name) == getattr(new, name)
        for name in type(old).model_fields
        if name not in fields
    )
