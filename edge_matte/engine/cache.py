"""Converted engines kept across restarts, keyed by everything that makes one valid.

A TensorRT engine is valid only for the weights, shapes, precision, TensorRT version and GPU
that built it, and building takes minutes on a Jetson. Each entry is two files in the cache
directory: `<key>.engine`, the module's state dict, and `<key>.json`, a manifest with the fields
the key was made from and the engine file's size and SHA-256. Both are written atomically, the
manifest last, so an entry is complete or absent. Loading is never fatal: a missing entry is a
miss, and a stale or corrupt one is logged and reported as a miss, so the caller rebuilds and
`save` replaces it.

A build that failed is remembered as `<key>.failed` (the fields and the reason), so a restart
does not spend minutes repeating a build that cannot succeed: a change of weights, shapes,
TensorRT version or GPU is a new key, and `forget_failures` (`edge-matte run --rebuild`) clears
them all.

State dicts are stored with `torch.save` and read back with `weights_only=True` (no code runs
on load). TRTModule keeps its serialized engine as a `bytearray`, which older torch refuses
under `weights_only`, so top-level bytes values travel as uint8 tensors and are turned back.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from edge_matte import atomic
from edge_matte.errors import StorageError

_LOG = logging.getLogger(__name__)

FORMAT = 1  # bump when the entry layout changes: every older entry becomes stale

Fields = Mapping[str, Any]  # JSON-serialisable values (str, int, float, bool, lists)


def cache_key(fields: Fields) -> str:
    """SHA-256 (hex) of the fields and the entry format, independent of the fields' order."""
    return hashlib.sha256(_canonical({"format": FORMAT, **fields}).encode("utf-8")).hexdigest()


