"""The daemon: runs the pipeline, answers control requests, talks to systemd.

`Daemon` is the one implementation of `control.api.ControlApi`: MQTT (and the tests) change
settings and issue commands only through it. Settings are validated, applied (live where the
stage allows it, else by restarting the pipeline) and then persisted atomically; a failure at
any step leaves both the running pipeline and the saved file as they were.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import cv2

from . import __version__, atomic, memory
from . import config as config_mod
from . import profile as profile_mod
from .capture.v4l2_controls import apply_controls, v4l2_device
from .config import Config
from .errors import ConfigError, EdgeMatteError, MediaError, StorageError
from .events import Event, EventBus
from .media import decode_image, resolve_asset
from .notify import Heartbeat, Notifier
from .pipeline import Pipeline
from .plate import store as plate_store
from .telemetry import system_readings

_LOG = logging.getLogger(__name__)

STAGES = ("capture", "matte", "output")
LIVE_SECTIONS = {"compose", "mqtt", "log_level"}  # applied without touching the pipeline
FIRST_FRAME_TIMEOUT_S = 120.0
TRIM_INTERVAL_S = 60.0  # see edge_matte.memory


class Daemon:
    """One running appliance: pipeline + control + systemd notifications."""

    def __init__(
        self, config: Config, config_path: Path | None = None, notifier: Notifier | None = None
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._lock = threading.RLock()  # serialises config changes and pipeline swaps
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started = time.monotonic()
        self.bus = EventBus()
        self.notifier = notifier or Notifier.from_env()
        self.heartbeat = Heartbeat(self.notifier, STAGES, self._status_line)
        self._profile = preflight(config)  # ConfigError (exit 2) before anything starts
        self.pipeline = self._new_pipeline(config, self._profile)
        self._control = None

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; exit code 0 on a clean stop, 1 if the pipeline failed."""
        self._install_signals()
        try:
            self._sweep_leftovers()
            self._reapply_camera_controls()
            self.pipeline.start()
            self._start_control()
            if not self._await_first_output():
                return 1
            if self._stop.is_set():
                return 0  # stopped while starting: a clean stop, but never claim READY
            self.notifier.ready()
            self.heartbeat.start()
            _LOG.info("serving %s", ", ".join(self.urls()) or "no RTSP outputs")
            return self._supervise()
        except EdgeMatteError as err:
            _LOG.error("%s", err)
            return 1
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask `run` to return (thread- and signal-safe)."""
        self._stop.set()

    def shutdown(self) -> None:
        self.notifier.stopping()
        self.heartbeat.stop()
        if self._control is not None:
            self._control.stop()
            self._control = None
        self.pipeline.stop()

    def urls(self) -> list[str]:
        stream = self._config.stream
        if not stream.enabled:
            return []
        host = "localhost" if stream.bind in ("0.0.0.0", "::") else stream.bind
        return [f"rtsp://{host}:{stream.port}/{name}" for name in stream.outputs]

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def _sweep_leftovers(self) -> None:
        """Remove temp files of writes cut short by a kill -9 (the old files are intact)."""
        plate = self._config.resolved_plate_path()
        written = [plate, plate_store.sidecar(plate)]
        if self._config_path is not None:
            written.append(self._config_path)
        for path in written:
            for leftover in atomic.sweep_leftovers(path):
                _LOG.warning("removed %s, left by a write that was interrupted", leftover)

    def _reapply_camera_controls(self) -> None:
        """Lock the camera as calibration left it (V4L2 only; Argus settings come from the URI)."""
        device = v4l2_device(self._config.source.uri)
        if device is None or self._profile is None or not self._profile.controls:
            return
        refused = apply_controls(device, self._profile.controls)
        if refused:
            self.bus.emit(
                Event(
                    "camera.controls_refused",
                    f"{device} did not take {', '.join(refused)}",
                    {"refused": refused},
                )
            )

    def _await_first_output(self) -> bool:
        deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.pipeline.first_output.wait(0.2):
                return True
            if self.pipeline.failed:
                return False
        if self._stop.is_set():
            return True  # stopped while starting is a clean stop
        _LOG.error("no frame reached the output within %.0f s; exiting", FIRST_FRAME_TIMEOUT_S)
        return False

    def _supervise(self) -> int:
        next_trim = time.monotonic() + TRIM_INTERVAL_S
        watched = False
        while not self._stop.wait(0.5):
            # Trim once a minute, and when the last viewer has gone (its media's buffers freed);
            # here, not on the RTSP server's thread, where a slow trim would stall every client.
            was_watched, watched = watched, self._viewers() > 0
            if time.monotonic() >= next_trim or (was_watched and not watched):
                memory.release_free_memory()
                next_trim = time.monotonic() + TRIM_INTERVAL_S
            if self.pipeline.failed:
                _LOG.error(
                    "pipeline failed: %s; exiting for systemd to restart", self.pipeline.failed
                )
                return 1
            if self._reload.is_set():
                self._reload.clear()
                self._reload_file()
        return 0

    def _viewers(self) -> int:
        stream = self.pipeline.stream
        return stream.client_count() if stream is not None else 0

    def _reload_file(self) -> None:
        """SIGHUP: re-read the config file and apply it (not re-persisted)."""
        self.notifier.reloading()
        try:
            self._apply(config_mod.load(self._config_path), persist=False, trusted=True)
            _LOG.info("config reloaded from %s", self._config_path)
        except EdgeMatteError as err:
            _LOG.error("reload refused, keeping the running config: %s", err)
            self.bus.emit(Event("config.rejected", str(err)))
        self.notifier.ready()

    def _start_control(self) -> None:
        if not self._config.mqtt.enabled:
            return
        from .control.mqtt import MqttControl  # paho is only needed with MQTT on

        self._control = MqttControl(self._config.mqtt, self)
        self.bus.subscribe(self._control.publish_event)
        self._control.start()

    def _new_pipeline(self, config: Config, profile: profile_mod.Profile | None) -> Pipeline:
        return Pipeline(config, self.bus.emit, self.heartbeat.beat, profile)

    def _restart_pipeline(self, config: Config, profile: profile_mod.Profile | None) -> None:
        """Replace the pipeline (source, engine, plate, stream) with one built from `config`.

        If the new one cannot be built or started (weights refused, port taken), the running
        config's pipeline is started again before the error propagates: never left with none.
        """
        self.pipeline.stop()
        try:
            self.pipeline = self._start_pipeline(config, profile)
        except EdgeMatteError as err:
            _LOG.error("new pipeline failed (%s); restarting the previous one", err)
            self.pipeline = self._start_pipeline(self._config, self._profile)
            raise
        self._profile = profile

    def _start_pipeline(self, config: Config, profile: profile_mod.Profile | None) -> Pipeline:
        pipeline = self._new_pipeline(config, profile)
        try:
            pipeline.start()
        except EdgeMatteError:
            pipeline.stop()
            raise
        return pipeline

    # -- ControlApi ------------------------------------------------------------------------------

    def config(self) -> Config:
        return self._config

    def state(self) -> dict[str, Any]:
        pipe = self.pipeline
        plate = pipe.plate.status()
        return {
            "pipeline": "failed"
            if pipe.failed
            else ("running" if pipe.first_output.is_set() else "starting"),
            "engine": pipe.engine.name,
            "degraded": pipe.engine.degraded,
            "source": _mask_credentials(self._config.source.uri),
            "source_connected": pipe.source.connected,
            "resolution": list(pipe.size),
            "plate": plate.get("state"),
            "plate_age_s": plate.get("age_s"),
            "plate_frozen": plate.get("frozen"),
            "plate_known_fraction": plate.get("known_fraction"),
            "plate_waiting_for": plate.get("waiting_for"),
            "compose_mode": self._config.compose.mode,
            "config_hash": self._config.digest(),
            "version": __version__,
            "urls": self.urls(),
        }

    def telemetry(self) -> dict[str, Any]:
        return {
            **self.pipeline.telemetry(),
            **system_readings(),
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    def apply_config(self, config: Config) -> None:
        self._apply(config, persist=True, trusted=False)

    def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        plate = self.pipeline.plate
        actions = {
            "plate/capture": plate.capture_now,
            "plate/freeze": plate.freeze,
            "plate/unfreeze": plate.unfreeze,
            "plate/clear": plate.clear,
        }
        if name in actions:
            actions[name]()
            return {"plate": plate.status()}
        if name == "background/set":
            return self._set_background(args)
        if name == "restart":
            with self._lock:
                self._restart_pipeline(self._config, self._profile)
            return {"restarted": True}
        raise EdgeMatteError(f"unknown command {name!r}")

    def snapshot_jpeg(self) -> bytes:
        image = self.pipeline.snapshot()
        if image is None:
            raise EdgeMatteError("no frame has been composited yet")
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise EdgeMatteError("JPEG encoding failed")
        return data.tobytes()

    # -- helpers ---------------------------------------------------------------------------------

    def _apply(self, new: Config, persist: bool, trusted: bool) -> None:
        """Apply `new`; on any failure the running state and the saved file stay as they were.

        `trusted` is True only for the operator's own file (SIGHUP): remote patches may name
        assets inside the media directory only, never absolute paths.
        """
        with self._lock:
            old = self._config
            changed = {key for key in Config.model_fields if getattr(old, key) != getattr(new, key)}
            if not changed:
                return
            if not trusted:
                config_mod.refuse_local_only_changes(old, new)
                _confine_background(old, new)
            previous_profile = self._profile
            if changed <= LIVE_SECTIONS:
                self.pipeline.compositor.update(
                    new.compose, allow_absolute=trusted
                )  # MediaError keeps the old
                logging.getLogger().setLevel(new.log_level)
            else:
                self._restart_pipeline(new, preflight(new))  # ConfigError: nothing stopped
            try:
                if persist and self._config_path is not None:
                    config_mod.save(new, self._config_path)
            except StorageError as err:
                self._revert(old, changed, previous_profile)
                self.bus.emit(
                    Event(
                        "config.save_failed",
                        f"config change undone, it could not be saved: {err}",
                        {"path": str(self._config_path), "sections": sorted(changed)},
                    )
                )
                raise
            self._config = new
            if "mqtt" in changed and self._control is not None:
                self._control.reconfigure(new.mqtt)
        self.bus.emit(
            Event(
                "config.applied",
                f"changed: {', '.join(sorted(changed))}",
                {"sections": sorted(changed), "hash": new.digest()},
            )
        )

    def _revert(self, old: Config, changed: set[str], profile: profile_mod.Profile | None) -> None:
        if changed <= LIVE_SECTIONS:
            self.pipeline.compositor.update(old.compose, allow_absolute=True)
        else:
            self._restart_pipeline(old, profile)

    def _set_background(self, args: dict[str, Any]) -> dict[str, Any]:
        media_dir = self._config.resolved_media_dir()
        if "name" in args:
            resolve_asset(str(args["name"]), media_dir)  # confinement check before anything changes
            name = str(args["name"])
        elif "image_base64" in args:
            name = self._store_upload(str(args["image_base64"]), media_dir)
        else:
            raise MediaError("background/set needs 'name' or 'image_base64'")
        patched = config_mod.apply_patch(
            self._config, {"compose": {"mode": "replace", "background": name}}
        )
        self.apply_config(patched)
        return {"background": name}

    def _store_upload(self, encoded: str, media_dir: Path) -> str:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as err:
            raise MediaError(f"image_base64 is not valid base64: {err}") from err
        image = decode_image(data)  # refuse non-images and bombs before writing anything
        name = f"upload-{hashlib.sha256(data).hexdigest()[:12]}.png"
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise MediaError("could not re-encode the uploaded image")
        atomic.write_bytes(media_dir / name, png.tobytes())
        return name

    def _status_line(self) -> str:
        pipe = self.pipeline
        fps = pipe.stats["output"].fps()
        return f"{fps:.1f} fps, engine {pipe.engine.name}, plate {pipe.plate.state.value}, {pipe.stream.client_count() if pipe.stream else 0} clients"


def _load_profile(config: Config) -> profile_mod.Profile | None:
    if config.calibration is None:
        return None
    return profile_mod.load(config.calibration)


def _confine_background(old: Config, new: Config) -> None:
    """MediaError unless a remotely changed background asset lies inside the media directory.

    Checked here, not only by the live compositor update: a patch that also changes a section
    needing a restart builds a new compositor, which trusts its config like the operator's file.
    """
    background = new.compose.background
    if background != old.compose.background and not background.startswith("#"):
        resolve_asset(background, new.resolved_media_dir())


@functools.lru_cache(maxsize=1)
def _mask_credentials(uri: str) -> str:
    """rtsp://user:pass@host -> rtsp://***@host: secrets never leave the device in state."""
    scheme, sep, rest = uri.partition("://")
    if "@" in rest.split("/")[0]:
        return f"{scheme}{sep}***@{rest.split('@', 1)[1]}"
    return uri


def preflight(config: Config) -> profile_mod.Profile | None:
    """What the schema alone cannot check, before anything starts: the files the config names
    exist and the test:// query parses. Return the calibration profile; ConfigError naming the key."""
    weights = config.matting.weights
    if weights is not None and not weights.is_file():
        raise ConfigError(f"matting.weights: {weights}: no such file")
    source = config.source
    if source.uri.startswith("test://"):
        from .capture.synthetic import parse_uri

        try:
            parse_uri(source.uri, source.width, source.height, source.fps)
        except ConfigError as err:
            raise ConfigError(f"source.uri: {err}") from err
    return _load_profile(config)


def check_config(path: Path) -> list[str]:
    """Validate a config file (and what `preflight` checks); [] when valid."""
    try:
        preflight(config_mod.load(path))
    except ConfigError as err:
        return [str(err)]
    return []
