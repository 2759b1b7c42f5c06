"""Storage failing under a running daemon, and writers killed -9 mid-write.

A full disk (a tiny tmpfs) or a read-only state directory when the plate or the config is
saved: an error is reported, the files on disk stay exactly as they were, and the daemon keeps
serving. A process writing the plate and the config in a loop is SIGKILLed at random moments,
and at exact points (strace stops it at its Nth rename or fsync): every time both files load
and are the old or the new version, never a mix."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon_tools import save_config
from fault_tools import output_frames, running, small_config
from waiting import wait_until

from edge_matte.config import schema as config_mod
from edge_matte.control import overrides
from edge_matte.errors import StorageError
from edge_matte.plate import PlateKeeper, store
from edge_matte.runtime.daemon import Daemon

MOUNT_BYTES = 4 * 2**20
KILLS = 150


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own (root only): it can be filled and remounted read-only."""
    where = tmp_path / "volume"
    where.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", f"size={MOUNT_BYTES},mode=0755", "tmpfs", str(where))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` to the last byte; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = 1 << 20
        while chunk:  # unbuffered, halving the chunk at each refusal down to one byte
            try:
                os.write(fd, b"\0" * chunk)
            except OSError:
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def files_in(directory: Path) -> dict[str, bytes]:
    """Every regular file under `directory` except the filler, with its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "filler"
    }


class StorageScene:
    """A running daemon whose state directory and config file live on `volume`."""

    def __init__(self, volume: Path) -> None:
        self.config_path = volume / "edge-matte.yaml"
        config = small_config(volume / "state")
        save_config(config, self.config_path)
        self.daemon = Daemon(config_mod.load(self.config_path), self.config_path)
        self.overrides_path = overrides.path_for(config)
        size = self.daemon.pipeline.size
        self.plates = [np.full((size[1], size[0], 3), level, np.uint8) for level in (40, 200)]

    def apply(self, patch: dict) -> None:
        self.daemon.apply_config(config_mod.apply_patch(self.daemon.config(), patch))

    def assert_serving(self) -> None:
        before = output_frames(self.daemon)
        assert wait_until(lambda: output_frames(self.daemon) > before + 5, 10)
        assert self.daemon.pipeline.failed is None


LIVE_PATCH = {"compose": {"background": "#102030"}}  # applied without a restart
RESTART_PATCH = {"plate": {"update_rate": 0.05}}  # rebuilds the pipeline


def assert_saves_refused(scene: StorageScene, volume: Path, log) -> None:
    """With the volume unwritable: every save fails visibly and changes nothing on disk."""
    on_disk = files_in(volume)
    config = scene.daemon.config()
    keeper = scene.daemon.pipeline.plate
    keeper.load_array(scene.plates[1])
    failed = log.wait_for("plate.save_failed")
    assert "plate.png" in failed.data["path"]
    assert np.array_equal(keeper.plate, scene.plates[1])  # still used, only not saved
    for count, patch in enumerate((LIVE_PATCH, RESTART_PATCH), start=1):
        with pytest.raises(StorageError):
            scene.apply(patch)
        event = log.wait_for("config.save_failed", count)
        assert event.data["path"] == str(scene.overrides_path)
        assert scene.daemon.config() == config  # the change is undone
        scene.assert_serving()
    assert files_in(volume) == on_disk  # no torn files, no temp litter
    image, _ = store.load(volume / "state" / "plate.png")
    assert np.array_equal(image, scene.plates[0])
    assert config_mod.load(scene.config_path) == config
    assert not scene.overrides_path.exists()


def assert_saves_work_again(scene: StorageScene, volume: Path, log) -> None:
    operator_file = scene.config_path.read_bytes()
    scene.apply(LIVE_PATCH)
    assert overrides.load(scene.config_path).effective.compose.background == "#102030"
    assert scene.config_path.read_bytes() == operator_file  # never written by the daemon
    scene.daemon.pipeline.plate.load_array(scene.plates[1])
    image, _ = store.load(volume / "state" / "plate.png")
    assert np.array_equal(image, scene.plates[1])
    assert not [name for name in files_in(volume) if name.endswith(".tmp")]


def test_disk_full_while_saving_plate_and_config(volume: Path) -> None:
    scene = StorageScene(volume)
    with running(scene.daemon) as log:
        scene.daemon.pipeline.plate.load_array(scene.plates[0])  # saved while there is room
        filler = fill(volume)
        assert shutil.disk_usage(volume).free < 4096
        assert_saves_refused(scene, volume, log)
        filler.unlink()  # the operator frees space: saving works again, no restart
        assert_saves_work_again(scene, volume, log)


def test_read_only_state_directory_while_saving_plate_and_config(volume: Path) -> None:
    scene = StorageScene(volume)
    with running(scene.daemon) as log:
        scene.daemon.pipeline.plate.load_array(scene.plates[0])
        remounted = _mount("-o", "remount,ro", str(volume))
        assert remounted.returncode == 0, remounted.stderr
        try:
            assert_saves_refused(scene, volume, log)
        finally:
            _mount("-o", "remount,rw", str(volume))
        assert_saves_work_again(scene, volume, log)


# -- kill -9 mid-write -----------------------------------------------------------------------------

# The writer saves config and plate versions in turn through the daemon's own code (config files
# as every saved file: edge_matte.atomic; plates: the plate store). Version k's
# config has compose.background #<k in hex>, its plate is noise seeded k with method "v<k>" in
# its metadata: the test knows every version and can tell a torn file or a mixed pair. Run as
# `writer DIR FIRST STOP` it writes those versions; run as `writer DIR` it forks one child per
# "FIRST STOP" line on stdin (imports paid once), prints the child's pid and reaps it.
_WRITER = """
import os, sys
from pathlib import Path
import numpy as np
import yaml
from edge_matte import atomic
from edge_matte.plate import store

