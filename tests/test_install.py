"""The installer against a temporary root: the tree it lays down, idempotence, drop-ins, uninstall.

It runs the real systemd-sysusers and systemctl in their offline `--root` modes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from edge_matte.errors import ConfigError
from edge_matte.tools import install

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemctl") is None,
    reason="needs systemd's tools (Debian package systemd)",
)

EXEC = Path("/usr/local/bin/edge-matte")
CHECKOUT = Path(__file__).resolve().parents[1]
BUILT_FROM = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "edge_matte", "systemd")
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A target tree holding the executable the unit will run."""
    root = tmp_path / "root"
    executable = root / EXEC.relative_to("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    return root


def _passwd(root: Path, user: str = "edge-matte") -> list[str]:
    return next(
        line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith(f"{user}:")
    )


def _members(root: Path, group: str) -> list[str]:
    line = next(
        line
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith(f"{group}:")
    )
    return line.split(":")[3].split(",")


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path's type, mode, owner, and for files content and mtime (directory mtimes aside)."""
    result: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if path.is_symlink():
            result[key] = ("link", str(path.readlink()))
        elif path.is_dir():
            result[key] = ("dir", stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        else:
            result[key] = (
                "file",
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                info.st_gid,
                info.st_mtime_ns,
                path.read_bytes(),
            )
    return result


def test_install_lays_down_the_expected_tree(root: Path) -> None:
    actions = install.install(root, exec_path=EXEC)
    assert not any(line.startswith("warning") for line in actions)

    name, _, uid, gid, _, home, shell = _passwd(root)
    assert (name, home, shell) == ("edge-matte", "/var/lib/edge-matte", "/usr/sbin/nologin")
    assert "edge-matte" in _members(root, "video") and "edge-matte" in _members(root, "render")
    service = (int(uid), int(gid))
    expected = {
        "etc/edge-matte": (0o750, (0, service[1])),  # the daemon never writes here
        "etc/edge-matte/edge-matte.yaml": (0o640, (0, service[1])),
        "var/lib/edge-matte": (0o750, service),
        "var/cache/edge-matte": (0o750, service),
        "etc/systemd/system/edge-matte.service": (0o644, (0, 0)),
        "etc/systemd/system/edge-matte-performance.service": (0o644, (0, 0)),
        "etc/sysusers.d/edge-matte.conf": (0o644, (0, 0)),
    }
    for relative, (mode, owner) in expected.items():
        info = (root / relative).stat()
        assert stat.S_IMODE(info.st_mode) == mode, relative
        if AS_ROOT:
            assert (info.st_uid, info.st_gid) == owner, relative

    unit = (root / "etc/systemd/system/edge-matte.service").read_text()
    assert f"ExecStart={EXEC} run --config /etc/edge-matte/edge-matte.yaml\n" in unit
    assert "\nUser=edge-matte\n" in unit and "\nGroup=edge-matte\n" in unit
    shipped = install.shipped_dir()
    assert (root / "etc/edge-matte/edge-matte.yaml").read_text() == (
        shipped / "edge-matte.yaml"
    ).read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-matte.service"
    assert wants.readlink() == Path("/etc/systemd/system/edge-matte.service")
    assert not (root / "etc/systemd/system/edge-matte.service.wants").exists()  # not a Jetson
    assert not (
        root / "etc/systemd/system/edge-matte.service.d"
    ).exists()  # no secrets, no GPU nodes


def test_a_second_run_changes_nothing(root: Path) -> None:
    first = install.install(root, exec_path=EXEC)
    assert install.changed(first)
    before = _snapshot(root)
    second = install.install(root, exec_path=EXEC)
    assert not install.changed(second)
    assert all(line.startswith("unchanged") for line in second), second
    assert _snapshot(root) == before


def test_a_drifted_file_is_put_back(root: Path) -> None:
    install.install(root, exec_path=EXEC)
    unit = root / "etc/systemd/system/edge-matte.service"
    good = unit.read_text()
    unit.write_text(good.replace("WatchdogSec=20", "WatchdogSec=0"))
    (root / "var/cache/edge-matte").chmod(0o777)
    actions = install.install(root, exec_path=EXEC)
    assert f"updated {unit} (0644 0:0)" in actions
    assert any(line.startswith(f"updated {root / 'var/cache/edge-matte'}") for line in actions)
    assert unit.read_text() == good
    assert stat.S_IMODE((root / "var/cache/edge-matte").stat().st_mode) == 0o750


def test_an_existing_config_is_kept(root: Path) -> None:
    config = root / "etc/edge-matte/edge-matte.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("source:\n  uri: csi://0\n")
    actions = install.install(root, exec_path=EXEC)
    assert f"unchanged {config} (existing config kept)" in actions
    assert config.read_text() == "source:\n  uri: csi://0\n"


def test_an_invalid_existing_config_stops_the_install_before_any_change(root: Path) -> None:
    config = root / "etc/edge-matte/edge-matte.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("source:\n  uri: csi://0\n  fsp: 30\n")
    with pytest.raises(ConfigError, match=r"source.fsp: unknown key"):
        install.install(root, exec_path=EXEC)
    assert not (root / "etc/systemd").exists() and not (root / "etc/passwd").exists()


def test_credentials_drop_in_follows_the_secret_files(root: Path) -> None:
    dropin = root / "etc/systemd/system/edge-matte.service.d/credentials.conf"
    (root / "etc/edge-matte").mkdir(parents=True)
    (root / "etc/edge-matte/mqtt-password").write_text("s3cret\n")
    install.install(root, exec_path=EXEC)
    lines = dropin.read_text().splitlines()
    assert "LoadCredential=mqtt-password:/etc/edge-matte/mqtt-password" in lines
    assert not any("rtsp-password" in line for line in lines)  # a missing file would fail the start

    (root / "etc/edge-matte/mqtt-password").unlink()
    assert f"removed {dropin}" in install.install(root, exec_path=EXEC)
    assert not dropin.exists()


def test_devices_drop_in_lists_the_boards_gpu_nodes(root: Path) -> None:
    dev = root / "dev"
    (dev / "nvgpu/igpu0").mkdir(parents=True)
    try:
        for node in ("nvhost-gpu", "nvgpu/igpu0/ctrl", "nvmap"):
            os.mknod(dev / node, stat.S_IFCHR | 0o660, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating device nodes needs root")
    (dev / "nvhost-not-a-device").write_text("")
    install.install(root, exec_path=EXEC)
    lines = (root / "etc/systemd/system/edge-matte.service.d/devices.conf").read_text().splitlines()
    assert [line for line in lines if line.startswith("DeviceAllow=")] == [
        "DeviceAllow=/dev/nvgpu/igpu0/ctrl rw",
        "DeviceAllow=/dev/nvhost-gpu rw",
        "DeviceAllow=/dev/nvmap rw",
    ]


def test_performance_unit_is_enabled_on_a_jetson(root: Path) -> None:
    clocks = root / "usr/bin/jetson_clocks"
    clocks.parent.mkdir(parents=True)
    clocks.write_text("#!/bin/sh\n")
    install.install(root, exec_path=EXEC)
    link = root / "etc/systemd/system/edge-matte.service.wants/edge-matte-performance.service"
    assert link.readlink() == Path("/etc/systemd/system/edge-matte-performance.service")


def test_another_user_name(root: Path) -> None:
    install.install(root, exec_path=EXEC, user="matte")
    assert _passwd(root, "matte")[0] == "matte"
    unit = (root / "etc/systemd/system/edge-matte.service").read_text()
    assert "\nUser=matte\n" in unit and "\nGroup=matte\n" in unit
    assert (root / "etc/sysusers.d/edge-matte.conf").read_text().count("matte video") == 1


def test_uninstall_removes_units_and_keeps_config_and_state(root: Path) -> None:
    (root / "etc/edge-matte").mkdir(parents=True)
    (root / "etc/edge-matte/rtsp-password").write_text("pw\n")
    install.install(root, exec_path=EXEC)
    actions = install.uninstall(root)
    assert any(line.startswith("ran systemctl") and "disable" in line for line in actions)
    system = root / "etc/systemd/system"
    assert not (system / "edge-matte.service").exists()
    assert not (system / "edge-matte-performance.service").exists()
    assert not (system / "edge-matte.service.d").exists()
    assert not (system / "multi-user.target.wants/edge-matte.service").is_symlink()
    for kept in (
        "etc/edge-matte/edge-matte.yaml",
        "etc/edge-matte/rtsp-password",
        "var/lib/edge-matte",
        "etc/sysusers.d/edge-matte.conf",
    ):
        assert (root / kept).exists(), kept
    assert install.uninstall(root) == ["unchanged: edge-matte is not installed"]


def test_purge_removes_config_state_and_cache_but_not_the_user(root: Path) -> None:
    install.install(root, exec_path=EXEC)
    install.uninstall(root, purge=True)
    for gone in (
        "etc/edge-matte",
        "var/lib/edge-matte",
        "var/cache/edge-matte",
        "etc/sysusers.d/edge-matte.conf",
    ):
        assert not (root / gone).exists(), gone
    assert _passwd(root)[0] == "edge-matte"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_line_installs_the_executable_it_names_and_prints_each_action(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install.main_install(_args("--root", str(root), "--exec", str(EXEC), "--no-start")) == 0
    unit = root / "etc/systemd/system/edge-matte.service"
    printed = capsys.readouterr().out.splitlines()
    assert f"created {unit} (0644 0:0)" in printed
    assert printed[-1] == f"ran systemctl --root={root} enable edge-matte.service"
    assert f"ExecStart={EXEC} run" in unit.read_text()


def test_purge_without_uninstall_is_a_usage_error_that_changes_nothing(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(root)
    assert install.main_install(_args("--root", str(root), "--purge")) == 2
    assert capsys.readouterr().err == "edge-matte: --purge only goes with --uninstall\n"
    assert _snapshot(root) == before


def test_a_relative_executable_is_refused_before_anything_changes(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(root)
    assert install.main_install(_args("--root", str(root), "--exec", "relative/edge-matte")) == 1
    assert capsys.readouterr().err == (
        "edge-matte: install-service: --exec relative/edge-matte: must be an absolute path\n"
    )
    assert _snapshot(root) == before


def test_uninstall_with_purge_from_the_command_line_removes_config_state_and_cache(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install.install(root, exec_path=EXEC, start=False)
    capsys.readouterr()
    assert install.main_install(_args("--root", str(root), "--uninstall", "--purge")) == 0
    printed = capsys.readouterr().out.splitlines()
    for gone in ("etc/systemd/system/edge-matte.service", "etc/edge-matte", "var/lib/edge-matte"):
        assert not (root / gone).exists()
        assert f"removed {root / gone}" in printed
    assert (root / EXEC.relative_to("/")).exists()  # the executable is not the installer's


def test_an_executable_outside_the_root_is_warned_about(root: Path) -> None:
    actions = install.install(root, exec_path=Path("/opt/edge-matte/bin/edge-matte"))
    assert any("does not exist under" in line for line in actions)


def _script(root: Path, path: str, shebang: str) -> Path:
    script = root / path.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!{shebang}\nfrom edge_matte.cli import main\n")
    script.chmod(0o755)
    return Path(path)


@pytest.mark.parametrize(
    "exec_path, shebang, code_dir, named",
    [
        ("/home/ubuntu/edge-matte/.venv/bin/edge-matte", "/usr/bin/python3", None, "executable"),
        ("/root/venv/bin/edge-matte", "/root/venv/bin/python3", None, "executable"),
        ("/opt/edge-matte/bin/edge-matte", "/home/ubuntu/venv/bin/python3", None, "interpreter"),
        (  # a venv under /opt with an editable install of a checkout in a home directory
            "/opt/edge-matte/bin/edge-matte",
            "/opt/edge-matte/bin/python3",
            "/home/ubuntu/edge-matte/edge_matte",
            "code",
        ),
    ],
)
def test_an_install_the_service_cannot_read_is_refused_before_anything_changes(
    root: Path, exec_path: str, shebang: str, code_dir: str | None, named: str
) -> None:
    before = _snapshot(root)
    path = _script(root, exec_path, shebang)
    with pytest.raises(ConfigError, match=f"cannot read .*{named}.*ProtectHome=yes"):
        install.install(
            root, exec_path=path, start=False, code_dir=Path(code_dir) if code_dir else None
        )
    assert {k: v for k, v in _snapshot(root).items() if k in before} == before
    assert not (root / "etc/systemd").exists() and not (root / "etc/passwd").exists()


def test_an_install_under_opt_is_accepted(root: Path) -> None:
    path = _script(root, "/opt/edge-matte/bin/edge-matte", "/opt/edge-matte/bin/python3")
    code = Path("/opt/edge-matte/lib/python3.10/site-packages/edge_matte")
    actions = install.install(root, exec_path=path, start=False, code_dir=code)
    assert f"ExecStart={path} run" in (root / "etc/systemd/system/edge-matte.service").read_text()
    assert not any(line.startswith("warning") for line in actions)


def _wheel_venv(tmp_path: Path) -> Path:
    """A fresh venv holding only a wheel built from a copy of the checkout (its dependencies
    are this test run's, through a .pth file); its bin directory."""
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILT_FROM:
        if (CHECKOUT / name).is_dir():
            shutil.copytree(
                CHECKOUT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(CHECKOUT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--no-input"]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            *pip,
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            *map(str, wheels.glob("*.whl")),
        ],
        check=True,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv / "bin"


def test_an_installed_wheel_carries_its_units(tmp_path: Path, root: Path) -> None:
    """`install-service` from a wheel, far from any checkout: the units come inside the package."""
    bin_dir = _wheel_venv(tmp_path)
    found = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "from edge_matte.tools import install; print(install.shipped_dir())",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    shipped = Path(found.stdout.strip())
    assert shipped.is_relative_to(tmp_path / "venv")  # not the checkout's systemd/
    for unit in (CHECKOUT / "systemd").iterdir():
        assert (shipped / unit.name).read_bytes() == unit.read_bytes(), unit.name
    done = subprocess.run(
        [bin_dir / "edge-matte", "install-service", "--root", root, "--exec", EXEC, "--no-start"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (root / "etc/systemd/system/edge-matte.service").is_file()
