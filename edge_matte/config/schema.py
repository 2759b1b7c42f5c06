"""Typed, validated configuration (one YAML file), in the style of Frigate's config.

Every field has a default, a type, a range and a description; unknown keys are rejected, so a
typo is an error rather than a silently ignored setting. The defaults give a working daemon:
the synthetic `test://` source, the weight-free engine, RTSP on port 8554.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
import socket
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_matte.config import redact
from edge_matte.errors import ConfigError

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_SHORT = reprlib.Repr()  # rejected values are echoed, but never at length (YAML alias bombs)
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 80, 80, 2
_HOST = r"^[A-Za-z0-9._:-]{1,253}$"  # a name or an IPv4/IPv6 address: what paho and GLib accept
_TOPIC_PART = r"^[A-Za-z0-9_/-]{1,64}$"  # no MQTT wildcards (+ #), no NUL, never empty
MQTT_ID_MAX_BYTES = 65535  # an MQTT UTF-8 string's length field; brokers must take 1-23 bytes
NAME_MAX_BYTES = 255  # one path component (ext4, NAME_MAX)
BACKGROUND_MAX_CHARS = 1024


class Section(BaseModel):
    """Base of every config section: unknown keys forbidden, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


ModelT = TypeVar("ModelT", bound=Section)


def _secret_from(value: SecretStr | None, file: Path | None, credential: str) -> str | None:
    """Resolve a secret: inline value, else a file, else a systemd credential of that name."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return _read_secret_file(file)
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).is_file():
        return _read_secret_file(Path(cred_dir) / credential)
    return None


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"cannot read secret file {path}: {err.strerror}") from err


FlipMethod = Literal[
    "none",
    "counterclockwise",
    "rotate-180",
    "clockwise",
    "horizontal-flip",
    "upper-right-diagonal",
    "vertical-flip",
    "upper-left-diagonal",
]  # jetson-utils' videoOptions::FlipMethod names


def _no_control_characters(value: str) -> None:
    """ValueError for a value holding line breaks, terminal escapes or NUL: it would be
    written into log lines, files and messages as it is."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("contains a control character")


class SourceConfig(Section):
    uri: str = Field(
        "test://",
        description="Frame source: csi://N, v4l2:///dev/videoN, file:///path, rtsp://..., test://",
    )
    width: int = Field(
        1280, ge=16, le=7680, multiple_of=2, description="Requested frame width in pixels"
    )
    height: int = Field(
        720, ge=16, le=4320, multiple_of=2, description="Requested frame height in pixels"
    )
    fps: float = Field(30.0, gt=0, le=240, description="Requested frame rate")
    loop: bool = Field(True, description="Restart a file source at its end")
    timeout_s: float = Field(
        5.0, gt=0, le=120, description="No frame for this long means the camera is lost"
    )
    reconnect_min_s: float = Field(
        0.5, gt=0, le=60, description="First retry delay after the source is lost"
    )
    reconnect_max_s: float = Field(
        10.0, gt=0, le=600, description="Longest retry delay (exponential backoff)"
    )
    flip: FlipMethod | None = Field(
        None,
        description="jetson-utils sources (csi://, v4l2:// on a Jetson): its --input-flip; None = its default, which on JetPack 5/6 rotates csi:// 180 degrees (it swaps none and rotate-180 there)",
    )
    ready_wait_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="At start, how long READY=1 waits for the camera's first frame; then the daemon reports ready anyway, serving NO SIGNAL with a problem",
    )

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        if not re.match(r"^(csi|v4l2|file|rtsp|rtsps|test)://", uri):
            raise ValueError("unsupported scheme: use csi://, v4l2://, file://, rtsp:// or test://")
        _no_control_characters(uri)  # it is logged and published
        try:  # what the opener does with it: a malformed one fails there on every retry
            urlsplit(uri).port  # noqa: B018 - parsed for its ValueError
        except ValueError as err:
            raise ValueError(f"is not a valid URI ({err})") from err
        return uri

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class ClassicConfig(Section):
    noise_floor: float | None = Field(
        None,
        ge=0,
        le=255,
        description="Colour distance treated as noise, in the engine's detection units (8-bit levels after its 3x3 mean at working resolution); None = from the calibration profile (converted) or estimated per frame",
    )
    softness: float = Field(
        3.0,
        gt=0,
        le=50,
        description="Alpha ramps from 0 at the noise floor to 1 at (1 + softness) x floor",
    )
    min_blob_area: float = Field(
        0.002,
        ge=0,
        le=0.5,
        description="Foreground blobs smaller than this fraction of the frame are removed",
    )
    guided_radius: int = Field(
        4,
        ge=0,
        le=64,
        description="Guided-filter radius and boundary half-width, in working pixels (long side 640)",
    )
    guided_eps: float = Field(1e-4, gt=0, le=1, description="Guided-filter regularisation")


