"""MQTT control: connects in the background, publishes state/telemetry/events, answers requests.

Threads: paho's network thread runs the callbacks, which only queue work; one worker thread runs
every request, announcement and reconfiguration in order (a slow config change never stalls
keepalives, and answers keep request order); a ticker publishes telemetry. The daemon never
waits on the broker: while it is unreachable nothing is published and paho retries with
backoff; on every (re)connect the retained config and state are republished before `online`.
Between connects they follow the truth: every event (plate, source, engine, pipeline, config
reload) pokes a pacer that republishes them, at most once per STATE_MIN_INTERVAL_S and only when
they changed (`edge_matte.control.retained`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_matte.config.redact import mask_data
from edge_matte.config.schema import MqttConfig
from edge_matte.control import discovery, handlers
from edge_matte.control.api import ControlApi
from edge_matte.control.client import Client, build_client, disable_nagle
from edge_matte.control.retained import Pacer, Retained, fit_jpeg
from edge_matte.control.topics import Topics
from edge_matte.errors import ConfigError, EdgeMatteError
from edge_matte.events import Event

_LOG = logging.getLogger(__name__)

REQUEST_SLOTS = 32  # requests queued beyond this are answered "busy", never buffered
PENDING_EVENTS = 100  # events kept while the broker is unreachable (oldest dropped)
PUBLISH_WAIT_S = 2.0
JOIN_S = 10.0
LIVE_FIELDS = frozenset({"telemetry_interval_s", "max_payload_bytes"})  # others reconnect
RETAINED_REFUSAL = "retained messages are never executed; clear the retained message"
BUSY_REFUSAL = "too many requests queued; try again later"
STATE_MIN_INTERVAL_S = 0.5  # retained state/config republished at most this often on events
IMAGE_IDLE_S = 1.0  # how often a disabled image publisher looks at its interval again
VOLATILE_STATE = ("plate_age_s",)  # grows every second: not a change worth a retained message
_AUTH_REFUSALS = {4, 5, 0x86, 0x87}  # 3.1.1: bad credentials, not authorised; 5: the same


class MqttControl:
    """Remote control and telemetry of one device over MQTT (topic table: `edge_matte.control`)."""

    def __init__(self, config: MqttConfig, api: ControlApi) -> None:
        self._api = api
        self._mqtt = config
        self._topics = Topics.from_config(config)
        self._client: Client | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # the telemetry interval changed, or stopping
        self._rediscovery = threading.Event()  # a discovery re-send is queued (coalesces floods)
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._slots = threading.BoundedSemaphore(REQUEST_SLOTS)
        self._events: deque[str] = deque(maxlen=PENDING_EVENTS)
        self._threads: list[threading.Thread] = []
        self._subscribing: dict[int, list[str]] = {}
        self._refused: dict[str, str] = {}
        self._refused_publications = 0  # MQTT 5 only: 3.1.1 brokers drop denied messages silently
        self._error: str | None = None
        self._busy_refusals = 0
        self._retained = Retained()
        self._retained_lock = threading.Lock()  # one retained write at a time, in order
        self._pacer = Pacer(self._refresh_retained, STATE_MIN_INTERVAL_S, "mqtt-state")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and return at once, reachable broker or not.

        Raise ConfigError when the TLS files or the password file cannot be used.
        """
        client = build_client(self._mqtt, self._topics)
        loops = (
            (self._work, "mqtt-worker"),
            (self._tick, "mqtt-telemetry"),
            (self._publish_images, "mqtt-image"),
        )
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._pacer.start()
        self._attach(client)

    def stop(self) -> None:
        """Publish availability `stopping` then `offline` (retained) and disconnect."""
        self._stopping.set()
        self._wake.set()
        self._jobs.put(None)
        self._pacer.stop(JOIN_S)
        for thread in self._threads:
            thread.join(JOIN_S)
        self._threads.clear()
        self._detach(("stopping", "offline"))

    def reconfigure(self, config: MqttConfig) -> None:
        """Adopt new MQTT settings: live for the telemetry interval and payload limit, else by
        reconnecting. Queued, so a request that caused it is answered on the old connection."""
        self._jobs.put(partial(self._reconfigure, config))

    def publish_event(self, event: Event) -> None:
        """EventBus subscriber: publish on `events`, or keep it until the broker is back; then
        let the retained state and config catch up with what the event changed."""
        payload = json.dumps(mask_data(event.to_json()), default=str)
        if self._connected.is_set():
            self._publish(self._topics.events, payload)
        else:
            self._events.append(payload)
        self._pacer.poke()

    def status(self) -> dict[str, Any]:
        """Connection health for logs and the daemon's state: connected, last error, refusals."""
        return {
            "connected": self._connected.is_set(),
            "broker": f"{self._mqtt.host}:{self._mqtt.port}",
            "error": self._error,
            "refused_subscriptions": dict(self._refused),
            "refused_publications": self._refused_publications,
            "busy_refusals": self._busy_refusals,
        }

    # -- connection --------------------------------------------------------------------------

    def _attach(self, client: Client) -> None:
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_connect_error = self._on_connect_error
        self._client = client
        client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        client.loop_start()

    def _detach(self, farewell: tuple[str, ...]) -> None:
        """Say `farewell` on availability (if connected) and close the connection cleanly."""
        client, self._client = self._client, None
        if client is None:
            return
        if self._connected.is_set():
            for word in farewell:
                self._publish(
                    self._topics.availability, word, retain=True, client=client, wait=True
                )
        self._connected.clear()
        client.disconnect()
        client.loop_stop()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            hint = (
                " (check mqtt.username and the password)" if reason.value in _AUTH_REFUSALS else ""
            )
            self._set_error(
                f"broker {self._mqtt.host}:{self._mqtt.port} refused the connection: {reason}{hint}"
            )
            return
        self._set_error(None)
        disable_nagle(client)
        self._connected.set()
        self._jobs.put(self._announce)
        filters = self._topics.subscriptions()
        _, mid = client.subscribe(_subscriptions(self._mqtt, filters))
        if mid is not None:  # None: the connection dropped again; the next connect subscribes
            self._subscribing[mid] = filters

    def _on_connect_error(self, err: OSError) -> None:
        self._set_error(f"cannot connect to broker {self._mqtt.host}:{self._mqtt.port}: {err}")

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if client is not self._client:
            return
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._stopping.is_set():
            _LOG.warning("lost the broker connection (%s); reconnecting", reason)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        if client is not self._client:
            return
        for topic, reason in zip(self._subscribing.pop(mid, []), reasons, strict=False):
            if reason.is_failure:
                _LOG.error("broker refused the subscription to %s: %s", topic, reason)
                self._refused[topic] = str(reason)
            else:
                self._refused.pop(topic, None)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._refused_publications += 1
            _LOG.error("broker refused a publication (check its ACL): %s", reason)

    def _set_error(self, error: str | None) -> None:
        if error == self._error:
            return
        if error is None:
            _LOG.info("connected to broker %s:%s", self._mqtt.host, self._mqtt.port)
        else:
            _LOG.error("%s (retrying with backoff)", error)
        self._error = error

    # -- requests ----------------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if client is not self._client:
            return
        if message.topic == self._topics.ha_status:
            if message.payload == b"online" and not self._rediscovery.is_set():
                self._rediscovery.set()
                self._jobs.put(self._announce_discovery)
            return
        relative = self._topics.route(message.topic)
        if relative is None or not handlers.handles(relative) or not message.payload:
            return  # an empty payload is how a retained message is cleared: not a request
        limit = self._api.config().mqtt.max_payload_bytes
        payload = bytes(message.payload[: limit + 1])  # enough to tell it is too large, no more
        refusal = RETAINED_REFUSAL if message.retain else None
        if not self._slots.acquire(blocking=False):
            self._busy_refusals += 1
            self._serve(relative, payload, BUSY_REFUSAL, release=False)
            return
        self._jobs.put(partial(self._serve, relative, payload, refusal))

    def _serve(
        self, relative: str, payload: bytes, refusal: str | None, release: bool = True
    ) -> None:
        try:
            answer = handlers.dispatch(self._api, relative, payload, refusal)
            if answer is None:
                return
            if answer.snapshot is not None:
                self._publish(self._topics.snapshot, answer.snapshot)
                if self._mqtt.image_interval_s > 0:
                    self._publish_image(answer.snapshot)
            if answer.changed:
                self._refresh_retained()
            result = json.dumps(mask_data(answer.result), default=str)
            self._publish(self._topics.at(answer.result_topic), result)
        finally:
            if release:
                self._slots.release()

    def _reconfigure(self, new: MqttConfig) -> None:
        old = self._mqtt
        changed = {
            name for name in MqttConfig.model_fields if getattr(old, name) != getattr(new, name)
        }
        if not changed or self._stopping.is_set():
            return
        if changed <= LIVE_FIELDS:
            self._mqtt = new
            self._wake.set()
            return
        topics = Topics.from_config(new)
        try:
            client = build_client(new, topics) if new.enabled else None
        except ConfigError as err:
            _LOG.error("keeping the current broker connection: %s", err)
            return
        self._forget(old, new, topics)
        self._detach(("offline",))
        self._mqtt, self._topics = new, topics
        if client is not None:
            _LOG.info("reconnecting with changed settings: %s", ", ".join(sorted(changed)))
            self._attach(client)

    def _forget(self, old: MqttConfig, new: MqttConfig, topics: Topics) -> None:
        """Remove retained data that the new settings would leave behind at old topics."""
        if topics.base != self._topics.base:
            for topic in (self._topics.state, self._topics.config, self._topics.image):
                self._publish(topic, "", retain=True)
        if old.image_interval_s > 0 and new.image_interval_s == 0:
            self._publish(self._topics.image, "", retain=True)
        if old.homeassistant and discovery.removals(old) != discovery.removals(new):
            for topic, payload in discovery.removals(old):
                self._publish(topic, payload, retain=True)

    # -- publishing --------------------------------------------------------------------------

    def _announce(self) -> None:
        """After every connect: retained config, state and discovery, queued events, `online`."""
        if not self._connected.is_set():
            return
        self._retained.forget()  # the broker may have lost them: send both again
        self._refresh_retained()
        self._announce_discovery()
        while self._events:
            self._publish(self._topics.events, self._events.popleft())
        self._publish(self._topics.availability, "online", retain=True)

    def _announce_discovery(self) -> None:
        self._rediscovery.clear()
        for topic, payload in discovery.messages(self._mqtt, self._topics):
            self._publish(topic, payload, retain=True)

    def _refresh_retained(self) -> None:
        """Republish the retained config and state, each only if it changed since last sent."""
        if not self._connected.is_set():
            return  # sent again on connect
        with self._retained_lock:
            self._publish_changed(self._topics.config, lambda: self._api.config().to_json())
            self._publish_changed(self._topics.state, self._api.state, VOLATILE_STATE)

    def _publish_changed(
        self, topic: str, produce: Callable[[], dict[str, Any]], volatile: tuple[str, ...] = ()
    ) -> None:
        try:
            data = produce()
        except Exception:  # supervision boundary: daemon code failing must not stop MQTT
            _LOG.exception("cannot produce the payload for %s", topic)
            return
        if self._retained.changed(topic, data, volatile):
            self._publish(topic, json.dumps(mask_data(data), default=str), retain=True)

    def _tick(self) -> None:
        while not self._stopping.is_set():
            if self._wake.wait(self._mqtt.telemetry_interval_s):
                self._wake.clear()  # new interval (or stopping): start the wait again
                continue
            if self._connected.is_set():
                self._publish_from(self._topics.telemetry, self._api.telemetry)

    def _publish_images(self) -> None:
        """Every mqtt.image_interval_s (0: off), the composite as a retained, size-capped JPEG."""
        while not self._stopping.wait(self._mqtt.image_interval_s or IMAGE_IDLE_S):
            if self._mqtt.image_interval_s > 0 and self._connected.is_set():
                try:
                    self._publish_image(self._api.snapshot_jpeg())
                except EdgeMatteError as err:  # no frame yet
                    _LOG.debug("no image to publish: %s", err)

    def _publish_image(self, jpeg: bytes) -> None:
        fitted = fit_jpeg(jpeg, self._mqtt.image_max_bytes)
        if fitted is None:
            _LOG.warning("composite image does not fit mqtt.image_max_bytes; not published")
            return
        self._publish(self._topics.image, fitted, retain=True)

    def _publish_from(
        self, topic: str, produce: Callable[[], dict[str, Any]], retain: bool = False
    ) -> None:
        try:
            payload = json.dumps(mask_data(produce()), default=str)
        except Exception:  # supervision boundary: daemon code failing must not stop MQTT
            _LOG.exception("cannot produce the payload for %s", topic)
            return
        self._publish(topic, payload, retain=retain)

    def _publish(
        self,
        topic: str,
        payload: str | bytes,
        retain: bool = False,
        client: Client | None = None,
        wait: bool = False,
    ) -> None:
        client = client or self._client
        if client is None:
            return
        try:
            info = client.publish(topic, payload, qos=1, retain=retain)
            if wait:
                info.wait_for_publish(PUBLISH_WAIT_S)
        except (ValueError, RuntimeError) as err:  # bad topic, queue full, not connected
            _LOG.warning("cannot publish on %s: %s", topic, err)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                return
            try:
                job()
            except Exception:  # supervision boundary: the worker must outlive any one job
                _LOG.exception("MQTT control job failed")


def _subscriptions(
    mqtt: MqttConfig, filters: list[str]
) -> list[tuple[str, int]] | list[tuple[str, SubscribeOptions]]:
    """QoS 1; with MQTT 5 also Retain As Published, so a retained request is seen as retained
    even when it is published while we are subscribed (3.1.1 brokers clear the flag then)."""
    if mqtt.protocol == "5":
        return [(topic, SubscribeOptions(qos=1, retainAsPublished=True)) for topic in filters]
    return [(topic, 1) for topic in filters]
