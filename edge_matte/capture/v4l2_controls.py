"""V4L2 camera controls through `v4l2-ctl` (v4l-utils): lock automatic exposure, gain and white
balance at calibration, and reapply the locked values when the daemon starts.

A camera that changes its exposure by itself turns a light change into "foreground" for plate
difference, so a fixed exposure is part of a good plate (the paper recommends it too).
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_LOG = logging.getLogger(__name__)

LOCKABLE = ("exposure", "gain", "white_balance")  # reported in Profile.unlocked when not locked
_V4L2_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LockResult:
    """Controls now fixed (name -> value, in the order to reapply) and features left automatic."""

    controls: dict[str, int]
    unlocked: list[str]


@dataclass(frozen=True)
class _Feature:
    """One automatic behaviour: its auto switch (name, value meaning manual) and its manual value."""

    name: str
    # Kernel names differ across versions; the first one the camera has wins.
    autos: tuple[tuple[str, int], ...]
    manuals: tuple[str, ...]
    extras_off: tuple[str, ...] = ()
    lockable: bool = True  # reported when it cannot be locked; focus only when it is automatic


_FEATURES = (
    # exposure_dynamic_framerate / exposure_auto_priority would let the camera drop fps in the dark.
    _Feature(
        "exposure",
        (("auto_exposure", 1), ("exposure_auto", 1)),
        ("exposure_time_absolute", "exposure_absolute"),
        ("exposure_dynamic_framerate", "exposure_auto_priority"),
    ),
    _Feature("gain", (("gain_automatic", 0), ("autogain", 0)), ("gain",)),
    _Feature(
        "white_balance",
        (("white_balance_automatic", 0), ("white_balance_temperature_auto", 0)),
        ("white_balance_temperature",),
    ),
    _Feature(
        "focus",
        (("focus_automatic_continuous", 0), ("focus_auto", 0)),
        ("focus_absolute",),
        lockable=False,
    ),
)
_CONTROL_LINE = re.compile(r"^\s*(\w+)\s+0x[0-9a-fA-F]+\s+\((\w+)\)\s*:(.*)$")


def parse_controls(text: str) -> dict[str, int]:
    """`v4l2-ctl --list-ctrls` output -> {name: current value} (buttons and strings have none)."""
    values = {}
    for line in text.splitlines():
        match = _CONTROL_LINE.match(line)
        if match is None:
            continue
        fields = dict(re.findall(r"(\w+)=(-?\d+)", match.group(3)))
        if "value" in fields:
            values[match.group(1)] = int(fields["value"])
    return values


class CameraControls:
    """A V4L2 camera's controls, read and set with `v4l2-ctl` (never through a shell).

    A missing device or tool reads as "no controls", so calibration reports everything unlocked
    instead of failing.
    """

    def __init__(self, device: str, tool: str = "v4l2-ctl") -> None:
        self.device = device
        self._tool = tool

    def read(self) -> dict[str, int]:
        """Current control values; {} when the device or the tool is unavailable."""
        output = self._run("--list-ctrls")
        return parse_controls(output) if output is not None else {}

    def set(self, name: str, value: int) -> None:
        """Ask for `name` = `value`; read back to see whether the camera took it."""
        self._run(f"--set-ctrl={name}={int(value)}")

    def lock(self) -> LockResult:
        """Switch automatic exposure, gain, white balance (and focus) to manual at their current values."""
        current = self.read()
        if not current:
            return LockResult({}, list(LOCKABLE))
        controls: dict[str, int] = {}
        unlocked = []
        for feature in _FEATURES:
            if not self._lock_feature(feature, current, controls) and (
                feature.lockable or _auto_of(feature, current)
            ):
                unlocked.append(feature.name)
        if unlocked:
            _LOG.warning("%s: could not lock %s", self.device, ", ".join(unlocked))
        return LockResult(controls, unlocked)

    def _lock_feature(
        self, feature: _Feature, current: dict[str, int], controls: dict[str, int]
    ) -> bool:
        auto = _auto_of(feature, current)
        manual = next((name for name in feature.manuals if name in current), None)
        if auto is None and manual is None:
            return False
        wanted = {auto[0]: auto[1]} if auto else {}
        wanted.update({name: 0 for name in feature.extras_off if name in current})
        for name, value in wanted.items():
            self.set(name, value)
        after = self.read()
        controls.update({name: value for name, value in wanted.items() if after.get(name) == value})
        locked = auto is None or after.get(auto[0]) == auto[1]
        if locked and manual in after:
            controls[manual] = after[manual]  # the value auto mode left: now fixed
        return locked

    def _run(self, *args: str) -> str | None:
        argv = [self._tool, "-d", self.device, *args]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_V4L2_TIMEOUT_S, check=False
            )
        except FileNotFoundError:
            _LOG.warning(
                "%s not found (Debian/Ubuntu package v4l-utils): camera controls left automatic",
                self._tool,
            )
            return None
        except (OSError, subprocess.TimeoutExpired) as err:
            _LOG.warning("%s: %s", " ".join(argv), err)
            return None
        if done.returncode != 0:
            _LOG.warning(
                "%s failed: %s", " ".join(argv), done.stderr.strip() or done.stdout.strip()
            )
            return None
        return done.stdout


def _auto_of(feature: _Feature, current: dict[str, int]) -> tuple[str, int] | None:
    return next(((name, value) for name, value in feature.autos if name in current), None)


def apply_controls(device: str, controls: dict[str, int], tool: str = "v4l2-ctl") -> list[str]:
    """Reapply a profile's locked controls in order (the daemon does this at start); return the
    names the camera did not take (all of them when the device or tool is missing)."""
    camera = CameraControls(device, tool)
    for name, value in controls.items():
        camera.set(name, value)
    after = camera.read()
    failed = [name for name, value in controls.items() if after.get(name) != value]
    if failed:
        _LOG.warning("%s: could not reapply %s", device, ", ".join(failed))
    return failed


def v4l2_device(uri: str) -> str | None:
    """The device node of a v4l2:// source URI; None for sources without V4L2 controls."""
    parts = urlsplit(uri)
    return unquote(parts.netloc + parts.path) if parts.scheme == "v4l2" else None
