"""The daemon: runs the pipeline, answers control requests, talks to systemd.

`Daemon` is the one implementation of `control.api.ControlApi`: MQTT (and the tests) change
settings and issue commands only through it. How a config change is checked, saved and applied
lives in `runtime.reconfigure`; uploaded backgrounds in `runtime.uploads`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from edge_matte import __version__, atomic
from edge_matte.capture.v4l2_controls import apply_controls, v4l2_device
from edge_matte.config import profile as profile_mod
from edge_matte.config import redact
from edge_matte.config.schema import Config
from edge_matte.control import overrides, topics
from edge_matte.errors import EdgeMatteError
from edge_matte.events import Event, EventBus
from edge_matte.output.views import ViewOutputs
from edge_matte.plate import store as plate_store
from edge_matte.runtime import memory, uploads
from edge_matte.runtime.checks import preflight
from edge_matte.runtime.notify import Heartbeat, Notifier
from edge_matte.runtime.pipeline import Pipeline
from edge_matte.runtime.reconfigure import Reconfigurer, remember_secrets
from edge_matte.runtime.telemetry import system_readings

if TYPE_CHECKING:
    from edge_matte.control.mqtt import MqttControl

_LOG = logging.getLogger(__name__)

STAGES = ("capture", "matte", "output")
FIRST_FRAME_TIMEOUT_S = 120.0
CAMERA_WAIT_EXTEND_S = 10.0  # EXTEND_TIMEOUT_USEC step while READY waits for the camera
TRIM_INTERVAL_S = 60.0  # see edge_matte.runtime.memory


class Daemon:
    """One running appliance: pipeline + control + systemd notifications."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        layers: overrides.Layers | None = None,
    ) -> None:
        self._layers = layers  # how `config` was loaded; its news is told once control is up
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started = time.monotonic()
        self.bus = EventBus()
        self.notifier = notifier or Notifier.from_env()
        self.heartbeat = Heartbeat(self.notifier, STAGES, self._status_line)
        self._problems: tuple[str, ...] = ()
        self._awaiting_camera = False
        self._problems_lock = threading.Lock()  # not the settings' lock: events arrive during swaps
        self.bus.subscribe(self._on_event)  # before the pipeline: building it may emit
        profile = preflight(config)  # ConfigError (exit 2) before anything starts
        remember_secrets(config)
        operator = layers.operator if layers else config
        self._settings = Reconfigurer(config, profile, config_path, operator, self.bus.emit, self)
        self.views = ViewOutputs(config, self.bus.emit, self._view_state)
        self.bus.subscribe(self.views.remember)
        self.pipeline = self._new_pipeline(config, profile)
        self._control: MqttControl | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; exit code 0 on a clean stop, 1 if the pipeline failed."""
        self._install_signals()
        try:
            self._sweep_leftovers()
            self._reapply_camera_controls()
            self.views.start()
            self._subscribe_control()  # before the camera opens: its first events reach MQTT
            self.pipeline.start()
            self._start_control()
            if self._layers is not None:
                self._settings.settle(self._layers)  # config.file_wins reaches MQTT too
            if not self._await_first_output():
                return 1
            self._await_camera()
            if self._stop.is_set():
                return 0  # stopped while starting: a clean stop, but never claim READY
            self.notifier.ready(self._status_line())
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
        self.views.close()

    def urls(self) -> list[str]:
        stream = self.config().stream
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
        plate = self.config().resolved_plate_path()
        written = [plate, plate_store.sidecar(plate)]
        saved = self._settings.overrides_path()
        if saved is not None:
            written.append(saved)
        for path in written:
            for leftover in atomic.sweep_leftovers(path):
                _LOG.warning("removed %s, left by a write that was interrupted", leftover)

    def _reapply_camera_controls(self) -> None:
        """Lock the camera as calibration left it (V4L2 only; Argus settings come from the URI)."""
        device = v4l2_device(self.config().source.uri)
        profile = self._settings.profile
        if device is None or profile is None or not profile.controls:
            return
        refused = apply_controls(device, profile.controls)
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

    def _await_camera(self) -> None:
        """Hold READY=1 until a real camera frame reached the output, at most source.ready_wait_s.

        Meanwhile STATUS= says which camera is awaited and EXTEND_TIMEOUT_USEC keeps systemd's
        start timeout from firing; WATCHDOG=1 is sent while the stages beat (NO SIGNAL is served).
        A camera that never comes does not fail the start: the appliance stays up, streaming the
        NO SIGNAL card and reachable over MQTT (where the URI can be fixed), with the problem on
        STATUS=, in the state and in the log; a restart loop would only hide the stream too.
        """
        self._check_problems()  # those found while the pipeline was built (engine fallback)
        self._awaiting_camera = True
        try:
            self._wait_for_camera(self.pipeline)
        finally:
            self._awaiting_camera = False

    def _wait_for_camera(self, pipeline: Pipeline) -> None:
        deadline = time.monotonic() + self.config().source.ready_wait_s
        period = min(self.heartbeat.period_s, CAMERA_WAIT_EXTEND_S / 2)
        while not self._stop.is_set() and not pipeline.first_camera_output.is_set():
            if time.monotonic() >= deadline:
                self._check_problems()
                _LOG.warning(
                    "no camera frame within source.ready_wait_s (%g s): ready anyway, serving NO SIGNAL",
                    self.config().source.ready_wait_s,
                )
                return
            self.notifier.extend_timeout(CAMERA_WAIT_EXTEND_S)
            self._check_problems()
            if not self.heartbeat.stalled_stages():
                self.notifier.watchdog()
            self.notifier.status(self._status_line())
            pipeline.first_camera_output.wait(min(period, max(0.0, deadline - time.monotonic())))

    def _on_event(self, event: Event) -> None:
        """Every event may change what is wrong (camera lost, engine fallback, stage failed)."""
        if getattr(self, "pipeline", None) is not None:
            self._check_problems()

    def _check_problems(self) -> None:
        """Log each problem once at WARNING when it appears, and at INFO when it is gone."""
        found = self.pipeline.health().problems
        with self._problems_lock:
            old, self._problems = self._problems, found
        for problem in found:
            if problem not in old:
                _LOG.warning("problem: %s", problem)
        for problem in old:
            if problem not in found:
                _LOG.info("problem solved: %s", problem)

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
                self.notifier.reloading()
                self._settings.reload()
                self.notifier.ready()
        return 0

    def _viewers(self) -> int:
        stream = self.pipeline.stream
        return stream.client_count() if stream is not None else 0

    def _subscribe_control(self) -> None:
        """Let MQTT hear every event from now on; it keeps them until it has connected."""
        if not self.config().mqtt.enabled:
            return
        from edge_matte.control.mqtt import MqttControl  # paho is only needed with MQTT on

        control = self._control = MqttControl(self.config().mqtt, self)
        self.bus.subscribe(control.publish_event)

    def _start_control(self) -> None:
        """Connect to the broker once the pipeline runs (the first state it publishes is true)."""
        if self._control is not None:
            self._control.start()

    def _new_pipeline(self, config: Config, profile: profile_mod.Profile | None) -> Pipeline:
        return Pipeline(config, self.bus.emit, self.heartbeat.beat, profile, self.views)

    def restart_pipeline(self, config: Config, profile: profile_mod.Profile | None) -> None:
        """Replace the pipeline (source, engine, plate, stream) with one built from `config`.

        If the new one cannot be built or started (weights refused, port taken), the running
        config's pipeline is started again before the error propagates: never left with none.
        """
        self.pipeline.stop()
        try:
            self.pipeline = self._start_pipeline(config, profile)
        except EdgeMatteError as err:
            _LOG.error("new pipeline failed (%s); restarting the previous one", err)
            self.pipeline = self._start_pipeline(self._settings.config, self._settings.profile)
            raise

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
        return self._settings.config

    def state(self) -> dict[str, Any]:
        pipe = self.pipeline
        plate = pipe.plate.status()
        health = pipe.health()
        return {
            "problem": health.problem,
            "pipeline": "failed"
            if pipe.failed
            else ("running" if pipe.first_output.is_set() else "starting"),
            "engine": pipe.engine.name,
            "degraded": pipe.engine.degraded,
            "source": redact.mask_uri(self.config().source.uri),
            "source_connected": pipe.source.connected,
            "resolution": list(pipe.size),
            "plate": plate.get("state"),
            "plate_age_s": plate.get("age_s"),
            "plate_frozen": plate.get("frozen"),
            "plate_usable": pipe.plate_health.usable,
            "person_present": pipe.presence.present,
            "plate_known_fraction": plate.get("known_fraction"),
            "plate_waiting_for": plate.get("waiting_for"),
            "plate_people_evidence": plate.get("people_evidence"),
            "compose_mode": self.config().compose.mode,
            "config_hash": self.config().digest(),
            "version": __version__,
            "urls": self.urls(),
        }

    def telemetry(self) -> dict[str, Any]:
        return {
            **self.pipeline.telemetry(),
            **system_readings(),
            **self.views.telemetry(),
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    def apply_config(self, config: Config) -> None:
        self._settings.apply(config, persist=True, trusted=False)

    def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        plate = self.pipeline.plate
        actions = {
            topics.PLATE_CAPTURE: plate.capture_now,
            topics.PLATE_FREEZE: plate.freeze,
            topics.PLATE_UNFREEZE: plate.unfreeze,
            topics.PLATE_CLEAR: plate.clear,
        }
        if name in actions:
            actions[name]()
            return {"plate": plate.status()}
        if name == topics.BACKGROUND_SET:
            background, patched = uploads.background_change(args, self.config())
            self.apply_config(patched)
            return {"background": background}
        if name == topics.RESTART:
            self._settings.restart()
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

    # -- reconfigure.Target ----------------------------------------------------------------------

    def apply_live(self, config: Config, trusted: bool) -> None:
        """Apply settings the running pipeline takes without a restart."""
        self.pipeline.compositor.update(config.compose, allow_absolute=trusted)
        self.pipeline.until_ready = config.plate.until_ready
        logging.getLogger().setLevel(config.log_level)

    def apply_views(self, config: Config) -> None:
        self.views.apply(config)

    def adopt(self, config: Config, changed: set[str]) -> None:
        if "mqtt" in changed and self._control is not None:
            self._control.reconfigure(config.mqtt)

    # -- helpers ---------------------------------------------------------------------------------

    def _view_state(self) -> dict[str, Any]:
        """What the browser view shows beside `state`: rate and viewers."""
        pipe = self.pipeline
        return {
            **self.state(),
            "fps": round(pipe.stats["output"].fps(), 1),
            "rtsp_clients": self._viewers(),
        }

    def _status_line(self) -> str:
        """STATUS=: what is wrong first (or which camera READY waits for), then the figures."""
        pipe = self.pipeline
        health = pipe.health()
        clients = pipe.stream.client_count() if pipe.stream else 0
        line = f"{health.output_fps:.1f} fps, engine {pipe.engine.name}, plate {pipe.plate.state.value}, {clients} clients"
        if not health.ok:
            line = f"problem: {health.problem}; {health.source_fps:.1f} fps from the camera, {line}"
        if self._awaiting_camera:
            line = f"waiting for camera {redact.mask_uri(self.config().source.uri)}; {line}"
        return line
