"""RTSP output: an in-process gst-rtsp-server serving each output stream as H.264.

One shared media per mount point, so every client watches the same encoder; when the last client
leaves the media is torn down and the next client gets a fresh one (the rejoin jetson-inference's
RTSP output fails, jetson-inference #1790). `push` hands a BGR frame to the mount's `appsrc`,
which is leaky and bounded, so a slow client can never block the pipeline; with nobody watching
there is no appsrc and `push` returns at once. A viewer that stalls completely backs up the
shared media (gst-rtsp-server waits for it; others then join slowly), so sessions that send no
keepalive expire after `_SESSION_TIMEOUT_S`, and a connection left without a session that long
is closed. The GLib main loop runs in its own daemon thread on
a private main context, so it cannot interfere with other GLib users in the process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from edge_matte.config.schema import StreamConfig
from edge_matte.errors import EdgeMatteError, MediaError

_LOG = logging.getLogger(__name__)

# Device nodes of the Jetson hardware encoder (JetPack 5 / 6); Orin Nano has neither.
_NVENC_DEVICES = ("/dev/nvhost-msenc", "/dev/v4l2-nvenc")
_QUEUED_FRAMES = 2  # appsrc holds at most this many frames; older ones are dropped
_STOP_TIMEOUT_S = 2.0
# A client that sends no keepalive (RTCP or RTSP) for this long is dropped; players send one at
# half the timeout the server announces. Without it a stalled viewer holds the shared media.
_SESSION_TIMEOUT_S = 10
_CLEANUP_INTERVAL_S = 2
_CLOSE_GRACE_MS = 200  # the loop runs this long after the filters so the closes go out


def _import_gst() -> tuple[Any, Any, Any]:
    """(GLib, Gst, GstRtspServer), initialised; EdgeMatteError naming the missing packages."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as err:
        raise EdgeMatteError(
            "RTSP output needs GStreamer and gst-rtsp-server bindings "
            "(apt: gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly; pip: PyGObject): "
            f"{err}"
        ) from err
    Gst.init(None)
    return GLib, Gst, GstRtspServer


def _has_element(gst: Any, name: str) -> bool:
    return gst.ElementFactory.find(name) is not None


def encoder_chain(config: StreamConfig, gst: Any) -> str:
    """The launch fragment from raw video to H.264 for the configured or best encoder."""
    hardware = _has_element(gst, "nvv4l2h264enc") and any(map(os.path.exists, _NVENC_DEVICES))
    if config.encoder == "nvv4l2" and not _has_element(gst, "nvv4l2h264enc"):
        raise EdgeMatteError("stream.encoder is nvv4l2 but GStreamer has no nvv4l2h264enc element")
    parse = " ! h264parse" if _has_element(gst, "h264parse") else ""
    key = config.keyframe_interval
    if config.encoder == "nvv4l2" or (config.encoder == "auto" and hardware):
        return (
            "nvvidconv ! video/x-raw(memory:NVMM),format=I420"
            f" ! nvv4l2h264enc insert-sps-pps=1 idrinterval={key} iframeinterval={key}"
            # maxperf-enable: NVENC at its highest clocks, as jetson-utils' gstEncoder sets it
            f" bitrate={config.bitrate_kbps * 1000} maxperf-enable=1{parse}"
        )
    if not _has_element(gst, "x264enc"):
        raise EdgeMatteError(
            "no H.264 encoder: GStreamer has neither nvv4l2h264enc nor x264enc "
            "(apt: gstreamer1.0-plugins-ugly)"
        )
    return (
        "x264enc tune=zerolatency speed-preset=ultrafast"
        f" key-int-max={key} bitrate={config.bitrate_kbps}{parse}"
    )


def launch_line(config: StreamConfig, gst: Any, width: int, height: int, fps: float) -> str:
    """The media factory's pipeline: a leaky appsrc of I420 frames (`push` converts them: 4:2:0
    is what players accept), the encoder, the RTP payloader."""
    rate = Fraction(fps).limit_denominator(1001)
    frame_bytes = width * height * 3 // 2
    source = (
        "appsrc name=src is-live=true format=time do-timestamp=true block=false"
        f" max-bytes={frame_bytes * _QUEUED_FRAMES} leaky-type=downstream"
        f" caps=video/x-raw,format=I420,width={width},height={height},"
        f"framerate={rate.numerator}/{rate.denominator}"
    )
    payload = "rtph264pay config-interval=1 pt=96 name=pay0"
    return f"( {source} ! {encoder_chain(config, gst)} ! {payload} )"


