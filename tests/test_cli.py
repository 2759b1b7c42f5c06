"""The command line as an operator meets it: --version, real help with defaults for every option,
-v on either side of the command, progress only on a terminal, output formats by file name."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from edge_matte import __version__
from edge_matte.cli import build_parser

CLI = [sys.executable, "-m", "edge_matte.cli"]
FRAMES = 20


def cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, check=False, **kwargs
    )


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every subcommand parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += parsers(child)
    return found


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 320x240 H.264 clip of FRAMES frames and a plate image of its size."""
    folder = tmp_path_factory.mktemp("cli")
    video, plate = folder / "in.mp4", folder / "plate.png"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10",
         "-frames:v", str(FRAMES), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)],
        check=True,
    )  # fmt: skip
    ok, first = cv2.VideoCapture(str(video)).read()
    assert ok and cv2.imwrite(str(plate), first)
    return video, plate


@pytest.fixture(scope="module")
def still_room(clip: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s of a still room with sensor noise: long enough for `plate build` to find stillness."""
    path = tmp_path_factory.mktemp("cli") / "room.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-loop", "1", "-i", str(clip[1]), "-vf", "noise=alls=2:allf=t",
         "-r", "10", "-frames:v", "60", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out)


def test_version_and_a_real_top_level_help() -> None:
    version, top = cli("--version"), cli("--help")
    assert version.returncode == 0 and version.stdout.strip() == f"edge-matte {__version__}"
    assert top.returncode == 0 and "background-matting appliance" in top.stdout
    assert "one subcommand per job" not in top.stdout  # not the module's internal docstring
    assert "exit codes" in top.stdout


def test_every_command_and_option_has_help_and_shows_its_default() -> None:
    for parser in parsers(build_parser()):
        assert parser.description, parser.prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{parser.prog}: {action.dest} has no help"
            valued = action.default is not None and not isinstance(action.default, bool)
            if valued and action.option_strings and action.default != argparse.SUPPRESS:
                shown = formatter._get_help_string(action) or ""
                assert "(default" in shown, (parser.prog, action.dest, shown)


def test_verbose_is_accepted_after_the_command_too() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "-v"]).verbose is True
    assert parser.parse_args(["-v", "run"]).verbose is True
    assert parser.parse_args(["run"]).verbose is False
    assert parser.parse_args(["plate", "build", "--input", "a", "--output", "b", "-v"]).verbose


def test_matte_writes_h264_mp4_and_no_progress_into_a_pipe(
    clip: tuple[Path, Path], tmp_path: Path
) -> None:
    video, plate = clip
    alpha, composite = tmp_path / "alpha.mp4", tmp_path / "composite.mkv"
    done = cli(
        "matte", "--input", str(video), "--plate", str(plate), "--alpha", str(alpha),
        "--composite", str(composite), "--background", "#00ff00",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "ETA" not in done.stderr
    for path, container in ((alpha, "mp4"), (composite, "matroska")):
        info = probe(path)
        [stream] = info["streams"]
        assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
        assert container in info["format"]["format_name"]
        assert int(stream["nb_read_frames"]) == FRAMES
    assert not list(tmp_path.glob(".*.tmp"))  # temp files renamed into place


def test_progress_with_rate_and_eta_on_a_terminal(
    clip: tuple[Path, Path], still_room: Path, tmp_path: Path
) -> None:
    video, plate = clip
    for args in (
        ["matte", "--input", str(video), "--plate", str(plate), "--alpha", str(tmp_path / "a.mp4")],
        ["plate", "build", "--input", str(still_room), "--output", str(tmp_path / "plate.png")],
    ):
        leader, follower = pty.openpty()
        process = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            output += chunk
        os.close(leader)
        assert process.wait(120) == 0, output
        text = output.decode(errors="replace")
        assert "\r" in text and "frames" in text and "/s" in text, text
        if args[0] == "matte":
            assert "ETA" in text and f"{FRAMES}/{FRAMES}" in text, text


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--alpha", "a.png", "the input is a video, so the output must be one too"),
        ("--foreground", "f.txt", "unknown (.txt) format"),
    ],
)
def test_an_output_that_does_not_suit_the_input_is_refused(
    clip: tuple[Path, Path], tmp_path: Path, option: str, name: str, message: str
) -> None:
    video, plate = clip
    target = tmp_path / name
    done = cli("matte", "--input", str(video), "--plate", str(plate), option, str(target))
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_a_video_name_for_an_image_input_is_refused(
    clip: tuple[Path, Path], tmp_path: Path
) -> None:
    _, plate = clip
    done = cli(
        "matte", "--input", str(plate), "--plate", str(plate), "--alpha", str(tmp_path / "a.mp4")
    )
    assert done.returncode != 0 and "the input is an image" in done.stderr, done.stderr
