"""The `test://` source: a generated room where subjects walk in, stay and leave, truth attached.

It makes the daemon runnable and testable anywhere. Every frame carries its true alpha and the
true background (the room as the camera sees it then: light gain and camera shift applied, no
noise), so plate and matting quality can be measured against truth. Frames are a pure function
of (script, index); sensor noise comes from a pre-drawn field of whole 8-bit levels read at a
per-frame offset and added with saturation, and only the subjects' box is composited in float,
which keeps a 720p frame with someone in view to about 6 ms: it stands in for a camera, whose
frames cost the CPU little, and shares the CPU with matting in benchmarks.

URI: `test://` with query overrides of any `SceneScript` field, e.g.
`test://?subjects=2&light_ramp=0.3&seed=3&shift_at=100&shift_px=4,2`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import cv2
import numpy as np

from edge_matte.capture import scene as synth
from edge_matte.errors import ConfigError, SourceError, SourceTimeout
from edge_matte.frames import Frame, SourceInfo

_LOG = logging.getLogger(__name__)
_NOISE_PAD = 32  # per-frame noise offsets range over 32x32 positions of one pre-drawn field
_SWAY_PERIOD_S = 2.5


@dataclass(frozen=True)
class Placement:
    """Where one subject's sprite is pasted: its top-left corner in frame pixels."""

    subject: int
    x: int
    y: int


@dataclass(frozen=True)
class SceneState:
    """What the scene holds at one frame, before rendering."""

    placements: tuple[Placement, ...]
    gain: float  # global light gain on the room (1.0 = as at frame 0)
    shift: tuple[float, float]  # camera translation: the room appears moved by (dx, dy) pixels


