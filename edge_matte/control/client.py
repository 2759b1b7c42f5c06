"""Build a configured paho-mqtt client: protocol, identity, credentials, TLS, will, backoff.

Everything that can fail because of the config (unreadable password file, missing or wrong CA,
encrypted key) fails here, before connecting, as a ConfigError naming the file; so a runtime
change of broker settings can be checked before it is applied.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_matte.config.schema import MqttConfig, TlsConfig
from edge_matte.control.topics import Topics
from edge_matte.errors import ConfigError

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60
MAX_QUEUED_MESSAGES = 256  # outgoing messages buffered while the connection is down


def client_id(mqtt: MqttConfig) -> str:
    return mqtt.client_id or f"edge-matte-{mqtt.device_id}"


class Client(paho.Client):
    """paho's client that also says why a (re)connect attempt failed; paho only says that it did."""

    on_connect_error: Callable[[OSError], None] | None = None

    def reconnect(self) -> paho.MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as err:  # refused, unreachable, TLS verification failed, ...
            if self.on_connect_error is not None:
                self.on_connect_error(err)
            raise


def build_client(mqtt: MqttConfig, topics: Topics) -> Client:
    """A client ready for `connect_async`, with the will `offline` on the availability topic."""
    protocol = paho.MQTTv5 if mqtt.protocol == "5" else paho.MQTTv311
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id(mqtt), protocol=protocol)
    password = mqtt.resolved_password()
    if mqtt.username is not None or password is not None:
        client.username_pw_set(mqtt.username or "", password)
    if mqtt.tls is not None:
        client.tls_set_context(_tls_context(mqtt.tls))
    client.will_set(topics.availability, "offline", qos=1, retain=True)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
    return client


def disable_nagle(client: paho.Client) -> None:
    """Send small packets (answers, acks) at once; paho leaves Nagle's ~40 ms batching on."""
    sock = client.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Verify the broker against `ca_file` (else the system CAs); present a client cert if set."""
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError("mqtt.tls: cert_file and key_file must be given together")
    try:
        context = ssl.create_default_context(cafile=_path(tls.ca_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"mqtt.tls.ca_file: cannot load {tls.ca_file}: {err}") from err
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), _path(tls.key_file), password=_no_prompt)
        except (OSError, ssl.SSLError, _EncryptedKey) as err:
            raise ConfigError(
                f"mqtt.tls.cert_file/key_file: cannot load {tls.cert_file}, {tls.key_file}: {err}"
            ) from err
    context.check_hostname = not tls.insecure
    return context


class _EncryptedKey(Exception):
    """Raised instead of prompting on the terminal for a key password (a daemon has none)."""


def _no_prompt() -> str:
    raise _EncryptedKey("the key is encrypted; give an unencrypted key")


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)
