"""Is the appliance doing its job? One answer for STATUS=, MQTT state, logs and HTTP health.

The output stage keeps its rate without a camera (the NO SIGNAL card), so output fps alone says
nothing about health. `Health` separates frames that came from the camera from all frames sent,
and lists the problems an operator must act on, each as one line that names the cause.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Health:
    """A snapshot of the pipeline's health (see `Pipeline.health`)."""

    source_connected: bool
    source_fps: float  # camera frames reaching the output per second, recent window
    output_fps: float  # every frame sent, NO SIGNAL cards included
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problem(self) -> str | None:
        """All problems on one line, None when healthy."""
        return "; ".join(self.problems) or None


def problems(
    failed: str | None, camera_error: str | None, degraded_engine: str | None
) -> tuple[str, ...]:
    """The problems of a pipeline, worst first: failed stage, missing camera, degraded engine.

    `camera_error` is None while the camera delivers (or is still being opened for the first
    time); `degraded_engine` names the engine in use when it is below the one configured.
    """
    found = []
    if failed is not None:
        found.append(f"pipeline failed: {failed}")
    if camera_error is not None:
        found.append(f"no camera: {camera_error}")
    if degraded_engine is not None:
        found.append(f"engine degraded: running {degraded_engine}")
    return tuple(found)
