"""Calibration profile: what `edge-matte calibrate` measured about this camera and room.

The daemon loads it to set the empty-scene and classic-engine thresholds and to reapply the
locked camera controls at start. The format is YAML, validated like the config.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import yaml
from pydantic import Field

from edge_matte import atomic
from edge_matte.config.schema import Section, read_yaml, validate
from edge_matte.errors import ConfigError


class Profile(Section):
    """A per-install calibration profile."""

    version: int = Field(1, ge=1, le=1, description="Profile format version")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Profile name")
    created: datetime = Field(..., description="When it was measured")
    source_uri: str = Field(..., description="Source it was measured on")
    width: int = Field(..., ge=16, le=7680, description="Delivered frame width")
    height: int = Field(..., ge=16, le=4320, description="Delivered frame height")
    fps: float = Field(..., gt=0, le=240, description="Measured frame rate")
    noise_sigma: tuple[float, float, float] = Field(
        ..., description="Per-channel (B, G, R) temporal noise standard deviation, 8-bit levels"
    )
    flicker: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Relative peak-to-peak oscillation of the frame mean (mains flicker)",
    )
    noise_floor: float = Field(
        ...,
        ge=0,
        le=255,
        description="Colour distance (8-bit levels) under which a pixel counts as unchanged",
    )
    empty_threshold: float = Field(
        ...,
        ge=0,
        le=255,
        description="Mean absolute frame-to-plate difference (8-bit levels) under which the scene is empty",
    )
    controls: dict[str, int] = Field(
        default_factory=dict,
        description="Camera controls locked at calibration (V4L2 name -> value), reapplied at start",
    )
    unlocked: list[str] = Field(
        default_factory=list, description="Controls that could not be locked on this camera"
    )


def load(path: Path) -> Profile:
    """Read and validate a profile; raise ConfigError naming the problem."""
    data = read_yaml(path, "profile")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: profile must be a mapping")
    return validate(Profile, data, str(path))


def save(profile: Profile, path: Path) -> None:
    """Atomically write the profile as YAML."""
    atomic.write_text(path, yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False))
