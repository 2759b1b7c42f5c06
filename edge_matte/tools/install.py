"""`edge-matte install-service`: user, directories, config and systemd units, idempotently.

Run as root on the board (`--root /`, the default) it also reloads systemd, enables the unit so
it starts with the board, and (unless `--no-start`) starts it. With `--root DIR` it lays the
same tree into DIR for an image or a test: the user goes into DIR/etc/passwd through
`systemd-sysusers --root`, units are enabled with `systemctl --root` (symlinks only) and nothing
is started. Every step reports `created`, `updated`, `removed` or `unchanged`, so a second run
shows that nothing changed. Secrets and the board's GPU device nodes become drop-ins, because a
unit file cannot express "load this credential if the file exists" on systemd 249 (JetPack 6)
and Jetson device names differ between JetPack releases.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_matte import atomic
from edge_matte.config import schema as config_mod
from edge_matte.errors import ConfigError, EdgeMatteError

UNIT = "edge-matte.service"
PERFORMANCE_UNIT = "edge-matte-performance.service"
CONFIG_DIR = "/etc/edge-matte"
CONFIG_FILE = f"{CONFIG_DIR}/edge-matte.yaml"
STATE_DIR = "/var/lib/edge-matte"
CACHE_DIR = "/var/cache/edge-matte"
UNIT_DIR = "/etc/systemd/system"
SYSUSERS_FILE = "/etc/sysusers.d/edge-matte.conf"
# The credential names config.py looks up in $CREDENTIALS_DIRECTORY.
CREDENTIALS = ("mqtt-password", "rtsp-password")
JETSON_CLOCKS = "/usr/bin/jetson_clocks"
SHIPPED_EXEC = "/usr/local/bin/edge-matte"  # ExecStart= in systemd/edge-matte.service
# GPU nodes by JetPack release: nvhost-* (5), nvgpu/igpu0/* and host1x-fence (6), nvidia* (7).
DEVICE_GLOBS = ("nvhost-*", "nvgpu/*/*", "nvmap", "host1x-fence", "nvidia*", "v4l2-nv*")
_DROPIN_DIR = f"{UNIT_DIR}/{UNIT}.d"
_CREDENTIALS_DROPIN = f"{_DROPIN_DIR}/credentials.conf"
_DEVICES_DROPIN = f"{_DROPIN_DIR}/devices.conf"
_CHANGED = ("created", "updated", "removed", "ran")


@dataclass(frozen=True)
class Owner:
    """Numeric owner of an installed path."""

    uid: int
    gid: int


class Tree:
    """Absolute target paths ('/etc/...') mapped into the root being installed to."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.live = self.root.resolve() == Path("/")

    def __call__(self, target: str) -> Path:
        return self.root / target.lstrip("/")


def shipped_dir() -> Path:
    """The directory holding the unit files and example config: the copy an installed wheel
    carries in this package (see setup.py), else the source tree's systemd/ (a checkout or an
    editable install)."""
    here = Path(__file__).resolve()
    places = (here.parent / "systemd", here.parents[2] / "systemd")
    for path in places:
        if (path / UNIT).is_file():
            return path
    raise ConfigError(
        f"unit files not found in {' or '.join(map(str, places))}: reinstall edge-matte"
    )


def default_exec_path() -> Path:
    """The `edge-matte` script of the running installation (next to this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "edge-matte"
    if beside.is_file():
        return beside
    found = shutil.which("edge-matte")
    if found is None:
        raise ConfigError("cannot find the edge-matte executable: pass --exec PATH")
    return Path(found).absolute()


def changed(actions: list[str]) -> bool:
    """Whether a run's report shows any change."""
    return any(line.startswith(_CHANGED) for line in actions)


