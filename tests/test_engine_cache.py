"""EngineCache: keys, atomic entries with manifests, and every way an entry can be unusable."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from edge_matte.engine.cache import FORMAT, EngineCache, cache_key

FIELDS = {
    "piece": "base",
    "weights": "0123456789abcdef",
    "input": [720, 1280],
    "backbone_scale": 0.25,
    "patch_count": 5000,
    "refine_mode": "sampling",
    "kernel_size": 3,
    "precision": "fp16",
    "backend": "tensorrt-8.6.2",
    "device": "Orin",
}
CHANGED = {
    "piece": "refiner-patches",
    "weights": "fedcba9876543210",
    "input": [1080, 1920],
    "backbone_scale": 0.125,
    "patch_count": 3840,
    "refine_mode": "thresholding",
    "kernel_size": 1,
    "precision": "fp32",
    "backend": "tensorrt-10.3.0",
    "device": "Orin Nano",
}


def engine_state(seed: int = 0) -> dict:
    """What a TRTModule state dict holds: the serialized engine as a bytearray, plus plain values."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "engine": bytearray(
            torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).numpy().tobytes()
        ),
        "input_names": ["input_0", "input_1"],
        "output_names": ["output_0"],
        "input_flattener": {"schema": [0, 1], "size": 2},
        "weight": torch.randn((3, 4), generator=gen),
    }


def same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        torch.equal(a[k], b[k])
        if isinstance(a[k], torch.Tensor)
        else (type(a[k]) is type(b[k]) and a[k] == b[k])
        for k in a
    )


@pytest.fixture
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "engines", environment=("backend", "device"))


def test_key_changes_with_every_field_and_ignores_their_order() -> None:
    key = cache_key(FIELDS)
    assert len(key) == 64 and int(key, 16) >= 0
    assert cache_key(dict(reversed(list(FIELDS.items())))) == key
    for name, value in CHANGED.items():
        assert cache_key({**FIELDS, name: value}) != key, name
    assert cache_key({k: v for k, v in FIELDS.items() if k != "device"}) != key


def test_saved_state_loads_back_identical_with_bytes_kept_as_bytes(cache: EngineCache) -> None:
    state = engine_state()
    assert cache.save(FIELDS, state)
    loaded = cache.load(FIELDS)
    assert loaded is not None and same_state(loaded, state)
    assert isinstance(loaded["engine"], bytearray)


def test_manifest_describes_the_entry(cache: EngineCache) -> None:
    cache.save(FIELDS, engine_state())
    blob, manifest_path = cache.paths(FIELDS)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == FORMAT
    assert manifest["fields"] == FIELDS
    assert manifest["size"] == blob.stat().st_size
    assert sorted(p.name for p in cache.directory.iterdir()) == sorted(
        [blob.name, manifest_path.name]
    )


def test_missing_entry_is_a_quiet_miss(cache: EngineCache, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert cache.load(FIELDS) is None
    assert caplog.records == []


def truncate(blob: Path, manifest: Path) -> None:
    blob.write_bytes(blob.read_bytes()[:100])


def flip_a_byte(blob: Path, manifest: Path) -> None:
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def delete_engine(blob: Path, manifest: Path) -> None:
    blob.unlink()


def garble_manifest(blob: Path, manifest: Path) -> None:
    manifest.write_text('{"format": 1, "fields": ')


def manifest_not_object(blob: Path, manifest: Path) -> None:
    manifest.write_text("[1, 2]")


def manifest_of_other_fields(blob: Path, manifest: Path) -> None:
    data = json.loads(manifest.read_text())
    data["fields"]["patch_count"] = 1
    manifest.write_text(json.dumps(data))


def older_format(blob: Path, manifest: Path) -> None:
    data = json.loads(manifest.read_text())
    data["format"] = FORMAT - 1
    manifest.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "damage",
    [
        truncate,
        flip_a_byte,
        delete_engine,
        garble_manifest,
        manifest_not_object,
        manifest_of_other_fields,
        older_format,
    ],
)
def test_damaged_or_stale_entry_is_a_logged_miss_and_a_new_save_repairs_it(
    cache, caplog, damage
) -> None:
    cache.save(FIELDS, engine_state(1))
    damage(*cache.paths(FIELDS))
    with caplog.at_level(logging.WARNING, logger="edge_matte.engine.cache"):
        assert cache.load(FIELDS) is None
    assert any("rebuilt" in r.getMessage() for r in caplog.records)
    fresh = engine_state(2)
    assert cache.save(FIELDS, fresh)
    loaded = cache.load(FIELDS)
    assert loaded is not None and same_state(loaded, fresh)