class RtspServer:
    """Serves rtsp://BIND:PORT/<name> for each of `config.outputs`; feed it with `push`."""

    def __init__(self, config: StreamConfig, width: int, height: int, fps: float) -> None:
        self._config = config
        self._shape = (height, width, 3)
        self._fps = fps
        self._lock = threading.Lock()
        self._appsrcs: dict[str, Any] = {}
        self._clients: set[Any] = set()  # the GstRtspServer.RTSPClient objects, held until closed
        self._sessionless: dict[Any, float] = {}  # client -> since when it has had no session
        self._thread: threading.Thread | None = None
        self._glib: Any = None
        self._gst: Any = None
        self._rtsp: Any = None
        self._context: Any = None
        self._loop: Any = None
        self._server: Any = None
        self._source: Any = None
        self._cleanup: Any = None

    @property
    def port(self) -> int:
        """The port actually bound (after `start`)."""
        return self._server.get_bound_port() if self._server is not None else self._config.port

    def urls(self, host: str = "127.0.0.1") -> dict[str, str]:
        """The URL of each output, as a client on `host` would type it."""
        return {name: f"rtsp://{host}:{self.port}/{name}" for name in self._config.outputs}

    def start(self) -> None:
        """Bind and serve; EdgeMatteError if the port is taken or GStreamer pieces are missing."""
        glib, gst, rtsp = _import_gst()
        self._glib, self._gst, self._rtsp = glib, gst, rtsp
        height, width, _ = self._shape
        launch = launch_line(self._config, gst, width, height, self._fps)
        server = rtsp.RTSPServer.new()
        server.set_address(self._config.bind)
        server.set_service(str(self._config.port))
        permissions = self._configure_auth(server, rtsp)
        mounts = server.get_mount_points()
        for name in self._config.outputs:
            mounts.add_factory(f"/{name}", self._factory(rtsp, launch, name, permissions))
        server.connect("client-connected", self._on_client_connected)
        self._context = glib.MainContext.new()
        try:
            self._source = server.create_source(None)
        except glib.Error as err:
            where = f"{self._config.bind}:{self._config.port}"
            raise EdgeMatteError(f"RTSP server cannot listen on {where}: {err.message}") from err
        self._source.attach(self._context)
        self._server = server
        self._cleanup = glib.timeout_source_new_seconds(_CLEANUP_INTERVAL_S)
        self._cleanup.set_callback(self._expire_sessions)
        self._cleanup.attach(self._context)
        self._loop = glib.MainLoop.new(self._context, False)
        self._thread = threading.Thread(target=self._loop.run, name="rtsp-server", daemon=True)
        self._thread.start()
        _LOG.info("RTSP serving %s (%s)", ", ".join(self.urls(self._config.bind).values()), launch)

    def _configure_auth(self, server: Any, rtsp: Any) -> Any:
        """Install basic auth when a user is configured; the permissions factories must carry."""
        user = self._config.username
        if user is None:
            return None
        password = self._config.resolved_password()
        if password is None:
            raise EdgeMatteError(
                "stream.username is set but no password: set stream.password, "
                "stream.password_file or the credential 'rtsp-password'"
            )
        token = rtsp.RTSPToken.new()
        token.set_string("media.factory.role", user)
        auth = rtsp.RTSPAuth.new()
        auth.add_basic(rtsp.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        permissions = rtsp.RTSPPermissions.new()
        permissions.add_permission_for_role(user, "media.factory.access", True)
        permissions.add_permission_for_role(user, "media.factory.construct", True)
        return permissions

    def _factory(self, rtsp: Any, launch: str, name: str, permissions: Any) -> Any:
        factory = rtsp.RTSPMediaFactory.new()
        factory.set_launch(launch)
        factory.set_shared(True)
        if permissions is not None:
            factory.set_permissions(permissions)
        factory.connect("media-configure", self._on_media_configure, name)
        return factory

    def _on_media_configure(self, _factory: Any, media: Any, name: str) -> None:
        appsrc = media.get_element().get_by_name("src")
        with self._lock:
            self._appsrcs[name] = appsrc
        media.connect("unprepared", self._on_media_unprepared, name, appsrc)
        _LOG.debug("RTSP media for /%s created", name)

    def _on_media_unprepared(self, _media: Any, name: str, appsrc: Any) -> None:
        with self._lock:
            if self._appsrcs.get(name) is appsrc:
                del self._appsrcs[name]
        _LOG.debug("RTSP media for /%s released", name)

    def _on_client_connected(self, _server: Any, client: Any) -> None:
        with self._lock:
            self._clients.add(client)
        client.connect("closed", self._on_client_closed)
        client.connect("new-session", self._on_new_session)

    def _on_client_closed(self, client: Any) -> None:
        with self._lock:
            self._clients.discard(client)
        self._sessionless.pop(client, None)

    def _on_new_session(self, _client: Any, session: Any) -> None:
        session.set_timeout(_SESSION_TIMEOUT_S)  # announced to the client, which keeps it alive

    def _expire_sessions(self, *_args: Any) -> bool:
        """Runs on the loop every few seconds: gst-rtsp-server leaves expiry to the app."""
        removed = self._server.get_session_pool().cleanup()
        if removed:
            _LOG.info("RTSP: dropped %d client session(s) that stopped responding", removed)
        self._server.client_filter(self._close_if_sessionless)
        return True

    def _close_if_sessionless(self, _server: Any, client: Any) -> Any:
        """Close a connection that has had no session for a whole timeout: a viewer whose session
        expired but which never hangs up (or never sets one up) would hold its socket for good."""
        now = time.monotonic()
        if client.session_filter(None):
            self._sessionless.pop(client, None)
            return self._rtsp.RTSPFilterResult.KEEP
        since = self._sessionless.setdefault(client, now)
        if now - since < _SESSION_TIMEOUT_S:
            return self._rtsp.RTSPFilterResult.KEEP
        _LOG.info("RTSP: closing a connection that has had no session for %d s", _SESSION_TIMEOUT_S)
        return self._rtsp.RTSPFilterResult.REMOVE

    def client_count(self) -> int:
        """RTSP connections currently open."""
        with self._lock:
            return len(self._clients)

    def push(self, name: str, image: np.ndarray) -> None:
        """Offer a BGR uint8 frame to output `name`; never blocks, free when nobody watches."""
        if name not in self._config.outputs:
            raise ValueError(f"no RTSP output named {name!r} (configured: {self._config.outputs})")
        if image.shape != self._shape or image.dtype != np.uint8:
            raise MediaError(
                f"frame for /{name} is {image.shape} {image.dtype}, expected {self._shape} uint8"
            )
        with self._lock:
            appsrc = self._appsrcs.get(name)
        if appsrc is None:
            return
        # OpenCV converts to I420 several times faster than videoconvert (0.4 vs 4.6 ms at 720p
        # here); GStreamer owns the bytes (one copy of the half-size I420 frame).
        i420 = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        appsrc.emit("push-buffer", self._gst.Buffer.new_wrapped(i420.tobytes()))

    def stop(self) -> None:
        """End every stream, disconnect the clients and stop the loop; returns within ~2 s."""
        if self._thread is None:
            return
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        done = threading.Event()
        source = self._glib.idle_source_new()
        source.set_callback(self._shutdown, done)
        source.attach(self._context)
        done.wait(_STOP_TIMEOUT_S)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            _LOG.warning("RTSP server thread did not stop within %.0f s", _STOP_TIMEOUT_S)
        # The listening socket lives as long as these do: drop them so the port is free again.
        self._thread = self._server = self._source = self._cleanup = None
        self._loop = self._context = None

    def _shutdown(self, done: threading.Event) -> bool:
        """Runs on the loop thread: EOS to each stream, drop sessions and clients, quit soon."""
        server = self._server
        with self._lock:
            appsrcs = list(self._appsrcs.values())
            self._appsrcs.clear()
        for appsrc in appsrcs:
            appsrc.emit("end-of-stream")
        remove = self._rtsp.RTSPFilterResult.REMOVE
        server.get_session_pool().filter(lambda *_: remove)
        server.client_filter(lambda *_: remove)
        self._source.destroy()
        self._cleanup.destroy()
        quit_later = self._glib.timeout_source_new(_CLOSE_GRACE_MS)
        quit_later.set_callback(self._quit, done)
        quit_later.attach(self._context)
        return False

    def _quit(self, done: threading.Event) -> bool:
        self._loop.quit()
        done.set()
        return False
