"""Start-time checks of what the schema alone cannot see: files, secrets, assets, ports.

`edge-matte run` and `edge-matte check-config` run the same `problems()`, so a config that
check-config calls ok starts, and one that `run` refuses exits 2 listing every problem, one per
line, before anything starts (no stream URL printed, no port opened, no state written).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from edge_matte.config import profile as profile_mod
from edge_matte.config.schema import Config, capped
from edge_matte.errors import ConfigError, EdgeMatteError
from edge_matte.output.media import resolve_asset

_UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def problems(config: Config) -> list[str]:
    """Every problem found, one line each naming its key; [] when the config can start."""
    found: list[str] = []
    for check in _CHECKS:
        try:
            check(config)
        except EdgeMatteError as err:
            found += err.problems if isinstance(err, ConfigError) else [str(err)]
    return capped(found)


def preflight(config: Config) -> profile_mod.Profile | None:
    """ConfigError listing every problem, else the calibration profile (None without one)."""
    found = problems(config)
    if found:
        raise ConfigError("; ".join(found), found)
    return None if config.calibration is None else profile_mod.load(config.calibration)


def _weights(config: Config) -> None:
    weights = config.matting.weights
    if weights is not None and not weights.is_file():
        raise ConfigError(f"matting.weights: {weights}: no such file")


def _calibration(config: Config) -> None:
    if config.calibration is not None:
        try:
            profile_mod.load(config.calibration)
        except ConfigError as err:
            raise ConfigError(f"calibration: {err}") from err


def _synthetic_source(config: Config) -> None:
    source = config.source
    if source.uri.startswith("test://"):
        from edge_matte.capture.synthetic import parse_uri

        try:
            parse_uri(source.uri, source.width, source.height, source.fps)
        except ConfigError as err:
            raise ConfigError(f"source.uri: {err}") from err


def _secret_file(section: str, file: Path | None) -> None:
    if file is not None and not file.is_file():
        raise ConfigError(f"{section}.password_file: {file}: no such file")


def _stream_secret(config: Config) -> None:
    stream = config.stream
    if not stream.enabled:
        return
    _secret_file("stream", stream.password_file)
    password = stream.resolved_password()
    if stream.username is not None and not password:
        raise ConfigError(
            "stream.username: set, but no password (stream.password, stream.password_file "
            "or the credential rtsp-password)"
        )


def _stream_port(config: Config) -> None:
    stream = config.stream
    if not stream.enabled or os.geteuid() == 0:
        return
    try:
        first = int(_UNPRIVILEGED_PORT_START.read_text())
    except (OSError, ValueError):
        first = 1024
    if stream.port < first:
        raise ConfigError(
            f"stream.port: {stream.port} is below {first}, which only root may listen on"
        )


def _port_clash(config: Config) -> None:
    """The RTSP server and the browser view on one port: the second cannot listen, so `run`
    would fail at every systemd restart while check-config called the file ok."""
    stream, http = config.stream, config.http
    if not (stream.enabled and http.enabled) or stream.port != http.port:
        return
    anywhere = ("0.0.0.0", "::")
    if stream.bind == http.bind or stream.bind in anywhere or http.bind in anywhere:
        raise ConfigError(
            f"http.port: {http.port} is stream.port too; the browser view needs another port"
        )


def _bind_addresses(config: Config) -> None:
    """A bind address that does not resolve, or is not this machine's, fails at every restart."""
    found = [
        f"{key}.bind: {section.bind!r} {problem}"
        for key, section in (("stream", config.stream), ("http", config.http))
        if section.enabled and (problem := _unbindable(section.bind)) is not None
    ]
    if found:
        raise ConfigError("; ".join(found), found)


def _unbindable(host: str) -> str | None:
    """Why no address `host` resolves to can be bound here (None: one can). Every address is
    tried: `localhost` may list ::1 first on a board with IPv6 switched off."""
    try:
        addresses = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"does not resolve ({err.strerror})"
    error = ""
    for family, kind, _, _, address in addresses:
        try:
            with socket.socket(family, kind) as probe:
                probe.bind(address)  # port 0: proves the address is ours, takes nothing
        except OSError as err:
            error = err.strerror or str(err)
        else:
            return None
    return f"is not an address of this machine ({error})"


def _mqtt(config: Config) -> None:
    mqtt = config.mqtt
    if not mqtt.enabled:
        return
    from edge_matte.control.client import build_client  # paho only with MQTT on
    from edge_matte.control.topics import Topics

    found: list[str] = []
    try:
        _secret_file("mqtt", mqtt.password_file)
    except ConfigError as err:
        found += err.problems
        mqtt = mqtt.model_copy(update={"password_file": None})  # still check the TLS files
    try:
        build_client(mqtt, Topics.from_config(mqtt))  # TLS files, password: as `run` uses them
    except ConfigError as err:
        found += err.problems
    if found:
        raise ConfigError("; ".join(found), found)


def _background(config: Config) -> None:
    compose = config.compose
    if not compose.background.startswith("#"):  # opened in every mode (switching is live)
        try:
            resolve_asset(compose.background, config.resolved_media_dir(), allow_absolute=True)
        except EdgeMatteError as err:
            raise ConfigError(f"compose.background: {err}") from err


def _views(config: Config) -> None:
    from edge_matte.output.views import (
        check_config,  # GStreamer and the HTTP server only when asked for
    )

    check_config(config)


_CHECKS: tuple[Callable[[Config], None], ...] = (
    _weights,
    _calibration,
    _synthetic_source,
    _stream_secret,
    _stream_port,
    _port_clash,
    _bind_addresses,
    _mqtt,
    _background,
    _views,
)


def check_file(path: Path, dropped: list[str] | None = None) -> list[str]:
    """Every problem of the config file `path` (with its overrides) as `run` would see them;
    the overrides `run` would not apply are added to `dropped`."""
    from edge_matte.control import overrides

    try:
        layers = overrides.load(path, problems)
    except ConfigError as err:
        return err.problems
    if dropped is not None:
        dropped += layers.dropped
    return problems(layers.effective)
