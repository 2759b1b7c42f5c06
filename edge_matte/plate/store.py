"""Plate persistence: a PNG and a JSON sidecar, each replaced atomically.

The JSON is written first and carries the SHA-256 of the new PNG and, under "previous", the
record of the PNG still on disk; then the PNG is replaced. A kill -9 between the two leaves the
old PNG beside the new JSON, whose "previous" still describes it, so the old plate loads with
its own metadata: after any crash the pair is the old plate or the new one. A PNG that matches
neither checksum is rejected, so a plate is never paired with another plate's metadata.

The plate's variability map (how much each pixel moves when the room is empty, see
`estimator`) travels inside the JSON record, as a small PNG (at most `_MAP_WIDTH` wide, max-pooled
so a swaying branch is not averaged away) in base64: it is replaced in the same atomic write as
the rest of the metadata and always belongs to the PNG the record describes. Records saved
without one (before the map existed) load with `variability` None.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_matte import atomic
from edge_matte.errors import MediaError

_LOG = logging.getLogger(__name__)

_VERSION = 1
_PNG_LEVEL = 1  # fast: a 720p plate encodes in tens of ms
_MAP_WIDTH = 320  # the variability map is stored at most this wide (a few kB)


@dataclass(frozen=True)
class PlateMeta:
    """What is known about a saved plate."""

    created: float  # time.time() when it was made
    source_uri: str
    width: int
    height: int
    profile: str | None  # calibration profile name in use, if any
    method: str  # "median", "per-pixel" or "file"
    known_fraction: float
    variability: np.ndarray | None = field(default=None, compare=False)  # uint8 HxW levels


def sidecar(path: Path) -> Path:
    """The metadata file saved next to plate `path`."""
    return Path(path).with_suffix(".json")


def save(path: Path, image: np.ndarray, meta: PlateMeta) -> None:
    """Write plate and metadata atomically; raise StorageError (old files intact) on failure."""
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL])
    if not ok:
        raise MediaError(f"cannot encode the plate for {path} as PNG")
    data = png.tobytes()
    fields = {key: value for key, value in asdict(meta).items() if key != "variability"}
    record = {
        "version": _VERSION,
        **fields,
        "variability": _encode_map(meta.variability),
        "created_iso": datetime.fromtimestamp(meta.created, timezone.utc).isoformat(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "previous": _record_on_disk(Path(path)),
    }
    atomic.write_text(sidecar(path), json.dumps(record, indent=2) + "\n")
    atomic.write_bytes(path, data)


def _encode_map(variability: np.ndarray | None) -> str | None:
    """The variability map as base64 PNG text, max-pooled down to at most `_MAP_WIDTH` wide."""
    if variability is None:
        return None
    factor = max(1, -(-variability.shape[1] // _MAP_WIDTH))
    if factor > 1:
        pooled = cv2.dilate(variability, np.ones((factor, factor), np.uint8))
        variability = np.ascontiguousarray(pooled[::factor, ::factor])
    ok, png = cv2.imencode(".png", variability, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise MediaError("cannot encode the variability map as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")


def _decode_map(text: object, width: int, height: int) -> np.ndarray | None:
    """The stored variability map at the plate's size; None when the record has none."""
    if text is None:
        return None
    try:
        data = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"variability is not base64: {err}") from err
    try:
        small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error:  # OpenCV asserts on some inputs (no bytes at all) instead of failing
        small = None
    if small is None:
        raise ValueError("variability is not a PNG image")
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def _record_on_disk(path: Path) -> dict[str, Any] | None:
    """The metadata record of the PNG now at `path`, or None if there is no valid pair."""
    try:
        record = json.loads(sidecar(path).read_text(encoding="utf-8"))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):  # missing, unreadable or not JSON: nothing to fall back to
        return None
    return _matching(record, digest)