def install(
    root: Path = Path("/"),
    *,
    exec_path: Path | None = None,
    start: bool = True,
    user: str = "edge-matte",
    source_dir: Path | None = None,
    code_dir: Path | None = None,
) -> list[str]:
    """Install (or bring up to date) the service under `root`; return what was done, line by line.

    `code_dir` is where the service's Python imports edge_matte from: on the board (`root` /)
    by default this running package, whose checkout an editable install points at; with another
    root it is unknown unless given. ConfigError, before anything changes, when the executable,
    its interpreter or the code lie where the unit cannot read them.
    """
    tree = Tree(root)
    source = source_dir or shipped_dir()
    exec_path = exec_path or default_exec_path()
    if code_dir is None and tree.live:
        code_dir = Path(__file__).resolve().parents[1]
    _check_install(tree, exec_path)
    _check_readable(tree, exec_path, code_dir)
    actions = _warnings(tree, exec_path)
    actions.append(_ensure_file(tree(SYSUSERS_FILE), _sysusers(source, user), 0o644, Owner(0, 0)))
    actions.append(_ensure_user(tree, user))
    owner = _lookup_owner(tree, user)
    actions += [
        _ensure_dir(tree(CONFIG_DIR), 0o750, Owner(0, owner.gid)),
        _ensure_dir(tree(STATE_DIR), 0o750, owner),
        _ensure_dir(tree(CACHE_DIR), 0o750, owner),
        _ensure_config(tree, source, owner),
    ]
    unit_results = [
        _ensure_file(
            tree(f"{UNIT_DIR}/{UNIT}"), _main_unit(source, exec_path, user), 0o644, Owner(0, 0)
        ),
        _ensure_file(
            tree(f"{UNIT_DIR}/{PERFORMANCE_UNIT}"),
            (source / PERFORMANCE_UNIT).read_text(),
            0o644,
            Owner(0, 0),
        ),
        _ensure_optional(tree(_CREDENTIALS_DROPIN), _credentials_dropin(tree)),
        _ensure_optional(tree(_DEVICES_DROPIN), _devices_dropin(tree)),
    ]
    unit_actions = [line for line in unit_results if line]
    actions += unit_actions
    actions += _activate(tree, start, reload=changed(unit_actions), restart=changed(actions))
    return actions


def uninstall(root: Path = Path("/"), *, purge: bool = False) -> list[str]:
    """Stop, disable and remove the units; with `purge` also config, state and cache.

    The system user stays, as Debian packages leave theirs: files it owned may survive elsewhere
    and a recycled uid would inherit them.
    """
    tree = Tree(root)
    _check_root(tree)
    units = [unit for unit in (UNIT, PERFORMANCE_UNIT) if tree(f"{UNIT_DIR}/{unit}").exists()]
    actions = (
        [_systemctl(tree, "disable", *(["--now"] if tree.live else []), *units)] if units else []
    )
    targets = [f"{UNIT_DIR}/{unit}" for unit in (UNIT, PERFORMANCE_UNIT)] + [
        _CREDENTIALS_DROPIN,
        _DEVICES_DROPIN,
    ]
    removed = [_remove(tree(target)) for target in targets]
    actions += [line for line in removed if line]
    if tree(_DROPIN_DIR).is_dir() and not any(tree(_DROPIN_DIR).iterdir()):
        tree(_DROPIN_DIR).rmdir()  # an admin's own override.conf keeps it
    if tree.live and changed(actions):
        actions.append(_systemctl(tree, "daemon-reload"))
    if purge:
        purged = [
            _remove(tree(target)) for target in (CONFIG_DIR, STATE_DIR, CACHE_DIR, SYSUSERS_FILE)
        ]
        actions += [line for line in purged if line]
    return actions or ["unchanged: edge-matte is not installed"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-matte install-service`."""
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="install into this directory tree instead of the running system (nothing is started)",
    )
    parser.add_argument(
        "--exec",
        dest="exec_path",
        type=Path,
        default=None,
        help="the edge-matte executable the unit runs (default: the one of this installation)",
    )
    parser.add_argument(
        "--user", default="edge-matte", help="system user the daemon runs as (created if missing)"
    )
    parser.add_argument(
        "--no-start",
        action="store_true",
        help="enable the service for the next boot but do not start it now",
    )
    parser.add_argument(
        "--uninstall",
        action="store_true",
        help="stop, disable and remove the units; config and state stay",
    )
    parser.add_argument(
        "--purge", action="store_true", help="with --uninstall: also delete config, state and cache"
    )


def main_install(args: argparse.Namespace) -> int:
    """Run the install or uninstall the arguments ask for; print each action; 0 on success."""
    if args.purge and not args.uninstall:
        print("edge-matte: --purge only goes with --uninstall", file=sys.stderr)
        return 2
    try:
        if args.uninstall:
            actions = uninstall(args.root, purge=args.purge)
        else:
            actions = install(
                args.root, exec_path=args.exec_path, start=not args.no_start, user=args.user
            )
    except EdgeMatteError as err:
        print(f"edge-matte: install-service: {err}", file=sys.stderr)
        return 1
    for line in actions:
        print(line)
    return 0


# -- checks --------------------------------------------------------------------------------------


def _check_root(tree: Tree) -> None:
    if tree.live and os.geteuid() != 0:
        raise ConfigError("installing the system service needs root: run it with sudo")


def _check_install(tree: Tree, exec_path: Path) -> None:
    _check_root(tree)
    if not exec_path.is_absolute():
        raise ConfigError(f"--exec {exec_path}: must be an absolute path")
    if tree.live and not os.access(exec_path, os.X_OK):
        raise ConfigError(f"--exec {exec_path}: not an executable file")
    existing = tree(CONFIG_FILE)
    if existing.exists():
        # A broken config would fail every start: refuse before changing anything.
        config_mod.load(existing)


def _check_readable(tree: Tree, exec_path: Path, code_dir: Path | None) -> None:
    """Refuse an install the unit could not run: ProtectHome=yes hides these from the service."""
    needed = {"executable": exec_path, "its interpreter": _interpreter(tree, exec_path)}
    if tree.live and exec_path.exists():
        needed["executable (resolved)"] = exec_path.resolve()
    if code_dir is not None:
        needed["the edge_matte code"] = code_dir
    hidden = [f"{what} {path}" for what, path in needed.items() if path and _hidden_home(path)]
    if hidden:
        raise ConfigError(
            f"the service cannot read {', '.join(hidden)}: ProtectHome=yes hides "
            f"{', '.join(_HIDDEN_HOMES)}. Install edge-matte outside them, e.g. "
            "`sudo python3 -m venv --system-site-packages /opt/edge-matte && "
            "sudo /opt/edge-matte/bin/pip install '.[rtsp]'` (not -e), then "
            "`sudo /opt/edge-matte/bin/edge-matte install-service`"
        )