class RegionConfig(Section):
    enabled: bool = Field(
        True,
        description="Run the network only on the part of the frame that can hold the subject (plate difference + last alpha)",
    )
    threshold: float = Field(
        8.0,
        ge=0,
        le=255,
        description="Frame-plate difference (8-bit levels) that marks a pixel as possibly foreground",
    )
    margin: int = Field(
        32, ge=0, le=1024, description="Pixels added around the possible foreground"
    )
    min_size: int = Field(256, ge=16, le=4096, description="Smallest crop side in pixels")
    max_fraction: float = Field(
        0.6, gt=0, le=1, description="Above this fraction of the frame, run on the whole frame"
    )


class MattingConfig(Section):
    engine: Literal["auto", "trt", "torch-cuda", "torch-cpu", "classic"] = Field(
        "auto",
        description="auto = best available: trt -> torch-cuda -> torch-cpu -> classic (classic if no weights)",
    )
    weights: Path | None = Field(
        None,
        description="Official BackgroundMattingV2 MobileNetV2 checkpoint (pytorch_mobilenetv2.pth); None = weight-free classic engine",
    )
    backbone_scale: float = Field(
        0.25,
        gt=0,
        le=0.5,
        description="Scale of the base network's input (paper: 1/4 for HD, 1/8 for 4K)",
    )
    refine_mode: Literal["full", "sampling", "thresholding"] = Field(
        "sampling", description="Refiner patch selection"
    )
    refine_sample_pixels: int = Field(
        80_000, ge=16, le=10_000_000, description="Pixels refined in sampling mode (patches of 4x4)"
    )
    refine_threshold: float = Field(
        0.1, ge=0, le=1, description="Error threshold in thresholding mode"
    )
    refine_kernel_size: Literal[1, 3] = Field(3, description="Refiner convolution kernel size")
    threads: int = Field(0, ge=0, le=256, description="CPU threads for torch (0 = torch's default)")
    cache_dir: Path | None = Field(
        None, description="TensorRT engine cache; None = $CACHE_DIRECTORY or ~/.cache/edge-matte"
    )
    cpu_optimize: bool = Field(
        True,
        description="On the CPU: fold BatchNorm, channels-last, windowed refiner input (same FP32 result within 1e-4)",
    )
    cpu_backend: Literal["torch", "onnxruntime"] = Field(
        "torch", description="CPU backend for the base network (onnxruntime needs the 'onnx' extra)"
    )
    region: RegionConfig = Field(default_factory=RegionConfig)
    classic: ClassicConfig = Field(default_factory=ClassicConfig)


class PlateConfig(Section):
    auto: bool = Field(True, description="Capture and refresh the plate automatically")
    path: Path | None = Field(
        None, description="Where the plate is saved; None = <state_dir>/plate.png"
    )
    stillness_s: float = Field(
        2.0, ge=0, le=600, description="The scene must be still this long before capture"
    )
    capture_frames: int = Field(
        15, ge=1, le=300, description="Frames combined (temporal median) into a plate"
    )
    refresh_threshold: float = Field(
        6.0,
        gt=0,
        le=255,
        description="Mean absolute plate drift (8-bit levels) that triggers a recapture when empty",
    )
    update_rate: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Running-average rate for background pixels while someone is in view",
    )
    max_shift_px: float = Field(
        12.0,
        ge=0,
        le=512,
        description="Camera shifts up to this are compensated by warping the plate; larger ones trigger recapture",
    )
    person_veto: bool = Field(
        False, description="Use OpenCV's HOG person detector as a veto on capture"
    )
    people_evidence: bool = Field(
        True,
        description="Run OpenCV's HOG people detector once a second while a plate is built: a person standing still never becomes plate",
    )
    until_ready: Literal["replacement", "blur", "room"] = Field(
        "replacement",
        description="What viewers see while no usable plate exists: the replacement background only, the room blurred past recognition, or the room as it is",
    )