def write(directory, first, stop):
    for k in range(first, stop):
        config = yaml.safe_dump({"compose": {"background": f"#{k:06x}"}})
        atomic.write_text(directory / "edge-matte.yaml", config, mode=0o600)
        image = np.random.default_rng(k).integers(0, 256, (240, 320, 3), np.uint8)
        meta = store.PlateMeta(float(k), "test://", 320, 240, None, f"v{k}", 1.0)
        store.save(directory / "plate.png", image, meta)

directory = Path(sys.argv[1])
if len(sys.argv) == 4:
    write(directory, int(sys.argv[2]), int(sys.argv[3]))
    sys.exit(0)
for line in sys.stdin:
    first, stop = map(int, line.split())
    pid = os.fork()
    if pid == 0:
        write(directory, first, stop)
        os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def write_versions(directory: Path, first: int, stop: int, wrap: list[str] | None = None) -> int:
    """Write versions first..stop-1 in a fresh process (under `wrap`, e.g. strace); its exit code."""
    command = [*(wrap or []), sys.executable, "-c", _WRITER, str(directory), str(first), str(stop)]
    return subprocess.run(command, check=False, timeout=60).returncode


class Forker:
    """The writer in fork mode: `write` starts a child writing versions, `kill` SIGKILLs it."""

    def __init__(self, directory: Path) -> None:
        command = [sys.executable, "-c", _WRITER, str(directory)]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def write(self, first: int, stop: int) -> int:
        self._process.stdin.write(f"{first} {stop}\n")
        self._process.stdin.flush()
        return int(self._process.stdout.readline())

    def reaped(self) -> None:
        assert self._process.stdout.readline().strip() == "reaped"

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(10)


def saved_version(directory: Path) -> tuple[int, int]:
    """(config version, plate version) on disk; fails on anything torn or mixed."""
    config = config_mod.load(directory / "edge-matte.yaml")
    config_version = int(config.compose.background[1:], 16)
    image, meta = store.load(directory / "plate.png")
    plate_version = int(meta.method[1:])
    expected = np.random.default_rng(plate_version).integers(0, 256, image.shape, np.uint8)
    assert np.array_equal(image, expected), f"plate pixels are not version {plate_version}'s"
    assert meta.created == float(plate_version)
    return config_version, plate_version


