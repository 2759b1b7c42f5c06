"""The systemd unit files: `systemd-analyze verify` on what the installer writes, and the settings
the appliance depends on (notify, watchdog, restart, devices, hardening)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from edge_matte.tools import install

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian package systemd)"
)

SHIPPED = install.shipped_dir()


def _verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _settings(path: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order, as systemd reads a unit file."""
    result: dict[tuple[str, str], list[str]] = defaultdict(list)
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        result[(section, key)].append(value)
    return result


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The units as the installer writes them, with a credential and a GPU node drop-in, running an
    executable that exists on this machine (verify checks that ExecStart= is executable)."""
    root = tmp_path / "root"
    (root / "etc/edge-matte").mkdir(parents=True)
    (root / "etc/edge-matte/mqtt-password").write_text("pw\n")
    (root / "dev").mkdir()
    if os.geteuid() == 0:
        os.mknod(root / "dev/nvhost-gpu", stat.S_IFCHR | 0o660, os.makedev(1, 3))
    install.install(root, exec_path=Path(sys.executable))
    return root / "etc/systemd/system"


def test_installed_units_verify_cleanly(installed: Path) -> None:
    done = _verify(installed / install.UNIT, installed / install.PERFORMANCE_UNIT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # verify only warns (exit 0) about unknown keys or bad values
    assert (installed / f"{install.UNIT}.d/credentials.conf").is_file()


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "edge-matte.service"
    broken.write_text(
        (SHIPPED / install.UNIT).read_text().replace("WatchdogSec=20", "WatchdogSecs=20")
    )
    assert "Unknown key 'WatchdogSecs'" in _verify(broken).stderr


def test_the_daemon_unit_says_what_the_appliance_relies_on() -> None:
    unit = _settings(SHIPPED / install.UNIT)
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["20"],
        "TimeoutStartSec": ["120"],
        "Restart": ["always"],
        "RestartSec": ["3"],
        "User": ["edge-matte"],
        "StateDirectory": ["edge-matte"],
        "CacheDirectory": ["edge-matte"],
        "ConfigurationDirectory": ["edge-matte"],
        "DevicePolicy": ["closed"],
        "PrivateTmp": ["no"],
        "ProtectSystem": ["strict"],
        "NoNewPrivileges": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"],
        "UMask": ["0027"],
    }
    for key, values in expected.items():
        assert unit[("Service", key)] == values, key
    assert unit[("Service", "ExecStart")] == [
        f"{install.SHIPPED_EXEC} run --config {install.CONFIG_FILE}"
    ]
    assert set(unit[("Service", "SupplementaryGroups")][0].split()) == {"video", "render"}
    allowed = {value.split()[0] for value in unit[("Service", "DeviceAllow")]}
    assert {"/dev/nvmap", "/dev/nvhost-ctrl-gpu", "char-video4linux", "char-drm"} <= allowed
    assert ("Service", "ReadWritePaths") not in unit  # /etc/edge-matte stays read-only
    assert ("Service", "PrivateDevices") not in unit  # it would hide the GPU and cameras
    assert ("Service", "MemoryDenyWriteExecute") not in unit  # CUDA and ORC generate code
    assert int(unit[("Unit", "StartLimitBurst")][0]) >= 5
    assert unit[("Install", "WantedBy")] == ["multi-user.target"]


def test_the_performance_unit_runs_before_the_daemon_and_only_on_a_jetson() -> None:
    unit = _settings(SHIPPED / install.PERFORMANCE_UNIT)
    assert unit[("Unit", "Before")] == [install.UNIT]
    assert unit[("Install", "WantedBy")] == [install.UNIT]
    assert unit[("Unit", "ConditionPathExists")] == [install.JETSON_CLOCKS]
    assert unit[("Service", "Type")] == ["oneshot"] and unit[("Service", "RemainAfterExit")] == [
        "yes"
    ]
    assert all(
        command.startswith("-") for command in unit[("Service", "ExecStart")]
    )  # never blocks the daemon


def test_exposure_stays_low(installed: Path) -> None:
    done = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--no-pager",
            str(installed / install.UNIT),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for edge-matte\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-500:] + done.stderr
    assert float(match.group(1)) <= 3.0
