"""pyproject.toml's dependencies as pip evaluates them on a Jetson (aarch64) and on x86-64."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(machine: str) -> dict[str, list[Requirement]]:
    """The [project] dependencies whose markers hold on `machine`, by package name."""
    block = re.search(r"^dependencies = \[(.*?)^\]", PYPROJECT.read_text(), re.S | re.M)
    assert block is not None
    found: dict[str, list[Requirement]] = {}
    for text in re.findall(r'^\s*"([^"]+)"', block.group(1), re.M):
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or marker.evaluate({"platform_machine": machine}):
            found.setdefault(requirement.name, []).append(requirement)
    return found


def allows(found: dict[str, list[Requirement]], name: str, version: str) -> bool:
    return all(r.specifier.contains(version, prereleases=True) for r in found[name])


def test_a_jetson_gets_numpy_1_and_an_opencv_built_for_it() -> None:
    jetson = requirements("aarch64")
    assert allows(jetson, "numpy", "1.26.4") and not allows(jetson, "numpy", "2.2.6")
    assert allows(jetson, "opencv-python-headless", "4.11.0.86")
    assert not allows(jetson, "opencv-python-headless", "4.12.0.88")


def test_x86_keeps_numpy_2_and_the_newest_opencv() -> None:
    x86 = requirements("x86_64")
    assert allows(x86, "numpy", "2.2.6") and allows(x86, "opencv-python-headless", "4.12.0.88")
