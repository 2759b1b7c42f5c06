"""What a remote controller may change, and what only the device's owner may.

A kiosk operator (MQTT `config/set`) changes how the picture looks: compositing, the background
from the media directory, matting and plate knobs, the stream's outputs and bitrate, and which
camera is used. Everything about the control channel itself (`mqtt.*`), stream authentication
and binding, every path, secrets, quotas and tuning are the device owner's: changed only in the
config file. A patch that touches any of them is refused whole, naming each key, before
anything is opened or applied.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edge_matte.capture.opener import uri_path
from edge_matte.config.redact import shorten
from edge_matte.config.schema import Config, capped
from edge_matte.errors import ConfigError, MediaError
from edge_matte.output.media import resolve_asset

# Dotted keys (a section name covers all its keys) a remote patch may change; nothing else.
REMOTE_KEYS = (
    "source.uri",
    "source.width",
    "source.height",
    "source.fps",
    "source.loop",
    "matting.engine",
    "matting.backbone_scale",
    "matting.refine_mode",
    "matting.refine_sample_pixels",
    "matting.refine_threshold",
    "matting.refine_kernel_size",
    "matting.region",
    "matting.classic",
    "plate.auto",
    "plate.stillness_s",
    "plate.capture_frames",
    "plate.refresh_threshold",
    "plate.update_rate",
    "plate.max_shift_px",
    "plate.person_veto",
    "plate.people_evidence",
    "plate.until_ready",
    "compose.mode",
    "compose.background",
    "compose.blur_sigma",
    "display.output",
    "display.rotate",
    "display.fit",
    "stream.outputs",
    "stream.bitrate_kbps",
    "stream.keyframe_interval",
)
# Cameras a remote controller may choose; file:// only inside the media directory.
_CAMERAS = (
    re.compile(r"^csi://[0-9]{1,2}$"),
    re.compile(r"^v4l2:///dev/video[0-9]{1,3}$"),
    re.compile(r"^rtsps?://[^\s]+$"),
    re.compile(r"^test://"),  # the synthetic room: reads nothing on the device
)


def is_remote(key: str) -> bool:
    """Whether dotted `key` may be changed over MQTT."""
    return any(key == allowed or key.startswith(allowed + ".") for allowed in REMOTE_KEYS)


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings as dotted key -> value (lists and empty mappings are values)."""
    flat: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        prefix, value = stack.pop()
        if isinstance(value, dict) and value:
            stack.extend(
                (f"{prefix}.{key}" if prefix else str(key), item) for key, item in value.items()
            )
        else:
            flat[prefix] = value
    return flat


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ between `old` and `new`, sorted."""
    before, after = flatten(old.model_dump()), flatten(new.model_dump())  # secrets by value
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def refuse(old: Config, new: Config) -> None:
    """ConfigError unless a remote controller may turn `old` into `new`.

    Only reads the two configs (and, for a file:// camera or a background asset, resolves a
    name in the media directory): nothing named by the patch is opened before it is allowed.
    """
    changed = changed_keys(old, new)
    device_only = [key for key in changed if not is_remote(key)]
    if device_only:
        lines = capped(
            [f"{key}: can only be changed in the config file on the device" for key in device_only]
        )
        raise ConfigError("; ".join(lines), lines)
    if "source.uri" in changed:
        _check_camera(new.source.uri, new.resolved_media_dir())
    if "compose.background" in changed:
        _confine_background(new.compose.background, new.resolved_media_dir())


def _confine_background(background: str, media_dir: Path) -> None:
    """A remotely chosen background asset must lie inside the media directory. Checked here,
    not only by the live compositor update: a change that also rebuilds the pipeline builds a
    new compositor, which trusts its config like the operator's file."""
    if not background.startswith("#"):
        try:
            resolve_asset(background, media_dir)
        except MediaError as err:
            raise ConfigError(f"compose.background: {err}") from err


def _check_camera(uri: str, media_dir: Path) -> None:
    if any(pattern.match(uri) for pattern in _CAMERAS):
        return
    if uri.startswith("file://"):
        try:
            path = uri_path(uri)
            if not path.startswith("/"):  # the opener would read it from its working directory
                raise MediaError(
                    f"{shorten(repr(path), 100)} is not an absolute path (file:///...)"
                )
            resolve_asset(path, media_dir)
        except (MediaError, ValueError) as err:
            raise ConfigError(
                f"source.uri: a file source must be in the media directory ({err})"
            ) from err
        return
    raise ConfigError(
        "source.uri: over MQTT only csi://N, v4l2:///dev/videoN, rtsp://... and file:// inside "
        "the media directory can be chosen"
    )