def _matching(record: object, digest: str) -> dict[str, Any] | None:
    """The record (or its "previous") whose checksum is `digest`, without its own "previous"."""
    candidates = (record, record.get("previous")) if isinstance(record, dict) else ()
    for candidate in candidates:
        if isinstance(candidate, dict) and candidate.get("sha256") == digest:
            return {key: value for key, value in candidate.items() if key != "previous"}
    return None


def load(path: Path) -> tuple[np.ndarray, PlateMeta]:
    """Read a saved plate and its metadata; raise MediaError naming what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
        record = json.loads(sidecar(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise MediaError(f"{err.filename}: cannot read saved plate: {err.strerror}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MediaError(f"{sidecar(path)}: plate metadata is not valid JSON: {err}") from err
    _meta(record, path)  # MediaError unless it is plate metadata at all
    matching = _matching(record, hashlib.sha256(data).hexdigest())
    if matching is None:
        raise MediaError(f"{path}: plate does not match its metadata (checksum differs)")
    meta = _meta(matching, path)
    image = decode(data, path)
    if image.shape[:2] != (meta.height, meta.width):
        raise MediaError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]}, metadata says {meta.width}x{meta.height}"
        )
    return image, meta


def _meta(record: object, path: Path) -> PlateMeta:
    if not isinstance(record, dict) or record.get("version") != _VERSION:
        raise MediaError(f"{sidecar(path)}: not plate metadata version {_VERSION}")
    try:
        width, height = int(record["width"]), int(record["height"])
        return PlateMeta(
            created=float(record["created"]),
            source_uri=str(record["source_uri"]),
            width=width,
            height=height,
            profile=None if record["profile"] is None else str(record["profile"]),
            method=str(record["method"]),
            known_fraction=float(record["known_fraction"]),
            variability=_decode_map(record.get("variability"), width, height),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise MediaError(
            f"{sidecar(path)}: plate metadata field missing or invalid: {err}"
        ) from err


def decode(data: bytes, name: Path) -> np.ndarray:
    """Decode image bytes to BGR uint8; MediaError when they are not an image OpenCV reads."""
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:  # OpenCV asserts on some inputs (an empty file) instead of failing
        raise MediaError(f"{name}: not a readable image") from err
    if image is None:
        raise MediaError(f"{name}: not a readable image")
    return image


class PlateFile:
    """The keeper's saved plate: where it lives and which source and profile it belongs to."""

    def __init__(self, path: Path, source_uri: str, profile: str | None) -> None:
        self.path = Path(path)
        self._source_uri = source_uri
        self._profile = profile

    def save(
        self,
        image: np.ndarray,
        method: str,
        known_fraction: float,
        created: float,
        variability: np.ndarray | None = None,
    ) -> None:
        """Save atomically; StorageError or MediaError (old files intact) on failure."""
        height, width = image.shape[:2]
        meta = PlateMeta(
            created,
            self._source_uri,
            width,
            height,
            self._profile,
            method,
            known_fraction,
            variability,
        )
        save(self.path, image, meta)

    def load(self, width: int, height: int) -> tuple[np.ndarray, PlateMeta] | None:
        """The saved plate if there is one (None); MediaError if it is damaged or not for these frames."""
        if not self.path.exists():
            return None
        image, meta = load(self.path)
        if (meta.width, meta.height) != (width, height):
            raise MediaError(
                f"{self.path}: made at {meta.width}x{meta.height}, frames are {width}x{height}"
            )
        if meta.source_uri != self._source_uri:
            raise MediaError(
                f"{self.path}: made for source {meta.source_uri!r}, now {self._source_uri!r}"
            )
        if meta.profile != self._profile:
            _LOG.info("saved plate was made under profile %s, now %s", meta.profile, self._profile)
        return image, meta

    def remove(self) -> None:
        """Delete the saved plate; OSError if that fails."""
        remove(self.path)


def remove(path: Path) -> None:
    """Delete a saved plate and its metadata if present (the JSON first, so no orphan is trusted)."""
    for file in (sidecar(path), Path(path)):
        file.unlink(missing_ok=True)
