"""Calibration on synthetic empty scenes, camera-control locking, and the profile file format."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_matte.capture.synthetic import SceneScript, SyntheticSource
from edge_matte.capture.v4l2_controls import (
    CameraControls,
    apply_controls,
    parse_controls,
    v4l2_device,
)
from edge_matte.config import profile as profile_mod
from edge_matte.errors import ConfigError, SourceEnded, SourceError
from edge_matte.frames import Frame, SourceInfo
from edge_matte.tools.calibrate import add_arguments, calibrate, main_calibrate

REPO = Path(__file__).resolve().parents[1]
SIZE = (320, 240)


class Clocked:
    """A synthetic scene read as fast as it renders, stamped as a camera at `fps` would stamp it,
    so seconds of calibration take milliseconds. `end_after` makes it a clip that ends."""

    def __init__(
        self, script: SceneScript, fps: float = 30.0, end_after: int | None = None
    ) -> None:
        self._scene = SyntheticSource(script, realtime=False)
        self._fps = fps
        self._end_after = end_after
        self._index = 0

    @property
    def info(self) -> SourceInfo:
        return self._scene.info

    def read(self, timeout: float) -> Frame:
        if self._end_after is not None and self._index >= self._end_after:
            raise SourceEnded("clip ended")
        frame = self._scene.frame_at(self._index)
        self._index += 1
        return dataclasses.replace(frame, time=frame.index / self._fps)

    def close(self) -> None:
        self._scene.close()


def empty_scene(sigma: float = 2.0, seed: int = 0) -> SceneScript:
    return SceneScript(
        width=SIZE[0],
        height=SIZE[1],
        seed=seed,
        present_from_start=False,
        enter_frame=10**9,
        noise_sigma=sigma,
    )


def test_measured_noise_matches_the_truth_within_15_percent() -> None:
    for sigma in (1.0, 2.0, 5.0):
        profile = calibrate(Clocked(empty_scene(sigma)), 3.0, "room", warmup_s=0)
        assert profile.noise_sigma == pytest.approx((sigma,) * 3, rel=0.15), sigma
        assert profile.fps == pytest.approx(30.0)
        assert (profile.width, profile.height) == SIZE
        assert profile.flicker < 0.01
        assert profile.unlocked == ["exposure", "gain", "white_balance"] and profile.controls == {}


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=2)


def test_thresholds_separate_noise_from_a_subject() -> None:
    profile = calibrate(Clocked(empty_scene()), 3.0, "room", warmup_s=0)
    later = SyntheticSource(
        empty_scene(), realtime=False
    )  # same room, frames not seen by calibration
    plate = np.median(
        np.stack([later.frame_at(i).image for i in range(1000, 1015)]), axis=0
    ).astype(np.uint8)

    for index in range(2000, 2010):
        frame = later.frame_at(index).image
        assert np.abs(frame.astype(np.int16) - plate).mean() < profile.empty_threshold
        assert (_distance(frame, plate) > profile.noise_floor).mean() < 0.005

    with_subject = SyntheticSource(
        dataclasses.replace(empty_scene(), present_from_start=True), realtime=False
    ).frame_at(0)
    assert with_subject.truth_alpha is not None
    subject = with_subject.truth_alpha > 0.99
    assert np.abs(with_subject.image.astype(np.int16) - plate).mean() > profile.empty_threshold
    assert (_distance(with_subject.image, plate)[subject] > profile.noise_floor).mean() > 0.8


def test_a_real_time_source_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "edge-matte.yaml"
    uri = empty_scene(3.0).uri()
    config.write_text(
        yaml.safe_dump({"source": {"uri": uri, "width": SIZE[0], "height": SIZE[1], "fps": 30}})
    )
    output = tmp_path / "profiles" / "hall.yaml"
    assert (
        main_calibrate(
            _args(
                "--config",
                str(config),
                "--seconds",
                "1",
                "--warmup",
                "0",
                "--name",
                "hall",
                "--output",
                str(output),
            )
        )
        == 0
    )
    loaded = profile_mod.load(output)
    assert loaded.name == "hall" and loaded.source_uri == uri
    assert loaded.noise_sigma == pytest.approx((3.0,) * 3, rel=0.15)
    assert 0 < loaded.fps <= 240
    out = capsys.readouterr().out
    assert (
        f"profile hall written to {output}" in out
        and "not locked: exposure, gain, white_balance" in out
    )


def test_command_line_refuses_a_bad_name_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main_calibrate(_args("--name", "../etc/passwd", "--output", str(tmp_path / "x.yaml"))) == 1
    )
    assert "profile name '../etc/passwd'" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_a_source_that_ends_too_soon_is_an_error() -> None:
    with pytest.raises(SourceError, match="at least 3"):
        calibrate(Clocked(empty_scene(), end_after=2), 3.0, "room", warmup_s=0)


def test_a_clip_shorter_than_the_time_asked_still_calibrates() -> None:
    profile = calibrate(Clocked(empty_scene(), end_after=20), 60.0, "room", warmup_s=0)
    assert profile.noise_sigma == pytest.approx((2.0,) * 3, rel=0.15)


@pytest.mark.parametrize("seconds", [0, -1])
def test_non_positive_duration_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigError, match="positive"):
        calibrate(Clocked(empty_scene()), seconds, "room", warmup_s=0)


# -- profile format --------------------------------------------------------------------------------


def test_profile_round_trips(tmp_path: Path) -> None:
    profile = calibrate(Clocked(empty_scene()), 1.0, "room", warmup_s=0)
    path = tmp_path / "room.yaml"
    profile_mod.save(profile, path)
    assert profile_mod.load(path) == profile


def test_the_documented_example_profile_is_valid() -> None:
    example = profile_mod.load(REPO / "calibration" / "example.yaml")
    assert example.noise_floor > 0 and example.empty_threshold > 0
    assert example.controls and example.unlocked


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"noise_floor": None}, "noise_floor"),
        ({"noise_sigma": [1.0, 2.0]}, "noise_sigma"),
        ({"empty_threshold": -1}, "empty_threshold"),
        ({"fps": "fast"}, "fps"),
        ({"name": "two words"}, "name"),
        ({"controls": {"gain": "high"}}, "controls.gain"),
        ({"version": 2}, "version"),
        ({"thresholds": 3}, "thresholds: unknown key"),
    ],
)
def test_an_invalid_profile_is_refused_naming_the_key(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    data = yaml.safe_load((REPO / "calibration" / "example.yaml").read_text())
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"{path}: .*{named}"):
        profile_mod.load(path)


@pytest.mark.parametrize(
    ("text", "problem"), [("[1, 2]", "must be a mapping"), ("a: [", "not valid YAML")]
)
def test_a_profile_that_is_not_a_mapping_is_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        profile_mod.load(path)


# -- camera controls -----------------------------------------------------------------------------

NEW_NAMES = """
User Controls

                     brightness 0x00980900 (int)    : min=-64 max=64 step=1 default=0 value=-3
        white_balance_automatic 0x0098090c (bool)   : default=1 value=1
      white_balance_temperature 0x0098091a (int)    : min=2800 max=6500 step=1 default=4600 value=4600 flags=inactive
                           gain 0x00980913 (int)    : min=0 max=100 step=1 default=0 value=12