def rewrite_manifest_to_match(blob: Path, manifest_path: Path) -> None:
    manifest = json.loads(manifest_path.read_text())
    data = blob.read_bytes()
    manifest.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))


def test_an_entry_that_matches_its_manifest_but_is_not_a_state_dict_is_a_miss(
    cache, caplog
) -> None:
    cache.save(FIELDS, engine_state())
    blob, manifest_path = cache.paths(FIELDS)
    blob.write_bytes(b"not a torch file at all")
    rewrite_manifest_to_match(blob, manifest_path)
    with caplog.at_level(logging.WARNING):
        assert cache.load(FIELDS) is None
    assert any("cannot decode" in r.getMessage() for r in caplog.records)


def test_an_entry_that_needs_code_to_unpickle_is_refused(cache, caplog) -> None:
    """weights_only loading: a planted pickle that would construct arbitrary objects never loads."""
    assert cache.save(FIELDS, {"path": Path("/etc/passwd"), "x": torch.zeros(1)})
    with caplog.at_level(logging.WARNING):
        assert cache.load(FIELDS) is None
    assert any("cannot decode" in r.getMessage() for r in caplog.records)


def test_entry_for_another_tensorrt_version_is_ignored_then_removed_by_the_rebuild(cache) -> None:
    old = {**FIELDS, "backend": "tensorrt-8.5.2"}
    other_size = {**FIELDS, "input": [1080, 1920]}
    cache.save(old, engine_state(1))
    cache.save(other_size, engine_state(3))
    assert cache.load(FIELDS) is None  # built for another TensorRT: never used here
    assert cache.save(FIELDS, engine_state(2))
    assert not any(p.exists() for p in cache.paths(old))  # superseded: removed
    assert all(p.exists() for p in cache.paths(other_size))  # another shape: still valid, kept
    assert cache.load(other_size) is not None


def test_without_environment_fields_nothing_is_removed(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    old = {**FIELDS, "backend": "tensorrt-8.5.2"}
    cache.save(old, engine_state(1))
    cache.save(FIELDS, engine_state(2))
    assert cache.load(old) is not None and cache.load(FIELDS) is not None


def test_failed_save_is_reported_not_raised(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "engines"
    blocker.write_text("a file where the cache directory should be")
    cache = EngineCache(blocker)
    with caplog.at_level(logging.WARNING):
        assert cache.save(FIELDS, engine_state()) is False
    assert any("not cached" in r.getMessage() for r in caplog.records)
    assert cache.load(FIELDS) is None


def test_a_failed_build_is_remembered_per_key_until_forgotten(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert cache.failure(FIELDS) is None
    assert cache.remember_failure(FIELDS, "TensorRT's builder returned no engine")
    assert cache.failure(FIELDS) == "TensorRT's builder returned no engine"
    assert cache.failure({**FIELDS, "backend": CHANGED["backend"]}) is None
    cache.save(FIELDS, engine_state())  # a later successful build clears it
    assert cache.failure(FIELDS) is None
    cache.remember_failure(CHANGED, "out of memory")
    assert cache.forget_failures() == 1 and cache.failure(CHANGED) is None


def test_run_rebuild_forgets_failed_builds(tmp_path: Path) -> None:
    from edge_matte import cli
    from edge_matte.config.schema import Config, MattingConfig

    config = Config(matting=MattingConfig(cache_dir=tmp_path))
    EngineCache(tmp_path / "engines").remember_failure(FIELDS, "no engine")
    assert cli.build_parser().parse_args(["run", "--rebuild"]).rebuild
    cli._forget_engine_failures(config)
    assert EngineCache(tmp_path / "engines").failure(FIELDS) is None
