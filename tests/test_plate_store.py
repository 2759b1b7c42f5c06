"""Plate persistence: saved with metadata when made, restored at start, rejected with a warning
when it belongs to another size or source or is damaged, and a failed save never breaks anything."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_matte.capture.synthetic import SceneScript, SyntheticSource
from edge_matte.config.schema import PlateConfig
from edge_matte.errors import MediaError
from edge_matte.events import Event
from edge_matte.frames import Matte
from edge_matte.plate import PlateKeeper, PlateState, store

WIDTH, HEIGHT = 320, 180
URI = "test://?seed=3"


def room() -> np.ndarray:
    script = SceneScript(width=WIDTH, height=HEIGHT, seed=3)
    return SyntheticSource(script, realtime=False).frame_at(0).truth_background


def keeper(path: Path, events: list[Event], uri: str = URI) -> PlateKeeper:
    return PlateKeeper(PlateConfig(), path, uri, events.append)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A plate saved the way the keeper saves one."""
    path = tmp_path / "state" / "plate.png"
    keeper(path, []).load_array(room())
    return path


def test_captured_plate_is_saved_with_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plate.png"
    source = SyntheticSource(SceneScript(width=WIDTH, height=HEIGHT, seed=3), realtime=False)
    events: list[Event] = []
    plate_keeper = PlateKeeper(PlateConfig(stillness_s=1.0), path, URI, events.append)
    for index in range(300):
        frame = source.frame_at(index)
        matte = (
            Matte(frame.truth_alpha, frame.image, "truth")
            if plate_keeper.plate is not None
            else None
        )
        plate_keeper.observe(frame, matte)
        if plate_keeper.state is PlateState.READY:
            break
    assert [e.kind for e in events] == ["plate.capturing", "plate.captured"]
    meta = json.loads(store.sidecar(path).read_text())
    assert {
        k: meta[k] for k in ("source_uri", "width", "height", "profile", "method", "known_fraction")
    } == {
        "source_uri": URI,
        "width": WIDTH,
        "height": HEIGHT,
        "profile": None,
        "method": "median",
        "known_fraction": 1.0,
    }
    image, _ = store.load(path)
    assert np.array_equal(image, plate_keeper.plate)
    assert [
        p.name for p in path.parent.iterdir() if p.name.startswith(".")
    ] == []  # no temp files left


def test_restart_restores_the_saved_plate(saved: Path) -> None:
    events: list[Event] = []
    restarted = keeper(saved, events)
    assert restarted.restore(WIDTH, HEIGHT)
    assert restarted.state is PlateState.READY and np.array_equal(restarted.plate, room())
    assert [e.kind for e in events] == ["plate.loaded"] and "restored" in events[0].message
    assert restarted.status()["method"] == "file"