_HIDDEN_HOMES = ("/home", "/root", "/run/user")


def _hidden_home(path: Path) -> bool:
    return any(path == Path(home) or Path(home) in path.parents for home in _HIDDEN_HOMES)


def _interpreter(tree: Tree, exec_path: Path) -> Path | None:
    """The interpreter in the executable's `#!` line (a venv's python), if it has one."""
    try:
        with tree(str(exec_path)).open("rb") as script:
            first = script.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return Path(words[0]) if words else None


def _warnings(tree: Tree, exec_path: Path) -> list[str]:
    warnings = []
    if not tree.live and not tree(str(exec_path)).exists():
        warnings.append(f"warning: {exec_path} does not exist under {tree.root}")
    return warnings


# -- rendering -----------------------------------------------------------------------------------


def _main_unit(source: Path, exec_path: Path, user: str) -> str:
    """The shipped unit with the real executable and user filled in."""
    path = source / UNIT
    lines = path.read_text().splitlines(keepends=True)
    exec_prefix = f"ExecStart={SHIPPED_EXEC} "
    exec_at = _only_line(path, lines, exec_prefix)
    lines[exec_at] = f"ExecStart={exec_path} " + lines[exec_at][len(exec_prefix) :]
    lines[_only_line(path, lines, "User=")] = f"User={user}\n"
    lines[_only_line(path, lines, "Group=")] = f"Group={user}\n"
    return "".join(lines)


def _only_line(path: Path, lines: list[str], prefix: str) -> int:
    hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    if len(hits) != 1:
        raise ConfigError(f"{path}: expected one line starting {prefix!r}, found {len(hits)}")
    return hits[0]


def _sysusers(source: Path, user: str) -> str:
    """The shipped sysusers.d entry for `user` (u and m lines name it in their second field)."""
    lines = []
    for shipped in (source / "edge-matte.sysusers").read_text().splitlines(keepends=True):
        fields = shipped.split(" ", 2)
        named = fields[0] in ("u", "m") and len(fields) == 3
        lines.append(f"{fields[0]} {user} {fields[2]}" if named else shipped)
    return "".join(lines)


def _credentials_dropin(tree: Tree) -> str | None:
    present = [name for name in CREDENTIALS if tree(f"{CONFIG_DIR}/{name}").is_file()]
    if not present:
        return None
    lines = [f"LoadCredential={name}:{CONFIG_DIR}/{name}\n" for name in present]
    return (
        "# Written by edge-matte install-service for the secret files that exist; re-run it after adding one.\n[Service]\n"
        + "".join(lines)
    )


def _devices_dropin(tree: Tree) -> str | None:
    nodes = sorted(
        {
            path
            for pattern in DEVICE_GLOBS
            for path in tree("/dev").glob(pattern)
            if _is_char_device(path)
        }
    )
    if not nodes:
        return None
    lines = [f"DeviceAllow=/{path.relative_to(tree.root)} rw\n" for path in nodes]
    return (
        "# Written by edge-matte install-service: the GPU nodes of this board; re-run it after a JetPack upgrade.\n[Service]\n"
        + "".join(lines)
    )


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False


# -- file system ---------------------------------------------------------------------------------


def _shown(path: Path, mode: int, owner: Owner) -> str:
    return f"{path} ({mode:04o} {owner.uid}:{owner.gid})"


def _can_chown() -> bool:
    return os.geteuid() == 0


def _settled(path: Path, mode: int, owner: Owner) -> bool:
    """Whether `path` already has `mode` (and `owner`, where we could set it)."""
    status = path.stat()
    owned = not _can_chown() or (status.st_uid, status.st_gid) == (owner.uid, owner.gid)
    return owned and stat.S_IMODE(status.st_mode) == mode