Camera Controls

                  auto_exposure 0x009a0901 (menu)   : min=0 max=3 default=3 value=3 (Aperture Priority Mode)
                                1: Manual Mode
                                3: Aperture Priority Mode
         exposure_time_absolute 0x009a0902 (int)    : min=1 max=5000 step=1 default=157 value=312 flags=inactive
     exposure_dynamic_framerate 0x009a0903 (bool)   : default=0 value=1
"""
OLD_NAMES = """
                  exposure_auto 0x009a0901 (menu)   : min=0 max=3 default=3 value=3
              exposure_absolute 0x009a0902 (int)    : min=3 max=2047 step=1 default=250 value=250 flags=inactive
 white_balance_temperature_auto 0x0098090c (bool)   : default=1 value=1
                     focus_auto 0x009a090c (bool)   : default=1 value=1
"""


def test_parse_controls_reads_both_kernel_naming_generations() -> None:
    assert parse_controls(NEW_NAMES) == {
        "brightness": -3,
        "white_balance_automatic": 1,
        "white_balance_temperature": 4600,
        "gain": 12,
        "auto_exposure": 3,
        "exposure_time_absolute": 312,
        "exposure_dynamic_framerate": 1,
    }
    assert parse_controls(OLD_NAMES) == {
        "exposure_auto": 3,
        "exposure_absolute": 250,
        "white_balance_temperature_auto": 1,
        "focus_auto": 1,
    }


FAKE_V4L2_CTL = """\
import json, sys
args = sys.argv[1:]
device = args[args.index("-d") + 1]
try:
    with open(device) as f:
        state = json.load(f)
except FileNotFoundError:
    print(f"Cannot open device {device}, exiting.", file=sys.stderr)
    sys.exit(1)