class EngineCache:
    """A directory of engine state dicts; `load` returns None instead of ever failing.

    Args:
        directory: where entries live (created on the first save).
        environment: field names that describe the machine rather than the model (TensorRT
            version, GPU). An entry that differs from a newly saved one only in these can never
            be used here again (e.g. after a JetPack upgrade), so `save` removes it.
    """

    def __init__(self, directory: Path, environment: Iterable[str] = ()) -> None:
        self.directory = Path(directory)
        self._environment = frozenset(environment)

    def paths(self, fields: Fields) -> tuple[Path, Path]:
        """(engine file, manifest) of the entry for `fields`."""
        key = cache_key(fields)
        return self.directory / f"{key}.engine", self.directory / f"{key}.json"

    def load(self, fields: Fields) -> dict[str, Any] | None:
        """The state dict saved for `fields`, or None when absent, stale or corrupt (logged)."""
        blob_path, manifest_path = self.paths(fields)
        if not manifest_path.exists():
            _LOG.debug("no cached engine %s", manifest_path.stem)
            return None
        try:
            manifest = _read_manifest(manifest_path)
            if manifest.get("format") != FORMAT or manifest.get("fields") != _normal(fields):
                raise _Unusable("stale: its manifest describes another engine")
            data = blob_path.read_bytes()
            if len(data) != manifest.get("size") or _sha256(data) != manifest.get("sha256"):
                raise _Unusable("corrupt: the engine file does not match its manifest")
            state = _decode_state(data)
        except (OSError, _Unusable) as err:
            _LOG.warning("cached engine %s unusable (%s); it will be rebuilt", blob_path, err)
            return None
        _LOG.info("loaded cached engine %s (%d bytes)", blob_path, len(data))
        return state

    def save(self, fields: Fields, state: Mapping[str, Any]) -> bool:
        """Store `state` for `fields`; False (logged) if it could not be written: the engine still runs."""
        blob_path, manifest_path = self.paths(fields)
        data = _encode_state(state)
        manifest = {
            "format": FORMAT,
            "fields": _normal(fields),
            "size": len(data),
            "sha256": _sha256(data),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
        }
        try:
            atomic.write_bytes(blob_path, data)
            atomic.write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
        except StorageError as err:
            _LOG.warning("engine not cached, it will be rebuilt at the next start: %s", err)
            return False
        _LOG.info("cached engine %s (%d bytes)", blob_path, len(data))
        self._failure_path(fields).unlink(missing_ok=True)
        self._remove_superseded(fields, keep=manifest_path)
        return True

    def failure(self, fields: Fields) -> str | None:
        """Why the build for `fields` failed before, or None when it never failed (or is forgotten)."""
        path = self._failure_path(fields)
        try:
            record = _read_manifest(path)
        except FileNotFoundError:
            return None
        except (OSError, _Unusable) as err:
            _LOG.warning("failure record %s unreadable (%s); building again", path, err)
            return None
        if record.get("fields") != _normal(fields):
            return None
        return str(record.get("reason", "unknown"))

    def remember_failure(self, fields: Fields, reason: str) -> bool:
        """Record that building `fields` failed; False (logged) if it could not be written."""
        record = {
            "fields": _normal(fields),
            "reason": reason,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            atomic.write_text(
                self._failure_path(fields), json.dumps(record, indent=2, sort_keys=True)
            )
        except StorageError as err:
            _LOG.warning("engine build failure not recorded, it will be retried: %s", err)
            return False
        return True

    def forget_failures(self) -> int:
        """Forget every recorded build failure (the next start builds again); how many there were."""
        failed = list(self.directory.glob("*.failed"))
        for path in failed:
            path.unlink(missing_ok=True)
        return len(failed)

    def _failure_path(self, fields: Fields) -> Path:
        return self.directory / f"{cache_key(fields)}.failed"

    def _remove_superseded(self, fields: Fields, keep: Path) -> None:
        """Remove entries equal to `fields` except in environment fields (built for another machine)."""
        if not self._environment:
            return
        mine = _without(_normal(fields), self._environment)
        for manifest_path in self.directory.glob("*.json"):
            if manifest_path == keep:
                continue
            try:
                other = _read_manifest(manifest_path).get("fields")
            except (OSError, _Unusable):
                continue
            if isinstance(other, dict) and _without(other, self._environment) == mine:
                _LOG.info("removing engine %s, built for %s", manifest_path.stem, other)
                for path in (manifest_path, manifest_path.with_suffix(".engine")):
                    path.unlink(missing_ok=True)


class _Unusable(Exception):
    """A cache entry that exists but cannot be used (internal: always turned into a miss)."""


def _encode_state(state: Mapping[str, Any]) -> bytes:
    """A state dict as bytes that `_decode_state` reads with `weights_only=True`."""
    byte_keys = sorted(key for key, value in state.items() if isinstance(value, (bytes, bytearray)))
    plain = dict(state)
    for key in byte_keys:
        plain[key] = torch.frombuffer(bytearray(state[key]), dtype=torch.uint8)
    buffer = io.BytesIO()
    torch.save({"state": plain, "byte_keys": byte_keys}, buffer)
    return buffer.getvalue()


def _decode_state(data: bytes) -> dict[str, Any]:
    """The state dict `_encode_state` wrote; raise _Unusable if `data` is not one."""
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        state = dict(saved["state"])
        for key in saved["byte_keys"]:
            state[key] = bytearray(state[key].numpy().tobytes())
    except (
        RuntimeError,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ) as err:
        raise _Unusable(f"corrupt: cannot decode the engine file ({type(err).__name__})") from err
    return state


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _Unusable("corrupt: the manifest is not JSON") from err
    if not isinstance(manifest, dict):
        raise _Unusable("corrupt: the manifest is not a JSON object")
    return manifest


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _normal(fields: Fields) -> dict[str, Any]:
    """`fields` as they read back from JSON (tuples become lists), for comparison with a manifest."""
    return json.loads(_canonical(dict(fields)))


def _without(fields: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if key not in names}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