class ComposeConfig(Section):
    mode: Literal["replace", "blur", "passthrough"] = Field(
        "replace", description="What replaces the background"
    )
    background: str = Field(
        "#1e5aa0",
        description="For replace: #RRGGBB, or an image/video file name inside media_dir (or an absolute path)",
    )
    media_dir: Path | None = Field(
        None, description="Directory of replacement assets; None = <state_dir>/media"
    )
    blur_sigma: float = Field(15.0, gt=0, le=200, description="Gaussian sigma for blur mode")
    upload_max_bytes: int = Field(
        8_000_000,
        ge=1024,
        le=64_000_000,
        description="Largest image accepted by cmd/background/set image_base64 (decoded bytes)",
    )
    upload_max_files: int = Field(
        10, ge=1, le=1000, description="Uploaded images kept in media_dir (oldest unused removed)"
    )
    upload_max_total_bytes: int = Field(
        50_000_000,
        ge=1024,
        le=10_000_000_000,
        description="Bytes all kept uploads may take together (oldest unused removed)",
    )

    @field_validator("background")
    @classmethod
    def _background_name(cls, value: str) -> str:
        if not value or len(value) > BACKGROUND_MAX_CHARS:
            raise ValueError(f"must be 1 to {BACKGROUND_MAX_CHARS} characters")
        _no_control_characters(value)
        if any(len(part.encode()) > NAME_MAX_BYTES for part in value.split("/")):
            raise ValueError(f"a file name part is longer than {NAME_MAX_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _check(self) -> ComposeConfig:
        if self.background.startswith("#") and not _COLOUR.match(self.background):
            raise ValueError(f"background colour {self.background!r} is not #RRGGBB")
        return self


def _composite_only() -> list[Literal["composite", "alpha", "debug"]]:
    """`stream.outputs`' default: a fresh list for each config."""
    return ["composite"]


class StreamConfig(Section):
    enabled: bool = Field(True, description="Serve the outputs over RTSP")
    bind: str = Field(
        "0.0.0.0",
        pattern=_HOST,
        description="Address the RTSP server listens on (0.0.0.0 = all interfaces)",
    )
    port: int = Field(8554, ge=1, le=65535, description="RTSP port")
    outputs: list[Literal["composite", "alpha", "debug"]] = Field(
        default_factory=_composite_only,
        min_length=1,
        description="Mount points served: rtsp://HOST:PORT/<name>",
    )
    encoder: Literal["auto", "x264", "nvv4l2"] = Field(
        "auto", description="auto = nvv4l2h264enc if present, else x264enc"
    )
    bitrate_kbps: int = Field(4000, ge=100, le=100_000, description="H.264 bitrate")
    keyframe_interval: int = Field(
        30,
        ge=1,
        le=600,
        description="Frames between keyframes (late joiners wait at most this long)",
    )
    username: str | None = Field(None, description="RTSP basic-auth user (None = no auth)")
    password: SecretStr | None = Field(None, description="RTSP basic-auth password")
    password_file: Path | None = Field(
        None, description="File holding the RTSP password (else credential 'rtsp-password')"
    )

    @field_validator("outputs")
    @classmethod
    def _outputs_once(cls, value: list[str]) -> list[str]:
        """Each mount point once: a repeated name was served once but reported twice."""
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value

    def resolved_password(self) -> str | None:
        return _secret_from(self.password, self.password_file, "rtsp-password")


class DisplayConfig(Section):
    enabled: bool = Field(False, description="Show a view fullscreen on the device's own screen")
    sink: str = Field(
        "auto",
        pattern=r"^[a-z0-9_-]{1,64}$",
        description="GStreamer video sink; auto = nvdrmvideosink/nv3dsink on a Jetson, kmssink without X, xvimagesink or ximagesink under X",
    )
    output: Literal["composite", "alpha", "debug"] = Field("composite", description="View shown")
    rotate: Literal[0, 90, 180, 270] = Field(
        0, description="Clockwise rotation in degrees (portrait kiosk screens)"
    )
    fit: Literal["contain", "cover", "stretch"] = Field(
        "contain",
        description="Scaling to the screen's mode: contain letterboxes, cover crops, stretch distorts",
    )


class HttpConfig(Section):
    enabled: bool = Field(
        False,
        description="Serve a browser view: /, /stream.mjpg, /snapshot.jpg, /healthz, /state.json",
    )
    bind: str = Field(
        "127.0.0.1",
        pattern=_HOST,
        description="Address to listen on; anything but loopback needs a password",
    )
    port: int = Field(8080, ge=1, le=65535, description="HTTP port")
    username: str = Field(
        "admin", pattern=r"^[^:\s]{1,64}$", description="Basic-auth user (when a password is set)"
    )
    password_file: Path | None = Field(
        None, description="File holding the HTTP password (else credential 'http-password')"
    )
    max_clients: int = Field(8, ge=1, le=256, description="Concurrent MJPEG viewers at most")
    fps: float = Field(10.0, gt=0, le=60, description="MJPEG frame rate at most")
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality")
    output: Literal["composite", "alpha", "debug"] = Field("composite", description="View served")

    def resolved_password(self) -> str | None:
        return _secret_from(None, self.password_file, "http-password")


class TlsConfig(Section):
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker")
    cert_file: Path | None = Field(None, description="Client certificate")
    key_file: Path | None = Field(None, description="Client key")
    insecure: bool = Field(False, description="Skip hostname verification (testing only)")


class MqttConfig(Section):
    enabled: bool = Field(False, description="Connect to an MQTT broker for control and telemetry")
    host: str = Field("localhost", pattern=_HOST, description="Broker host")
    port: int = Field(1883, ge=1, le=65535, description="Broker port")
    protocol: Literal["3.1.1", "5"] = Field(
        "5",
        description="MQTT protocol version (5 shows retained requests as retained; 3.1.1 only at subscription)",
    )
    client_id: str | None = Field(
        None,
        description="Client id, 1-65535 bytes (brokers must accept 1-23 of [0-9a-zA-Z]); None = edge-matte-<device_id>",
    )
    device_id: str = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()),
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="This device's id in topics",
    )
    group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Fleet group: also obey edge-matte/group/<group>/...",
    )
    topic_prefix: str = Field(
        "edge-matte",
        pattern=_TOPIC_PART,
        description="Topics are <prefix>/<device_id>/...",
    )
    username: str | None = Field(None, description="Broker user")
    password: SecretStr | None = Field(None, description="Broker password")
    password_file: Path | None = Field(
        None, description="File holding the broker password (else credential 'mqtt-password')"
    )
    tls: TlsConfig | None = Field(None, description="TLS settings; None = plain TCP")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    telemetry_interval_s: float = Field(
        10.0, ge=0.2, le=3600, description="Seconds between telemetry messages"
    )
    max_payload_bytes: int = Field(
        4_000_000, ge=1024, le=64_000_000, description="Larger command payloads are refused"
    )
    homeassistant: bool = Field(False, description="Publish Home Assistant MQTT discovery")
    discovery_prefix: str = Field(
        "homeassistant", pattern=_TOPIC_PART, description="Home Assistant discovery prefix"
    )

    image_interval_s: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="Publish a retained JPEG of the composite on <base>/image at most this often (a Home Assistant image entity); 0 = off",
    )
    image_max_bytes: int = Field(
        200_000,
        ge=10_000,
        le=4_000_000,
        description="Largest retained image; a bigger JPEG is scaled down until it fits",
    )
    configuration_url: str | None = Field(
        None,
        description="Link shown on the device's Home Assistant page (e.g. its HTTP view); None = none",
    )

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value.encode()) <= MQTT_ID_MAX_BYTES:
            raise ValueError(f"must be 1 to {MQTT_ID_MAX_BYTES} bytes of UTF-8")
        if value is not None and "\x00" in value:
            raise ValueError("contains a NUL character")
        return value

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        """`<prefix>/group/` holds the fleet groups' topics: a device of that name would read
        and answer in their namespace."""
        if value == "group":
            raise ValueError("'group' is reserved for fleet topics (<prefix>/group/<group>/...)")
        return value

    @field_validator("configuration_url")
    @classmethod
    def _configuration_url(cls, value: str | None) -> str | None:
        """Published retained to every subscriber: no user:password in it (the browser view's
        own `http://user:PASSWORD@device/` form belongs in signage players, not here)."""
        if value is not None:
            _no_control_characters(value)
            try:
                has_user = "@" in urlsplit(value).netloc
            except ValueError as err:
                raise ValueError(f"is not a valid URL ({err})") from err
            if has_user:
                raise ValueError("must not hold a user or password: it is published to everyone")
        return value

    def resolved_password(self) -> str | None:
        return _secret_from(self.password, self.password_file, "mqtt-password")


