"""A real Mosquitto for tests (plain, password + ACL, or TLS) and a recording test client.

The broker runs as a subprocess on a free loopback port in its own directory; `kill` and
`start` again reuse the port, so clients can be tested across a broker crash. Readiness is
awaited by polling the port, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from waiting import WAIT_S, wait_on, wait_until

from edge_matte.config.schema import MqttConfig, TlsConfig
from edge_matte.control.client import disable_nagle


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA, a server cert for localhost/127.0.0.1 and a client cert (openssl CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        directory,
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=edge-matte test CA",
    )
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\n{ext}\n")
        _openssl(
            directory,
            "req",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        _openssl(
            directory,
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return TlsFiles(
        *(
            directory / name
            for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
        )
    )


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


class Broker:
    """One Mosquitto process; `kill()` + `start()` simulate a crash and recovery on the same port."""

    def __init__(
        self,
        directory: Path,
        listener: str = "",
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.log = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "set_tcp_nodelay true",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user that cannot read tmp files
        if users is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self._password_file(users)}"]
        if acl is not None:
            (directory / "acl").write_text(acl)
            lines.append(f"acl_file {directory / 'acl'}")
        if tls is not None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
            ]
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("\n".join([*lines, listener]) + "\n")

    def _password_file(self, users: dict[str, str]) -> Path:
        path = self.directory / "passwd"
        path.write_text("")
        for user, password in users.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(path), user, password],
                check=True,
                capture_output=True,
            )
        return path

    def start(self) -> Broker:
        self._process = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_until(self._accepting, what=f"mosquitto on port {self.port}")
        return self

    def _accepting(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(
                f"mosquitto exited: {self._process.stderr.read().decode()} {self.read_log()}"
            )
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL: no clean disconnects, retained messages gone (persistence off)."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.wait(timeout=WAIT_S)
        self._process = None

    def read_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def mqtt_config(self, **fields: Any) -> MqttConfig:
        """An MqttConfig pointing at this broker (TLS with the test CA and client cert if any)."""
        if self.tls is not None and "tls" not in fields:
            fields["tls"] = TlsConfig(
                ca_file=self.tls.ca, cert_file=self.tls.client_cert, key_file=self.tls.client_key
            )
        return MqttConfig(
            enabled=True,
            host="127.0.0.1" if self.tls is None else "localhost",
            port=self.port,
            **fields,
        )

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Probe:
    """A test-side MQTT client recording every message on its subscriptions."""

    def __init__(
        self,
        broker: Broker,
        *subscriptions: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{id(self)}")
        if username is not None:
            self._client.username_pw_set(username, password)
        if broker.tls is not None:
            tls = broker.tls
            self._client.tls_set(str(tls.ca), str(tls.client_cert), str(tls.client_key))
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect("localhost" if broker.tls else "127.0.0.1", broker.port)
        disable_nagle(self._client)
        self._client.loop_start()
        if subscriptions:
            self._client.subscribe([(topic, 1) for topic in subscriptions])
            wait_until(self._subscribed.is_set, what=f"subscription to {subscriptions}")

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(message.topic, message.payload, bool(message.retain)))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [message for message in self.messages if message.topic == topic]

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[Message], bool] = lambda m: True,
        timeout: float = WAIT_S,
    ) -> Message:
        """The first message on `topic` (seen so far or arriving) that satisfies `predicate`."""

        def found() -> Message | None:
            return next((m for m in self.messages if m.topic == topic and predicate(m)), None)

        def seen() -> str:
            return f"last seen: {[(m.topic, m.payload[:80]) for m in self.messages[-20:]]}"

        return wait_on(self._cond, found, timeout, f"a matching message on {topic}", seen)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)

    def request(self, topic: str, payload: str | bytes, answer_topic: str) -> Message:
        """Publish and return the next answer on `answer_topic` (requests answered in order)."""
        seen = len(self.on(answer_topic))
        self.publish(topic, payload)
        answers = wait_on(
            self._cond,
            lambda: self.on(answer_topic)[seen:],
            what=f"an answer on {answer_topic} to {topic} {payload[:200]!r}",
        )
        return answers[0]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def retained(broker: Broker, topic: str, **credentials: Any) -> Message:
    """What a fresh subscriber to `topic` is handed at once (its retained message)."""
    with Probe(broker, topic, **credentials) as probe:
        return probe.wait_for(topic, lambda m: m.retain)