def test_random_kill_9_during_writes_leaves_old_or_new(tmp_path: Path) -> None:
    write_versions(tmp_path, 0, 1)
    versions = [saved_version(tmp_path)]
    rng = random.Random(9)
    forker = Forker(tmp_path)
    try:
        for kill in range(KILLS):
            first = 1 + 1000 * kill  # every child writes versions nobody wrote before
            pid = forker.write(first, first + 1000)
            time.sleep(rng.uniform(0.0, 0.03))  # a random moment in the writing, not a wait
            os.kill(pid, signal.SIGKILL)
            forker.reaped()
            config_version, plate_version = saved_version(tmp_path)
            previous = versions[-1]
            assert config_version in (previous[0], *range(first, first + 1000)), config_version
            assert plate_version in (previous[1], *range(first, first + 1000)), plate_version
            versions.append((config_version, plate_version))
    finally:
        forker.close()
    assert len(set(versions)) > KILLS // 2  # the kills really landed between writes
    restored = PlateKeeper(
        config_mod.PlateConfig(), tmp_path / "plate.png", "test://", lambda _event: None
    )
    assert restored.restore(320, 240)  # temp files left by the kills do not disturb a restart
    assert config_mod.load(tmp_path / "edge-matte.yaml").compose.background.startswith("#")


def copy_of(original: Path, directory: Path) -> Path:
    shutil.copytree(original, directory)
    return directory


def count_syscalls(directory: Path, names: str) -> int:
    """How many `names` system calls one uninterrupted version write makes (strace lists them)."""
    log = directory.with_suffix(".strace")
    write_versions(directory, 1, 2, ["strace", "-f", "-qq", "-o", str(log), "-e", f"trace={names}"])
    return len(log.read_text().splitlines())


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt: strace)")
@pytest.mark.parametrize("names", ["rename,renameat,renameat2", "fsync,fdatasync"])
def test_kill_9_at_every_rename_and_fsync_leaves_old_or_new(tmp_path: Path, names: str) -> None:
    original = tmp_path / "original"
    original.mkdir()
    write_versions(original, 0, 1)
    count = count_syscalls(copy_of(original, tmp_path / "count"), names)
    assert count >= 3  # config, plate metadata, plate PNG
    outcomes = []
    for when in range(1, count + 1):
        directory = copy_of(original, tmp_path / f"kill-{when}")
        inject = f"inject={names}:signal=KILL:when={when}"
        wrap = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={names}", "-e", inject]
        assert write_versions(directory, 1, 2, wrap) == -signal.SIGKILL
        outcomes.append(saved_version(directory))
    # The config is written before the plate: any kill leaves one of these three, in order.
    assert set(outcomes) <= {(0, 0), (1, 0), (1, 1)}, outcomes
    assert outcomes == sorted(outcomes) and (1, 0) in outcomes


# Saves the overrides a remote change of compose.mode to blur makes (argv: the state directory).
_OVERRIDES_WRITER = """
import sys
from edge_matte.config import schema as config_mod
from edge_matte.control import overrides
operator = config_mod.parse({"state_dir": sys.argv[1]})
blur = config_mod.apply_patch(operator, {"compose": {"mode": "blur"}})
overrides.save(operator, blur, overrides.path_for(operator))
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt: strace)")
def test_a_restart_sweeps_the_temp_files_of_killed_writes(tmp_path: Path) -> None:
    write_versions(tmp_path, 0, 1)
    # Killed at its first fsync, a save leaves the overrides' temp file and no overrides.
    wrap = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync"]
    wrap += ["-e", "inject=fsync:signal=KILL:when=1"]
    killed = subprocess.run(
        [*wrap, sys.executable, "-c", _OVERRIDES_WRITER, str(tmp_path)], check=False, timeout=60
    )
    assert killed.returncode == -signal.SIGKILL
    leftovers = sorted(tmp_path.glob(".*.tmp"))
    assert [path.name.split(".")[1] for path in leftovers] == ["config-overrides"]
    unrelated = tmp_path / ".notes.txt.1234.tmp"  # not a temp file of ours: left alone
    unrelated.write_text("keep me")
    daemon = Daemon(small_config(tmp_path), config_path=tmp_path / "edge-matte.yaml")
    with running(daemon):
        assert not any(path.exists() for path in leftovers)
    assert unrelated.read_text() == "keep me"
    assert config_mod.load(tmp_path / "edge-matte.yaml").compose.background == "#000000"
