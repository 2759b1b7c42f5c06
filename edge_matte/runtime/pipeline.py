"""The always-on pipeline: capture -> plate/matte -> composite -> RTSP, one thread per stage.

Stages hand over through one-item `LatestSlot`s, so a slow stage makes the one before it drop
stale frames (counted) instead of queueing without bound. Each loop beats the watchdog on every
pass, including idle passes, so only a genuinely hung stage stops the systemd pings.

Full-frame copies per frame in the hot path (BGR uint8): capture (1, the reader thread's
resize/copy out of the device buffer), engine input conversion (inside the engine), composite (1
output buffer), RTSP push (its conversion to I420, half the bytes, and that copied into the
GStreamer buffer: the encoder's input). Views (alpha/debug) add one each only when those outputs
are enabled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_matte.capture.opener import open_source
from edge_matte.capture.resilient import ResilientSource
from edge_matte.config.profile import Profile
from edge_matte.config.schema import ComposeConfig, Config
from edge_matte.engine.openmp import on_passing_thread
from edge_matte.engine.select import EngineChain
from edge_matte.errors import EdgeMatteError, EngineError, MediaError, SourceEnded, SourceError
from edge_matte.events import Emit, Event
from edge_matte.frames import Frame, Matte
from edge_matte.output.compose import Compositor, alpha_view, debug_view, no_signal
from edge_matte.output.stream import RtspServer
from edge_matte.output.views import ViewOutputs
from edge_matte.plate import PlateKeeper
from edge_matte.plate.health import PlateHealth
from edge_matte.runtime.health import Health, problems
from edge_matte.runtime.presence import Presence
from edge_matte.runtime.stats import LatencyWindow, StageStats
from edge_matte.slot import LatestSlot

_LOG = logging.getLogger(__name__)

POLL_S = 0.25  # longest a stage waits before beating the watchdog again

Beat = Callable[[str], None]


@dataclass
class Result:
    """What the matting stage hands to the output stage."""

    frame: Frame | None  # None: no signal
    matte: Matte | None  # None: no plate yet, or idle (see `idle`)
    idle: bool = False
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Owns the stages of one configuration; `Daemon` replaces it when stages must restart."""

    def __init__(
        self,
        config: Config,
        emit: Emit,
        beat: Beat,
        profile: Profile | None = None,
        views: ViewOutputs | None = None,
    ) -> None:
        self.config = config
        self.views = views  # the screen and browser view, fed the same composited frames
        self._emit = emit
        self._beat = beat
        src = config.source
        self.size = (src.width, src.height)
        self.source = ResilientSource(lambda: open_source(src), src, emit)
        self.plate = PlateKeeper(
            config.plate,
            config.resolved_plate_path(),
            src.uri,
            emit,
            profile,
            fps=src.fps,
            estimates="background",  # the per-pixel estimate (~1 s) never stalls the frame loop
        )
        self.engine = on_passing_thread(lambda: EngineChain(config.matting, emit, profile))
        self.compositor = _compositor(config, emit)
        self.until_ready = config.plate.until_ready  # the daemon changes it live
        self.plate_health = PlateHealth(emit)
        self.stream = (
            RtspServer(config.stream, src.width, src.height, src.fps)
            if config.stream.enabled
            else None
        )
        self.stats = {name: StageStats(name) for name in ("capture", "matte", "output")}
        self.camera_output = StageStats("camera")  # output frames that came from the camera
        self.latency = LatencyWindow()
        self.presence = Presence(emit, hold=max(1, round(src.fps / 2)))  # half a second
        self.first_output = threading.Event()  # NO SIGNAL cards count
        self.first_camera_output = threading.Event()  # a real camera frame was sent
        self.failed: str | None = None
        self._frames: LatestSlot[Frame] = LatestSlot()
        self._results: LatestSlot[Result] = LatestSlot()
        self._stop = threading.Event()
        self._snapshot_lock = threading.Lock()
        self._last_output: np.ndarray | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the camera (in the background), start the RTSP server and the three stage threads.

        The constructor starts nothing, so its owner can subscribe to the events first."""
        self.source.start()  # opening overlaps the plate restore and the engine's preparation
        self.plate.restore(*self.size)
        # TensorRT builds here, extending systemd's timeout
        on_passing_thread(lambda: self.engine.prepare(self.size[1], self.size[0]))
        if self.stream is not None:
            self.stream.start()
        for name, target in (
            ("capture", self._capture_loop),
            ("matte", self._matte_loop),
            ("output", self._output_loop),
        ):
            thread = threading.Thread(
                target=self._guard, args=(name, target), name=f"edge-matte-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every stage and release the source, engine and server."""
        self._stop.set()
        self._frames.close()
        self._results.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                _LOG.error("stage thread %s did not stop in time", thread.name)
        self.source.close()
        self.engine.close()
        self.compositor.close()
        if self.stream is not None:
            self.stream.stop()

    def snapshot(self) -> np.ndarray | None:
        """The last composited frame (BGR uint8), or None before the first."""
        with self._snapshot_lock:
            return None if self._last_output is None else self._last_output.copy()

    def _guard(self, name: str, loop: Callable[[], None]) -> None:
        """Run a stage loop; an unexpected error stops the pipeline so the daemon can act on it."""
        try:
            loop()
        except Exception as err:  # supervision boundary: log with traceback, report, stop
            _LOG.exception("stage %s crashed", name)
            self.failed = f"{name}: {err}"
            self._emit(Event("pipeline.failed", f"stage {name} crashed: {err}", {"stage": name}))
            self._stop.set()
            self._frames.close()
            self._results.close()

    # -- stages ----------------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        stats = self.stats["capture"]
        ended = False
        while not self._stop.is_set():
            self._beat("capture")
            started = time.monotonic()
            try:
                frame = self.source.read(POLL_S)
            except SourceEnded:
                if not ended:
                    self._emit(Event("source.ended", "the source reached its end"))
                ended = True
                self._stop.wait(POLL_S)
                continue
            except SourceError:  # timeout or failure: ResilientSource reconnects by itself
                continue
            ended = False
            stats.record(time.monotonic() - started)
            self._frames.put(frame)
            stats.dropped = self._frames.dropped

    def _matte_loop(self) -> None:
        stats = self.stats["matte"]
        while not self._stop.is_set():
            self._beat("matte")
            # Without a camera the no-signal card is sent at the stream's rate, so viewers keep
            # a steady stream and late joiners get a keyframe as soon as they would with a camera.
            wait = POLL_S if self.source.connected else min(POLL_S, 1.0 / self.config.source.fps)
            frame = self._frames.get(wait)
            if frame is None:  # nothing new in time: show "no signal" if the camera is gone
                if not self._stop.is_set() and not self.source.connected:
                    self._results.put(Result(frame=None, matte=None))
                continue
            started = time.monotonic()
            result = self._matte(frame)
            result.timings["matte"] = (time.monotonic() - started) * 1000.0
            stats.record(time.monotonic() - started)
            self.presence.update(
                None if result.matte is None and not result.idle else not result.idle
            )
            self._results.put(result)
            stats.dropped = self._results.dropped

    def _matte(self, frame: Frame) -> Result:
        plate = self.plate.plate
        if plate is None:
            self.plate.observe(frame, None)
            return Result(frame=frame, matte=None)
        usable = self.plate_health.check(frame.image, plate, frame.time)
        if usable and self.plate.is_idle(frame):
            self.plate.observe(frame, None)
            return Result(frame=frame, matte=None, idle=True)
        started = time.monotonic()
        try:
            matte = self.engine.matte(frame.image, plate)
        except EngineError as err:  # the whole chain is exhausted
            raise EdgeMatteError(f"no engine can matte: {err}") from err
        infer_ms = (time.monotonic() - started) * 1000.0
        # The keeper sees the matte even from an unusable plate: its upkeep and recapture run
        # as they would otherwise; only viewers are shown the until-ready view instead.
        self.plate.observe(frame, matte)
        return Result(frame=frame, matte=matte if usable else None, timings={"infer": infer_ms})

    def _output_loop(self) -> None:
        stats = self.stats["output"]
        while not self._stop.is_set():
            self._beat("output")
            result = self._results.get(POLL_S)
            if result is None:
                continue
            started = time.monotonic()
            views = self._render(result)
            if self.stream is not None:
                for name in self.config.stream.outputs:
                    self.stream.push(name, views[name])
            if self.views is not None:
                self.views.offer(views, live=result.frame is not None)
            with self._snapshot_lock:
                self._last_output = views["composite"]
            stats.record(time.monotonic() - started)
            if result.frame is not None:
                self.camera_output.record(time.monotonic() - started)
                self.latency.add(time.monotonic() - result.frame.time)
                self.first_camera_output.set()
            if not self.first_output.is_set():
                self.first_output.set()
                self._emit(Event("pipeline.running", "the first frame reached the output"))

    def _render(self, result: Result) -> dict[str, np.ndarray]:
        """The composite plus whichever of the alpha/debug views are served."""
        width, height = self.size
        if result.frame is None:
            card = no_signal(self.compositor.background(width, height), self.source.problem())
            return dict.fromkeys(self._outputs(), card)
        image = result.frame.image
        matte = result.matte
        if result.idle:
            matte = Matte(np.zeros(image.shape[:2], np.float32), image, "idle")
        if matte is None:  # no usable plate: what plate.until_ready says viewers see meanwhile
            composite = self.compositor.until_ready(image, self.until_ready)
            shown = np.float32(self.until_ready == "room")
            matte = Matte(np.full(image.shape[:2], shown, np.float32), image, "none")
        elif result.idle and self.compositor.config.mode == "replace":
            composite = self.compositor.background(width, height)  # nobody in view: no blend
        else:
            composite = self.compositor.composite(image, matte)
        views = {"composite": composite}
        outputs = self._outputs()
        if "alpha" in outputs:
            views["alpha"] = alpha_view(matte)
        if "debug" in outputs:
            views["debug"] = debug_view(image, matte, composite, result.timings)
        return views

    def _outputs(self) -> list[str]:
        wanted = set(self.config.stream.outputs) | (self.views.wanted() if self.views else set())
        return ["composite", *sorted(wanted - {"composite"})]

    # -- observation -----------------------------------------------------------------------------

    def health(self) -> Health:
        """Camera frames vs all frames sent, and what an operator must act on."""
        source = self.source
        missing = None if source.connected or source.last_error is None else source.problem()
        return Health(
            source_connected=source.connected,
            source_fps=self.camera_output.fps(),
            output_fps=self.stats["output"].fps(),
            problems=problems(
                self.failed, missing, self.engine.name if self.engine.degraded else None
            ),
        )

    def telemetry(self) -> dict[str, Any]:
        """Per-stage counters and timings, latency, engine, clients; `source_fps` counts camera
        frames that reached the output, `output_fps` every frame sent (NO SIGNAL included)."""
        health = self.health()
        return {
            "source_fps": round(health.source_fps, 2),
            "output_fps": round(health.output_fps, 2),
            "stages": {name: stats.snapshot() for name, stats in self.stats.items()},
            "latency": self.latency.percentiles(),
            "engine": self.engine.name,
            "degraded": self.engine.degraded,
            "rtsp_clients": self.stream.client_count() if self.stream is not None else 0,
            "source_connected": self.source.connected,
            "source_reconnects": self.source.reconnects,
            "plate": {
                **self.plate.stats(),
                "usable": self.plate_health.usable,
                "mismatch": round(self.plate_health.mismatch, 3),
            },
        }


def _compositor(config: Config, emit: Emit) -> Compositor:
    """The configured compositor; a missing or broken asset falls back to the default colour
    (an event says so) rather than keeping the appliance from starting."""
    try:
        return Compositor(config.compose, config.resolved_media_dir())
    except MediaError as err:
        emit(Event("compose.asset_failed", f"background unusable, using the default colour: {err}"))
        fallback = config.compose.model_copy(update={"background": ComposeConfig().background})
        return Compositor(fallback, config.resolved_media_dir())