for arg in args:
    if arg == "--list-ctrls":
        print(state["listing"])
    elif arg.startswith("--set-ctrl="):
        name, value = arg[len("--set-ctrl="):].split("=")
        if name in state["refuse"]:
            print("VIDIOC_S_EXT_CTRLS: failed: Input/output error", file=sys.stderr)
            sys.exit(1)
        lines = state["listing"].splitlines()
        for i, line in enumerate(lines):
            if line.split()[:1] == [name]:
                head, _, tail = line.partition(" value=")
                lines[i] = head + " value=" + value + " " + " ".join(tail.split()[1:])
        state["listing"] = "\\n".join(lines)
with open(device, "w") as f:
    json.dump(state, f)
"""


@pytest.fixture
def fake_tool(tmp_path: Path) -> str:
    """Stands in for v4l2-ctl with a camera that cannot exist here; its -d argument is the
    camera's state file (listing in v4l2-ctl's format, controls that refuse to be set)."""
    tool = tmp_path / "v4l2-ctl"
    tool.write_text(f"#!{sys.executable}\n{FAKE_V4L2_CTL}")
    tool.chmod(0o755)
    return str(tool)


def _camera(tmp_path: Path, listing: str, refuse: tuple[str, ...] = ()) -> str:
    device = tmp_path / "video0.json"
    device.write_text(json.dumps({"listing": listing, "refuse": list(refuse)}))
    return str(device)


def test_lock_switches_automatics_off_and_records_the_values(
    tmp_path: Path, fake_tool: str
) -> None:
    device = _camera(tmp_path, NEW_NAMES, refuse=("white_balance_automatic",))
    result = CameraControls(device, fake_tool).lock()
    assert result.controls == {
        "auto_exposure": 1,
        "exposure_dynamic_framerate": 0,
        "exposure_time_absolute": 312,
        "gain": 12,
    }
    assert result.unlocked == ["white_balance"]


def test_lock_with_old_names_reports_missing_gain_and_stuck_autofocus(
    tmp_path: Path, fake_tool: str
) -> None:
    device = _camera(tmp_path, OLD_NAMES, refuse=("focus_auto",))
    result = CameraControls(device, fake_tool).lock()
    assert result.controls == {
        "exposure_auto": 1,
        "exposure_absolute": 250,
        "white_balance_temperature_auto": 0,
    }
    assert result.unlocked == ["gain", "focus"]


def test_calibrate_records_what_was_locked(tmp_path: Path, fake_tool: str) -> None:
    controls = CameraControls(_camera(tmp_path, NEW_NAMES), fake_tool)
    profile = calibrate(Clocked(empty_scene()), 1.0, "room", controls, warmup_s=0.2, settle_s=0.2)
    assert (
        profile.controls["auto_exposure"] == 1 and profile.controls["white_balance_automatic"] == 0
    )
    assert profile.unlocked == []


def test_apply_controls_reapplies_in_order_and_reports_refusals(
    tmp_path: Path, fake_tool: str
) -> None:
    device = _camera(tmp_path, NEW_NAMES, refuse=("gain",))
    wanted = {"auto_exposure": 1, "exposure_time_absolute": 200, "gain": 40}
    assert apply_controls(device, wanted, fake_tool) == ["gain"]
    assert (
        parse_controls(json.loads(Path(device).read_text())["listing"])["exposure_time_absolute"]
        == 200
    )


def test_missing_tool_or_device_means_everything_unlocked_not_a_crash(tmp_path: Path) -> None:
    missing_tool = CameraControls("/dev/video0", tool=str(tmp_path / "no-such-v4l2-ctl"))
    assert missing_tool.lock().unlocked == ["exposure", "gain", "white_balance"]
    assert apply_controls("/dev/video0", {"gain": 1}, str(tmp_path / "no-such-v4l2-ctl")) == [
        "gain"
    ]


@pytest.mark.skipif(shutil.which("v4l2-ctl") is None, reason="v4l-utils not installed")
def test_real_v4l2_ctl_on_a_missing_device(tmp_path: Path) -> None:
    result = CameraControls(str(tmp_path / "video9")).lock()
    assert result.controls == {} and result.unlocked == ["exposure", "gain", "white_balance"]


@pytest.mark.parametrize(
    ("uri", "device"),
    [
        ("v4l2:///dev/video0", "/dev/video0"),
        ("v4l2:///dev/v4l/by-id/usb-cam%201", "/dev/v4l/by-id/usb-cam 1"),
        ("csi://0", None),
        ("test://", None),
    ],
)
def test_v4l2_device_from_uri(uri: str, device: str | None) -> None:
    assert v4l2_device(uri) == device