def _corrupt_png(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _corrupt_json(path: Path) -> None:
    store.sidecar(path).write_text("{not json")


def _other_png(path: Path) -> None:  # a plate without its own metadata: a torn pair
    keeper(path.with_name("other.png"), []).load_array(255 - room())
    path.write_bytes(path.with_name("other.png").read_bytes())


def _missing_json(path: Path) -> None:
    store.sidecar(path).unlink()


@pytest.mark.parametrize(
    ("damage", "size", "uri", "why"),
    [
        (None, (640, 360), URI, "made at 320x180"),
        (None, (WIDTH, HEIGHT), "test://?seed=4", "made for source"),
        (_corrupt_png, (WIDTH, HEIGHT), URI, "checksum"),
        (_corrupt_json, (WIDTH, HEIGHT), URI, "not valid JSON"),
        (_other_png, (WIDTH, HEIGHT), URI, "checksum"),
        (_missing_json, (WIDTH, HEIGHT), URI, "cannot read saved plate"),
    ],
)
def test_unusable_saved_plate_is_discarded_with_a_warning(
    saved: Path, caplog: pytest.LogCaptureFixture, damage, size: tuple[int, int], uri: str, why: str
) -> None:
    if damage is not None:
        damage(saved)
    events: list[Event] = []
    restarted = keeper(saved, events, uri)
    assert not restarted.restore(*size)
    assert restarted.plate is None and restarted.state is PlateState.NONE and events == []
    assert any(why in record.message and record.levelname == "WARNING" for record in caplog.records)


def test_decoded_plate_of_the_wrong_size_is_refused(saved: Path) -> None:
    record = json.loads(store.sidecar(saved).read_text())
    record["width"] = 300
    store.sidecar(saved).write_text(json.dumps(record))
    with pytest.raises(MediaError, match="metadata says 300x180"):
        store.load(saved)


@pytest.fixture
def read_only_dir(saved: Path) -> Iterator[Path]:
    """The saved plate's directory made read-only (a bind mount when running as root)."""
    directory = saved.parent
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(directory), str(directory)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"root without a read-only bind mount: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_failed_save_is_reported_and_the_old_plate_kept(saved: Path, read_only_dir: Path) -> None:
    before = saved.read_bytes(), store.sidecar(saved).read_bytes()
    events: list[Event] = []
    plate_keeper = keeper(saved, events)
    plate_keeper.load_array(255 - room())
    assert [e.kind for e in events] == ["plate.loaded", "plate.save_failed"]
    assert plate_keeper.state is PlateState.READY and np.array_equal(
        plate_keeper.plate, 255 - room()
    )
    assert (saved.read_bytes(), store.sidecar(saved).read_bytes()) == before
    plate_keeper.clear()  # deleting fails too: logged, not raised
    assert saved.exists()


def test_clear_deletes_the_saved_plate(saved: Path) -> None:
    events: list[Event] = []
    plate_keeper = keeper(saved, events)
    assert plate_keeper.restore(WIDTH, HEIGHT)
    plate_keeper.clear()
    assert not saved.exists() and not store.sidecar(saved).exists()
    assert not keeper(saved, []).restore(WIDTH, HEIGHT)


def test_variability_map_is_saved_with_the_plate_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "plate.png"
    variability = np.zeros((HEIGHT, WIDTH), np.uint8)
    variability[40:80, 100:140] = 37  # a swaying branch
    store.PlateFile(path, URI, None).save(room(), "per-pixel", 0.97, 1.0, variability)
    image, meta = store.load(path)
    assert np.array_equal(image, room()) and np.array_equal(meta.variability, variability)
    restarted = keeper(path, [])
    assert restarted.restore(WIDTH, HEIGHT)
    assert np.array_equal(restarted.plate.variability, variability)  # what the engine reads


def test_large_variability_maps_are_pooled_so_nothing_moving_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "plate.png"
    image = np.zeros((720, 1280, 3), np.uint8)
    variability = np.zeros((720, 1280), np.uint8)
    variability[100, 200] = 50  # one pixel that moves
    store.save(
        path, image, store.PlateMeta(1.0, URI, 1280, 720, None, "per-pixel", 0.9, variability)
    )
    record = json.loads(store.sidecar(path).read_text())
    assert len(record["variability"]) < 4000  # small enough for the JSON record
    restored = store.load(path)[1].variability
    assert restored.shape == (720, 1280) and restored[100, 200] == 50


def test_a_plate_saved_before_variability_maps_still_loads(saved: Path) -> None:
    record = json.loads(store.sidecar(saved).read_text())
    del record["variability"]  # what earlier versions wrote
    store.sidecar(saved).write_text(json.dumps(record))
    image, meta = store.load(saved)
    assert np.array_equal(image, room()) and meta.variability is None


def test_a_damaged_variability_map_is_refused(saved: Path) -> None:
    record = json.loads(store.sidecar(saved).read_text())
    record["variability"] = "not base64!"
    store.sidecar(saved).write_text(json.dumps(record))
    with pytest.raises(MediaError, match="variability"):
        store.load(saved)


@pytest.mark.parametrize("value", ["", "AAAA", 5, True, ["x"]])
def test_a_variability_map_that_is_not_an_image_is_refused(saved: Path, value: object) -> None:
    record = json.loads(store.sidecar(saved).read_text())
    record["variability"] = value
    store.sidecar(saved).write_text(json.dumps(record))
    with pytest.raises(MediaError, match="variability"):
        store.load(saved)