class Config(Section):
    """The whole daemon configuration."""

    state_dir: Path | None = Field(
        None,
        description="Plate, media and saved state; None = $STATE_DIRECTORY or ~/.local/state/edge-matte",
    )
    calibration: Path | None = Field(
        None, description="Calibration profile (edge-matte calibrate) to load"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    source: SourceConfig = Field(default_factory=SourceConfig)
    matting: MattingConfig = Field(default_factory=MattingConfig)
    plate: PlateConfig = Field(default_factory=PlateConfig)
    compose: ComposeConfig = Field(default_factory=ComposeConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    display: DisplayConfig = Field(default_factory=DisplayConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        env = os.environ.get("STATE_DIRECTORY")
        return Path(env.split(":")[0]) if env else Path.home() / ".local/state/edge-matte"

    def resolved_cache_dir(self) -> Path:
        if self.matting.cache_dir is not None:
            return self.matting.cache_dir
        env = os.environ.get("CACHE_DIRECTORY")
        return Path(env.split(":")[0]) if env else Path.home() / ".cache/edge-matte"

    def resolved_media_dir(self) -> Path:
        return self.compose.media_dir or self.resolved_state_dir() / "media"

    def resolved_plate_path(self) -> Path:
        return self.plate.path or self.resolved_state_dir() / "plate.png"

    def to_json(self) -> dict[str, Any]:
        """The effective config as plain JSON (secrets masked, camera credentials included)."""
        data = self.model_dump(mode="json", exclude_none=False)
        data["source"]["uri"] = redact.mask_uri(self.source.uri)
        return data

    def digest(self) -> str:
        """A short hash identifying this config (reported in state)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def format_errors(err: ValidationError) -> list[str]:
    """One line per problem: dotted key, the value given, and why it is wrong."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "<root>"
        if problem["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {problem['msg']} (got {_SHORT.repr(problem.get('input'))})")
    return lines


MOST_ERRORS = 20


def capped(lines: list[str], most: int = MOST_ERRORS) -> list[str]:
    """At most `most` problems, each of bounded length (a YAML alias bomb or a patch of
    200,000 unknown keys can make thousands, and keys themselves can be megabytes)."""
    more = [f"... and {len(lines) - most} more"] if len(lines) > most else []
    return [redact.shorten(line) for line in lines[:most]] + more


def parse(data: Any, origin: str = "config") -> Config:
    """Validate a mapping into a Config, or raise ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: top level must be a mapping, got {type(data).__name__}")
    return validate(Config, data, origin)


def validate(model: type[ModelT], data: Any, origin: str) -> ModelT:
    """`model` validated from `data`, or ConfigError with one problem per line."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = capped(format_errors(err))
        raise ConfigError(
            f"{origin}: " + "; ".join(lines), [f"{origin}: {line}" for line in lines]
        ) from err


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error, not a silent
    override (the operator would believe the first value is in force)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_SHORT.repr(key)}", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "config") -> Any:
    """The YAML document in `path`; ConfigError (naming the file) for every way it can be bad.

    The one loader for the config, the overrides file and calibration profiles."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: {what} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from err
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {what} is not valid YAML: {err}") from err
    except RecursionError as err:
        raise ConfigError(f"{path}: {what} is nested too deeply") from err


def load(path: Path | None) -> Config:
    """Read and validate a YAML config file; None gives the defaults."""
    if path is None:
        return Config()
    return parse(read_yaml(path), str(path))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: dicts merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(config: Config, patch: Any) -> Config:
    """A new Config with `patch` merged in; raise ConfigError naming keys and change nothing."""
    if not isinstance(patch, dict):
        raise ConfigError(f"patch must be a JSON object, got {type(patch).__name__}")
    current = _reveal_secrets(config, config.model_dump(mode="json", exclude_unset=True))
    return parse(merge_patch(current, patch), "patch")


def _reveal_secrets(config: Config, data: dict[str, Any]) -> dict[str, Any]:
    for section in ("stream", "mqtt"):
        secret = getattr(config, section).password
        if secret is not None and section in data:
            data[section]["password"] = secret.get_secret_value()
    return data
