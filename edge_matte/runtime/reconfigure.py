"""Config changes, all or nothing: check -> save the overrides -> apply live or restart.

Remote settings are checked against what a remote controller may change (`control.remote`),
validated, saved atomically to the overrides file (`control.overrides`; the operator's file is
never written) and then applied, live where the stage allows it, else by restarting the
pipeline: a crash during the restart keeps the change, and a failure leaves the running
pipeline and the saved overrides as they were. SIGHUP re-reads both files the same way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from edge_matte.config import redact
from edge_matte.config import schema as config_mod
from edge_matte.config.profile import Profile
from edge_matte.config.schema import Config
from edge_matte.control import overrides, remote
from edge_matte.errors import EdgeMatteError, StorageError
from edge_matte.events import Emit, Event
from edge_matte.runtime.checks import preflight, problems

_LOG = logging.getLogger(__name__)

LIVE_SECTIONS = {"compose", "mqtt", "log_level", "display", "http"}  # the pipeline untouched
LIVE_FIELDS = {"plate": {"until_ready"}}  # fields of other sections that are applied live too


class Target(Protocol):
    """What a config change acts on: the daemon's pipeline and what runs beside it."""

    def apply_live(self, config: Config, trusted: bool) -> None:
        """Adjust the running stages in place; EdgeMatteError (MediaError) keeps the old."""
        ...

    def restart_pipeline(self, config: Config, profile: Profile | None) -> None:
        """Replace the pipeline; on EdgeMatteError the previous config's pipeline runs again."""
        ...

    def apply_views(self, config: Config) -> None:
        """Adjust the screen and browser view; EdgeMatteError (port taken) keeps the old."""
        ...

    def adopt(self, config: Config, changed: set[str]) -> None:
        """`config` is now in force (sections `changed`): let the control channel follow."""
        ...


class Reconfigurer:
    """The config in force, with the operator's file and calibration profile it came from, and
    the one way to change it. `lock` serialises config changes and pipeline swaps."""

    def __init__(
        self,
        config: Config,
        profile: Profile | None,
        config_path: Path | None,
        operator: Config,
        emit: Emit,
        target: Target,
    ) -> None:
        self.config = config
        self.profile = profile
        self.lock = threading.RLock()
        self._path = config_path
        self._operator = operator  # the operator's file alone, without the overrides
        self._emit = emit
        self._target = target

    def overrides_path(self) -> Path | None:
        """Where remote changes are saved; None without an operator file (they live until exit)."""
        return None if self._path is None else overrides.path_for(self._operator)

    def restart(self) -> None:
        """Restart the pipeline with the config in force (the `restart` command)."""
        with self.lock:
            self._target.restart_pipeline(self.config, self.profile)

    def apply(
        self, new: Config, persist: bool, trusted: bool, operator: Config | None = None
    ) -> None:
        """Apply `new`; on any failure the running state and the saved overrides stay as they were.

        `trusted` is True only for the operator's own file (SIGHUP, with its `operator` config):
        remote patches may change only remote keys and name assets inside the media directory.
        A remote change is saved before it is applied, so a kill during a restart keeps it.
        """
        with self.lock:
            old = self.config
            changed = {key for key in Config.model_fields if getattr(old, key) != getattr(new, key)}
            if not changed:
                self._operator = operator or self._operator
                return
            if not trusted:
                remote.refuse(old, new)
            remember_secrets(new)  # before anything logs the new settings
            live = is_live(old, new, changed)
            profile = self.profile if live else preflight(new)  # ConfigError: nothing changed
            if persist:
                self._save_overrides(new, changed)
            try:
                if live:
                    self._target.apply_live(new, trusted)
                else:
                    self._target.restart_pipeline(new, profile)
                    self.profile = profile
                self._target.apply_views(new)
            except EdgeMatteError:
                if persist:
                    self._unsave_overrides(old, changed)
                raise
            self.config = new
            self._operator = operator or self._operator
            self._target.adopt(new, changed)
        self._emit(
            Event(
                "config.applied",
                f"changed: {', '.join(sorted(changed))}",
                {"sections": sorted(changed), "hash": new.digest()},
            )
        )

    def reload(self) -> None:
        """SIGHUP: re-read the operator's file and the overrides and apply them; a file that is
        refused leaves the running config as it is (config.rejected says why)."""
        try:
            layers = overrides.load(self._path, problems)
            self.apply(layers.effective, persist=False, trusted=True, operator=layers.operator)
            self.settle(layers)
            _LOG.info("config reloaded from %s", self._path)
        except EdgeMatteError as err:
            _LOG.error("reload refused, keeping the running config: %s", err)
            self._emit(Event("config.rejected", str(err)))

    def settle(self, layers: overrides.Layers) -> None:
        """Tell about overrides the operator's file won over, and save the overrides without
        them (so the event is said once)."""
        if not layers.dropped:
            return
        self._emit(
            Event(
                "config.file_wins",
                f"overrides not applied: {'; '.join(config_mod.capped(layers.dropped, 5))}",
                {"dropped": config_mod.capped(layers.dropped)},
            )
        )
        if layers.path is not None:
            try:
                overrides.save(layers.operator, layers.effective, layers.path)
            except StorageError as err:
                _LOG.error("cannot rewrite the overrides file: %s", err)

    def _save_overrides(self, config: Config, changed: set[str]) -> None:
        """Save how `config` differs from the operator's file; StorageError changes nothing."""
        path = self.overrides_path()
        if path is None:
            return
        try:
            overrides.save(self._operator, config, path)
        except StorageError as err:
            self._emit(
                Event(
                    "config.save_failed",
                    f"config change undone, it could not be saved: {err}",
                    {"path": str(path), "sections": sorted(changed)},
                )
            )
            raise

    def _unsave_overrides(self, old: Config, changed: set[str]) -> None:
        """The change did not happen: save the overrides as they were (the apply's error is
        the one to report, so a failure here is only logged)."""
        try:
            self._save_overrides(old, changed)
        except StorageError as err:
            _LOG.error("cannot restore the overrides after a failed change: %s", err)


def is_live(old: Config, new: Config, changed: set[str]) -> bool:
    """Whether going from `old` to `new` (differing in sections `changed`) needs no restart:
    only live sections changed, and in other sections only their LIVE_FIELDS."""
    for section in changed - LIVE_SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        fields = LIVE_FIELDS.get(section, set())
        if not fields or any(
            getattr(before, name) != getattr(after, name)
            for name in type(before).model_fields
            if name not in fields
        ):
            return False
    return True


def remember_secrets(config: Config) -> None:
    """Mask this config's passwords (camera URI, RTSP, broker, browser view) in every log line
    and message."""
    with contextlib.suppress(ValueError):  # not a parseable URI: it has no password part either
        redact.remember_secret(urlsplit(config.source.uri).password)
    for section in (config.stream, config.mqtt, config.http):
        with contextlib.suppress(EdgeMatteError):  # unreadable: nothing to mask (preflight says)
            redact.remember_secret(section.resolved_password())