def _ensure_dir(path: Path, mode: int, owner: Owner) -> str:
    if not path.is_dir():
        path.mkdir(parents=True)
        verb = "created"
    else:
        verb = "unchanged" if _settled(path, mode, owner) else "updated"
    if verb != "unchanged":
        _set_mode_owner(path, mode, owner)
    return f"{verb} {_shown(path, mode, owner)}"


def _ensure_file(path: Path, text: str, mode: int, owner: Owner) -> str:
    existed = path.is_file()
    if existed and path.read_text() == text and _settled(path, mode, owner):
        return f"unchanged {_shown(path, mode, owner)}"
    atomic.write_text(path, text, mode)
    _set_mode_owner(path, mode, owner)
    return f"{'updated' if existed else 'created'} {_shown(path, mode, owner)}"


def _ensure_optional(path: Path, text: str | None) -> str | None:
    """A root-owned drop-in that exists only when it has content."""
    if text is None:
        return _remove(path)
    return _ensure_file(path, text, 0o644, Owner(0, 0))


def _ensure_config(tree: Tree, source: Path, owner: Owner) -> str:
    """Install the example config once; an existing config is the operator's and is kept."""
    path = tree(CONFIG_FILE)
    if path.exists():
        return f"unchanged {path} (existing config kept)"
    # Root's, readable by the daemon's group: remote changes go to the state directory's
    # overrides file (edge_matte.control.overrides), never here.
    mode, file_owner = 0o640, Owner(0, owner.gid)
    atomic.write_text(path, (source / "edge-matte.yaml").read_text(), mode)
    _set_mode_owner(path, mode, file_owner)
    return f"created {_shown(path, mode, file_owner)}"


def _set_mode_owner(path: Path, mode: int, owner: Owner) -> None:
    try:
        if _can_chown():
            os.chown(path, owner.uid, owner.gid)
        path.chmod(mode)
    except OSError as err:
        raise EdgeMatteError(f"cannot set owner/mode of {path}: {err.strerror}") from err


def _remove(path: Path) -> str | None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    else:
        return None
    return f"removed {path}"


# -- user and systemd ----------------------------------------------------------------------------


def _ensure_user(tree: Tree, user: str) -> str:
    """Create the user and its group memberships through systemd-sysusers, if anything is missing."""
    if _has_user(tree, user) and all(
        user in _group_members(tree, group) for group in ("video", "render")
    ):
        return f"unchanged user {user}"
    existed = _has_user(tree, user)
    tree("/etc").mkdir(parents=True, exist_ok=True)
    root_args = [] if tree.live else [f"--root={tree.root}"]
    _run(["systemd-sysusers", *root_args, str(tree(SYSUSERS_FILE))])
    return f"{'updated' if existed else 'created'} user {user} (groups video, render)"


def _read_db(tree: Tree, name: str) -> list[list[str]]:
    try:
        text = tree(f"/etc/{name}").read_text()
    except FileNotFoundError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _has_user(tree: Tree, user: str) -> bool:
    return any(fields[0] == user for fields in _read_db(tree, "passwd"))


def _group_members(tree: Tree, group: str) -> list[str]:
    for fields in _read_db(tree, "group"):
        if fields[0] == group and len(fields) >= 4:
            return fields[3].split(",")
    return []


def _lookup_owner(tree: Tree, user: str) -> Owner:
    for fields in _read_db(tree, "passwd"):
        if fields[0] == user and len(fields) >= 4:
            return Owner(int(fields[2]), int(fields[3]))
    raise EdgeMatteError(f"user {user} missing from {tree('/etc/passwd')} after systemd-sysusers")


def _activate(tree: Tree, start: bool, *, reload: bool, restart: bool) -> list[str]:
    """Reload systemd, enable the units, start (or restart on change) the daemon."""
    actions = []
    if tree.live and reload:
        actions.append(_systemctl(tree, "daemon-reload"))
    units = [UNIT] + ([PERFORMANCE_UNIT] if tree(JETSON_CLOCKS).exists() else [])
    for unit in units:
        enabled = _run(_systemctl_argv(tree, "is-enabled", unit), check=False) == "enabled"
        actions.append(f"unchanged {unit} enabled" if enabled else _systemctl(tree, "enable", unit))
    if tree.live and start:
        actions.append(_systemctl(tree, "restart" if restart else "start", UNIT))
    return actions


def _systemctl_argv(tree: Tree, *args: str) -> list[str]:
    return ["systemctl", *([] if tree.live else [f"--root={tree.root}"]), *args]


def _systemctl(tree: Tree, *args: str) -> str:
    argv = _systemctl_argv(tree, *args)
    _run(argv)
    return "ran " + " ".join(argv)


def _run(argv: list[str], check: bool = True) -> str:
    """Run a command (argument list, no shell); its stdout, or EdgeMatteError naming it."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EdgeMatteError(f"{' '.join(argv)}: {err}") from err
    if check and done.returncode != 0:
        raise EdgeMatteError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()
