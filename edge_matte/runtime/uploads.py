"""Images uploaded over MQTT (`cmd/background/set {"image_base64": ...}`), within quotas.

An upload is decoded and checked as an image before anything is written, re-encoded as PNG and
kept in the media directory as `upload-<hash>.png`. Three limits from `compose` bound the disk
a remote controller can use: the size of one upload, how many are kept and their total bytes.
To make room the oldest uploads not in use (not the current background) are removed; an upload
that cannot fit even then is refused and nothing is written or removed.
`background_change` turns a `background/set` command into the config change it asks for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from pathlib import Path
from typing import Any

import cv2

from edge_matte import atomic
from edge_matte.config.schema import ComposeConfig, Config, apply_patch
from edge_matte.errors import MediaError, StorageError
from edge_matte.output.media import decode_image, resolve_asset

_LOG = logging.getLogger(__name__)
PREFIX = "upload-"


def background_change(args: dict[str, Any], config: Config) -> tuple[str, Config]:
    """The background `background/set` names (a file in the media directory, or an image
    uploaded now and stored there) and `config` replacing the background with it."""
    media_dir = config.resolved_media_dir()
    if "name" in args:
        name = str(args["name"])
        resolve_asset(name, media_dir)  # confinement check before anything changes
    elif "image_base64" in args:
        name = store(str(args["image_base64"]), media_dir, config.compose)
    else:
        raise MediaError("background/set needs 'name' or 'image_base64'")
    return name, apply_patch(config, {"compose": {"mode": "replace", "background": name}})


def store(encoded: str, media_dir: Path, compose: ComposeConfig) -> str:
    """Save an uploaded image; return its name in `media_dir`. MediaError if refused."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise MediaError(f"image_base64 is not valid base64: {err}") from err
    if len(data) > compose.upload_max_bytes:
        raise MediaError(
            f"image_base64: {len(data)} bytes is larger than compose.upload_max_bytes "
            f"({compose.upload_max_bytes})"
        )
    image = decode_image(data)  # refuse non-images and bombs before writing anything
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise MediaError("could not re-encode the uploaded image")
    name = f"{PREFIX}{hashlib.sha256(data).hexdigest()[:12]}.png"
    _make_room(media_dir, compose, name, len(png))
    atomic.write_bytes(media_dir / name, png.tobytes())
    return name


def kept(media_dir: Path) -> list[Path]:
    """The uploads in `media_dir`, oldest first."""
    try:
        found = [path for path in media_dir.glob(f"{PREFIX}*.png") if path.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda path: (path.stat().st_mtime, path.name))


def _make_room(media_dir: Path, compose: ComposeConfig, name: str, size: int) -> None:
    """Remove the oldest unused uploads until `name` of `size` bytes fits the quotas."""
    others = [path for path in kept(media_dir) if path.name != name]
    sizes = {path: path.stat().st_size for path in others}
    in_use = [path for path in others if path.name == compose.background]
    if (
        len(in_use) + 1 > compose.upload_max_files
        or sum(sizes[path] for path in in_use) + size > compose.upload_max_total_bytes
    ):
        raise MediaError(
            f"image_base64: {size} bytes as PNG do not fit compose.upload_max_total_bytes "
            f"({compose.upload_max_total_bytes}) beside the background in use"
        )
    removable = [path for path in others if path not in in_use]
    count, total = len(others) + 1, sum(sizes.values()) + size
    while removable and (
        count > compose.upload_max_files or total > compose.upload_max_total_bytes
    ):
        oldest = removable.pop(0)
        try:
            oldest.unlink()
        except OSError as err:
            raise StorageError(f"cannot remove the old upload {oldest}: {err.strerror}") from err
        count, total = count - 1, total - sizes[oldest]
        _LOG.info("removed the unused upload %s (upload quota)", oldest.name)
