"""The Jetson target runs Python 3.10: no newer syntax or stdlib may slip in."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_vermin_finds_nothing_newer_than_310() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "vermin"),
            "-t=3.10-",
            "--violations",
            "--eval-annotations",
            "--no-tips",
            "edge_matte",
            "tests",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_clean_for_py310() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--target-version", "py310", "edge_matte", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