@dataclass(frozen=True)
class SceneScript:
    """The timeline of a synthetic scene; every field can be set from the `test://` query.

    A subject's cycle is: walk in (walk_frames), stand (stay_frames, with a little sway), walk out
    (walk_frames), room empty (empty_frames); it starts at enter_frame and repeats when `cycle`.
    Several subjects are staggered by a cycle / subjects, so their visits overlap into a scene
    that is never empty. With `present_from_start` the first subject's timeline starts standing
    (perfectly still, no sway) at frame 0, then walks out and cycles as usual.
    """

    width: int = 1280
    height: int = 720
    fps: float = 30.0
    seed: int = 0
    subjects: int = 1
    present_from_start: bool = False
    enter_frame: int = 30
    walk_frames: int = 30
    stay_frames: int = 90
    leave: bool = True
    cycle: bool = True
    empty_frames: int = 60
    light_ramp: float = 0.0
    ramp_frames: int = 300
    shift_at: int | None = None
    shift_px: tuple[float, float] = (0.0, 0.0)
    noise_sigma: float = 2.0
    _positions: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shift_px", tuple(float(v) for v in self.shift_px))
        problems = [f"{name} {why}" for name, ok, why in _checks(self) if not ok]
        if problems:
            raise ConfigError("test:// scene: " + "; ".join(problems))
        object.__setattr__(self, "_positions", _positions(self))

    @property
    def period(self) -> int:
        """Frames in one visit of a subject, including the empty gap after it."""
        if not self.leave:
            return self.walk_frames + self.stay_frames
        return 2 * self.walk_frames + self.stay_frames + self.empty_frames

    def gain_at(self, index: int) -> float:
        """Global light gain at frame `index`: a linear ramp to 1 + light_ramp, then constant."""
        return 1.0 + self.light_ramp * min(index / self.ramp_frames, 1.0)

    def shift_at_frame(self, index: int) -> tuple[float, float]:
        """Camera translation at frame `index`."""
        moved = self.shift_at is not None and index >= self.shift_at
        return self.shift_px if moved else (0.0, 0.0)

    def truth_at(self, index: int) -> SceneState:
        """Where every subject is, and the light and camera state, at frame `index`."""
        placements = []
        for subject in range(self.subjects):
            offset = self._offset(subject, index)
            if offset is not None:
                placements.append(Placement(subject, *offset))
        return SceneState(tuple(placements), self.gain_at(index), self.shift_at_frame(index))

    def uri(self) -> str:
        """The `test://` URI naming this script's non-default fields (size and fps aside)."""
        query = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.init and spec.name not in ("width", "height", "fps") and value != spec.default:
                query[spec.name] = _format(value)
        return "test://" + (f"?{urlencode(query)}" if query else "")

    def _local_time(self, subject: int, index: int) -> int | None:
        """Frames since the subject's visit began (folded into one cycle), or None when not in view."""
        if subject == 0 and self.present_from_start:
            t = index + self.walk_frames
        else:
            t = index - self.enter_frame - subject * (self.period // self.subjects)
        if t < 0:
            return None
        if self.leave and self.cycle:
            t %= self.period
        if self.leave and t >= 2 * self.walk_frames + self.stay_frames:
            return None
        return t

    def _offset(self, subject: int, index: int) -> tuple[int, int] | None:
        t = self._local_time(subject, index)
        if t is None:
            return None
        outside, target, top = self._positions[subject]
        walk, stay = self.walk_frames, self.stay_frames
        if t < walk:
            progress = (t + 1) / walk
        elif t < walk + stay or not self.leave:
            still = subject == 0 and self.present_from_start and index < stay
            sway = (
                0.0 if still else math.sin(2 * math.pi * (t - walk) / (_SWAY_PERIOD_S * self.fps))
            )
            return target + round(sway * self.width * 0.004), top
        else:
            progress = 1.0 - (t - walk - stay + 1) / walk
        bob = round(abs(math.sin(math.pi * t / max(walk / 3, 1))) * self.height * 0.01)
        return round(outside + (target - outside) * progress), top - bob


def _checks(script: SceneScript) -> list[tuple[str, bool, str]]:
    s = script
    return [
        ("width", 16 <= s.width <= 7680, "must be 16..7680"),
        ("height", 16 <= s.height <= 4320, "must be 16..4320"),
        ("fps", 0 < s.fps <= 240, "must be in (0, 240]"),
        ("seed", s.seed >= 0, "must be >= 0"),
        ("subjects", 1 <= s.subjects <= 8, "must be 1..8"),
        ("enter_frame", s.enter_frame >= 0, "must be >= 0"),
        ("walk_frames", s.walk_frames >= 1, "must be >= 1"),
        ("stay_frames", s.stay_frames >= 1, "must be >= 1"),
        ("empty_frames", s.empty_frames >= 0, "must be >= 0"),
        ("light_ramp", -0.9 <= s.light_ramp <= 2.0, "must be -0.9..2.0"),
        ("ramp_frames", s.ramp_frames >= 1, "must be >= 1"),
        ("shift_at", s.shift_at is None or s.shift_at >= 0, "must be >= 0"),
        (
            "shift_px",
            all(abs(v) <= max(s.width, s.height) / 4 for v in s.shift_px),
            "must be within a quarter frame",
        ),
        ("noise_sigma", 0 <= s.noise_sigma <= 50, "must be 0..50"),
    ]


def _positions(script: SceneScript) -> tuple[tuple[int, int, int], ...]:
    """Per subject: off-screen x it walks from, standing x, and top y (feet below the frame)."""
    rng = np.random.default_rng([script.seed, 7])
    sprite_w, sprite_h = synth.subject_size(script.height)
    result = []
    for subject in range(script.subjects):
        centre = script.width * ((subject + 1) / (script.subjects + 1) + rng.uniform(-0.05, 0.05))
        target = round(centre - sprite_w / 2)
        outside = -sprite_w if subject % 2 == 0 else script.width
        result.append((outside, target, script.height - sprite_h))
    return tuple(result)


def _format(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(_format(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _convert(name: str, text: str) -> object:
    """Parse one query value into the type of SceneScript field `name`; ValueError if it does not fit."""
    default = {f.name: f.default for f in dataclasses.fields(SceneScript)}[name]
    if isinstance(default, bool):
        if text.lower() not in _BOOLS:
            raise ValueError("expected true or false")
        return _BOOLS[text.lower()]
    if isinstance(default, tuple):
        parts = tuple(float(part) for part in text.split(","))
        if len(parts) != 2:
            raise ValueError("expected two numbers x,y")
        return parts
    if isinstance(default, float):
        return float(text)
    if default is None and text.lower() in ("", "none"):
        return None
    return int(text)


def parse_uri(uri: str, width: int, height: int, fps: float) -> SceneScript:
    """Build a SceneScript from `test://?key=value&...`; size and fps come from the source config
    unless the query overrides them. Raise ConfigError naming every unknown key or bad value."""
    parts = urlsplit(uri)
    if parts.scheme != "test" or parts.netloc or parts.path.strip("/") or parts.fragment:
        raise ConfigError(
            f"{uri!r}: a synthetic scene is addressed as test:// or test://?key=value&..."
        )
    known = {f.name for f in dataclasses.fields(SceneScript) if f.init}
    values: dict[str, Any] = {"width": width, "height": height, "fps": fps}
    problems = []
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key not in known:
            problems.append(f"unknown key {key!r}")
            continue
        try:
            values[key] = _convert(key, text)
        except (ValueError, KeyError) as err:
            problems.append(f"{key}={text!r}: {err}")
    if problems:
        raise ConfigError(
            f"{uri!r}: " + "; ".join(problems) + f" (keys: {', '.join(sorted(known))})"
        )
    return SceneScript(**values)


@lru_cache(maxsize=4)
def _noise_field(width: int, height: int, seed: int, sigma: float) -> np.ndarray:
    """Gaussian sensor noise in whole levels (int16), padded for the per-frame offsets."""
    rng = np.random.default_rng([seed, 11])
    noise = rng.standard_normal((height + _NOISE_PAD, width + _NOISE_PAD, 3), dtype=np.float32)
    levels = np.rint(noise * np.float32(sigma)).astype(np.int16)
    levels.setflags(write=False)
    return levels


class SyntheticSource:
    """A FrameSource over a SceneScript; `realtime` paces reads at the script's fps.

    Not thread-safe: one reader, as for every source. `frame_at` renders any frame without
    advancing the stream.
    """

    def __init__(self, script: SceneScript, realtime: bool = True) -> None:
        self._script = script
        self._realtime = realtime
        self._room = synth.room(script.width, script.height, script.seed)
        self._sprites = [self._sprite(k) for k in range(script.subjects)]
        self._noise = _noise_field(script.width, script.height, script.seed, script.noise_sigma)
        self._shifted: dict[tuple[float, float], np.ndarray] = {(0.0, 0.0): self._room}
        self._lit: tuple[tuple[float, float], float, np.ndarray] | None = None
        self._index = 0
        self._due = time.monotonic()
        self._closed = False
        self._info = SourceInfo(script.uri(), script.width, script.height, script.fps)
        _LOG.info(
            "synthetic scene %s at %dx%d %.1f fps",
            self._info.uri,
            script.width,
            script.height,
            script.fps,
        )

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def script(self) -> SceneScript:
        return self._script

    def read(self, timeout: float) -> Frame:
        """The next frame; when realtime, not before it is due (no catch-up burst when read late)."""
        if self._closed:
            raise SourceError(f"{self._info.uri}: source is closed")
        if self._realtime:
            wait = self._due - time.monotonic()
            if wait > timeout:
                time.sleep(max(timeout, 0.0))
                raise SourceTimeout(f"{self._info.uri}: next frame not due within {timeout:.3f} s")
            if wait > 0:
                time.sleep(wait)
            self._due = max(self._due, time.monotonic()) + 1.0 / self._script.fps
        frame = self.frame_at(self._index)
        self._index += 1
        return frame

    def frame_at(self, index: int) -> Frame:
        """Render frame `index`: deterministic for (script, index)."""
        state = self._script.truth_at(index)
        truth_background = self._lit_room(state.shift, state.gain)
        noise = self._noise_view(index)
        image = cv2.add(truth_background, noise, dtype=cv2.CV_8U)
        alpha = np.zeros(image.shape[:2], np.float32)
        box = self._subjects_box(state.placements)
        if box is not None:  # composited in float, then rounded as the room was
            top, left = box[0].start, box[1].start
            canvas = self._background(state.shift)[box] * np.float32(state.gain)
            for placement in state.placements:
                sprite = self._sprites[placement.subject]
                synth.paste_over(canvas, alpha[box], sprite, placement.x - left, placement.y - top)
            image[box] = cv2.add(synth.to_uint8(canvas), noise[box], dtype=cv2.CV_8U)
        media_time = index / self._script.fps  # the scene's own clock: its script counts frames
        return Frame(image, index, time.monotonic(), media_time, alpha, truth_background)

    def close(self) -> None:
        self._closed = True

    def _sprite(self, subject: int) -> synth.Sprite:
        """Subject sprites; about one in three wears a colour close to the room behind it."""
        script = self._script
        rng = np.random.default_rng([script.seed, 13, subject])
        seed = script.seed * 16 + subject
        if rng.random() >= 1 / 3:
            return synth.subject(script.height, seed)
        _, target, top = script._positions[subject]
        behind = self._room[top:, max(target, 0) : target + script.height // 2]
        return synth.subject(script.height, seed, synth.shirt_near(behind, rng))

    def _background(self, shift: tuple[float, float]) -> np.ndarray:
        """The room as the (possibly moved) camera sees it; the one shifted copy is cached."""
        if shift not in self._shifted:
            matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float32)
            size = (self._script.width, self._script.height)
            moved = cv2.warpAffine(
                self._room, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
            self._shifted = {(0.0, 0.0): self._room, shift: moved}
        return self._shifted[shift]

    def _lit_room(self, shift: tuple[float, float], gain: float) -> np.ndarray:
        """The room at this light and camera shift, rounded to uint8 (read-only: frames share it
        until the light or the camera changes)."""
        if self._lit is None or self._lit[:2] != (shift, gain):
            lit = synth.to_uint8(self._background(shift) * np.float32(gain))
            lit.setflags(write=False)
            self._lit = (shift, gain, lit)
        return self._lit[2]

    def _subjects_box(self, placements: tuple[Placement, ...]) -> tuple[slice, slice] | None:
        """The frame's rows and columns that any subject's sprite covers; None with nobody."""
        height, width = self._script.height, self._script.width
        top, left, bottom, right = height, width, 0, 0
        for placement in placements:
            rows, cols = self._sprites[placement.subject].alpha.shape
            top, left = min(top, max(placement.y, 0)), min(left, max(placement.x, 0))
            bottom = max(bottom, min(placement.y + rows, height))
            right = max(right, min(placement.x + cols, width))
        if top >= bottom or left >= right:
            return None
        return slice(top, bottom), slice(left, right)

    def _noise_view(self, index: int) -> np.ndarray:
        dy, dx = np.random.default_rng([self._script.seed, 17, index]).integers(0, _NOISE_PAD, 2)
        return self._noise[dy : dy + self._script.height, dx : dx + self._script.width]
