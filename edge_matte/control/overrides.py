"""Remote changes kept beside, never inside, the operator's config file.

The daemon never writes the operator's file (in /etc, with its comments and layout). A change
accepted over MQTT is saved to `<state_dir>/config-overrides.yaml`, merged over the operator's
file at every load. Precedence, lowest first: built-in defaults, the operator's file, the
overrides. For each overridden key the file records the value the operator's file had when the
override was made; when the operator's file now says something else for that key, the file
wins: the override is dropped (and the daemon emits `config.file_wins`). Only remote-changeable
keys (`edge_matte.control.remote`) are ever overridden, so secrets never land here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_matte import atomic
from edge_matte.config import schema as config_mod
from edge_matte.config.schema import Config
from edge_matte.control.remote import flatten, is_remote, refuse
from edge_matte.errors import ConfigError, StorageError

FILE_NAME = "config-overrides.yaml"
_HEADER = (
    "# Written by edge-matte: settings changed remotely (MQTT config/set), merged over the\n"
    "# operator's config file. Remove with `edge-matte config reset`; edits to the config file\n"
    "# win for the keys they change.\n"
)


@dataclass(frozen=True)
class Layers:
    """The operator's file, the overrides in force and the resulting effective config."""

    operator: Config
    effective: Config
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value in force
    dropped: list[str] = field(default_factory=list)  # "key: why" for overrides not applied
    path: Path | None = None  # the overrides file (None: no operator file, nothing persisted)


def path_for(operator: Config) -> Path:
    return operator.resolved_state_dir() / FILE_NAME


def load(config_path: Path | None, check: Callable[[Config], list[str]] | None = None) -> Layers:
    """The operator's file with the still-valid overrides merged over it.

    `check` (the start-time checks) decides whether the merged config can run; when it cannot
    but the operator's file alone can, the overrides are dropped rather than the start refused.
    """
    if config_path is None:
        defaults = Config()
        return Layers(defaults, defaults)
    raw = config_mod.read_yaml(config_path)
    operator = config_mod.parse(raw, str(config_path))
    path = path_for(operator)
    saved, dropped = _read(path)
    now = flatten(operator.model_dump(mode="json"))
    kept = {}
    for key, entry in saved.items():
        if now.get(key) != entry["file_value"]:
            dropped.append(f"{key}: the config file changed it since the override was made")
        else:
            kept[key] = entry["value"]
    if not kept:
        return Layers(operator, operator, {}, dropped, path)
    try:
        effective = config_mod.parse(_merged(raw, kept), f"{path} over {config_path}")
        # Values a remote patch could never set (a file:// outside the media directory, an
        # absolute background) are not taken from a hand-edited overrides file either.
        refuse(operator, effective)
        problems = check(effective) if check is not None and not check(operator) else []
    except ConfigError as err:
        problems = err.problems
    if problems:  # the operator's file alone can run: it wins over overrides that broke it
        dropped += [f"{key}: dropped, the merged config is invalid ({problems[0]})" for key in kept]
        return Layers(operator, operator, {}, dropped, path)
    return Layers(operator, effective, kept, dropped, path)


def save(operator: Config, effective: Config, path: Path) -> None:
    """Record how `effective` differs from `operator` (remote keys only), atomically."""
    before = flatten(operator.model_dump(mode="json"))
    after = flatten(effective.model_dump(mode="json"))
    entries = {
        key: {"value": value, "file_value": before.get(key)}
        for key, value in sorted(after.items())
        if is_remote(key) and value != before.get(key)
    }
    text = _HEADER + yaml.safe_dump({"version": 1, "overrides": entries}, sort_keys=False)
    atomic.write_text(path, text, mode=0o640)


def reset(path: Path) -> int:
    """Remove the overrides file; return how many overrides it held."""
    saved, _ = _read(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise StorageError(f"cannot remove {path}: {err.strerror}") from err
    return len(saved)


def origins(layers: Layers, config_path: Path | None) -> list[tuple[str, Any, str]]:
    """(dotted key, value, where it comes from) for every setting, secrets masked."""
    explicit = flatten(layers.operator.model_dump(mode="json", exclude_unset=True))
    rows = []
    for key, value in sorted(flatten(layers.effective.to_json()).items()):
        if key in layers.overrides:
            origin = f"override ({layers.path})"
        elif key in explicit or any(k.startswith(key + ".") for k in explicit):
            origin = f"file ({config_path})"
        else:
            origin = "default"
        rows.append((key, value, origin))
    return rows


def _merged(raw: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    data = dict(raw) if isinstance(raw, dict) else {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = value
    return data


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The saved overrides ({key: {value, file_value}}), and problems that made any unusable."""
    try:
        data = config_mod.read_yaml(path, "overrides")
    except ConfigError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            return {}, []  # no remote change yet
        return {}, [f"{path}: ignored: {err}"]
    entries = data.get("overrides") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}, [f"{path}: ignored: no 'overrides' mapping"]
    usable, dropped = {}, []
    for key, entry in entries.items():
        if isinstance(key, str) and is_remote(key) and isinstance(entry, dict) and "value" in entry:
            usable[key] = {"value": entry["value"], "file_value": entry.get("file_value")}
        else:
            dropped.append(f"{key}: ignored, not a setting that can be overridden")
    return usable, dropped
