"""Generated rooms and subjects whose true alpha and background are known.

The `test://` source and the quality tests' composites (tests/composites.py) are built from
these blocks, so the daemon, the plate logic and the engines can be checked anywhere, without
cameras, photos or datasets. Every value is linear float BGR in 0..255 (the camera's 8-bit
scale, no gamma), so a light change is a plain gain and a composite is
`I = a*F + (1-a)*B*gain + noise`, as the matting literature assumes. Rooms and sprites are
rendered once per (size, seed) and cached: a frame is only pasting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import cv2
import numpy as np

# Subject masks are drawn at 4x and area-downsampled, so thin strands get fractional alpha.
_SUPERSAMPLE = 4
_ROOM_RANGE = (12.0, 190.0)  # headroom so a +30% light ramp does not clip
_WALLS = ((168, 186, 200), (170, 172, 176), (190, 176, 160), (150, 172, 160), (140, 160, 185))
_SHIRTS = (
    (90, 45, 30),
    (45, 45, 160),
    (60, 115, 60),
    (105, 105, 108),
    (28, 28, 30),
    (40, 140, 185),
    (120, 110, 40),
    (150, 90, 140),
)
_SKINS = ((120, 150, 195), (90, 120, 170), (60, 85, 125), (140, 165, 200))
_HAIRS = ((20, 22, 28), (30, 45, 70), (60, 100, 140), (45, 45, 50))


@dataclass(frozen=True)
class Sprite:
    """A subject cut-out: true alpha and colour, pasted into frames by offset."""

    alpha: np.ndarray  # [h, w] float32 in [0, 1]; fractional at the soft boundary and hair
    colour: np.ndarray  # [h, w, 3] float32 BGR 0..255 (meaningful where alpha > 0)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.alpha.shape[1], self.alpha.shape[0]

    @cached_property
    def transmission(self) -> np.ndarray:
        """1 - alpha, per channel: how much of what is behind shows through."""
        return _frozen(np.repeat((1 - self.alpha)[..., None], 3, axis=2))

    @cached_property
    def premultiplied(self) -> np.ndarray:
        """alpha * colour, the sprite's own contribution to a composite."""
        return _frozen(self.colour * self.alpha[..., None])


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _rng(seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, *salt.encode()])


def value_noise(
    rng: np.random.Generator, height: int, width: int, cell: tuple[float, float]
) -> np.ndarray:
    """Smooth noise of roughly unit spread: a random grid with (cy, cx) pixel spacing, bicubic-upsampled."""
    cy, cx = max(cell[0], 1.0), max(cell[1], 1.0)
    grid = rng.standard_normal((int(height / cy) + 3, int(width / cx) + 3)).astype(np.float32)
    size = (round(grid.shape[1] * cx), round(grid.shape[0] * cy))
    return cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)[:height, :width]


def _octaves(rng: np.random.Generator, height: int, width: int, cells: list[float]) -> np.ndarray:
    total = np.zeros((height, width), np.float32)
    for level, cell in enumerate(cells):
        total += value_noise(rng, height, width, (cell, cell)) * 0.7**level
    return total


def room(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The empty room (read-only float32 [H, W, 3] BGR): textured walls, floor and furniture."""
    return _room(int(width), int(height), int(seed))


@lru_cache(maxsize=8)
def _room(width: int, height: int, seed: int) -> np.ndarray:
    rng = _rng(seed, "room")
    img: np.ndarray = np.empty((height, width, 3), np.float32)
    img[:] = _WALLS[rng.integers(len(_WALLS))]
    texture = _octaves(rng, height, width, [height / 3, height / 10, height / 30, height / 90, 2.0])
    img += (texture * 7.0)[..., None]
    floor_y = int(height * rng.uniform(0.72, 0.82))
    _draw_floor(img, rng, floor_y)
    for draw in (_draw_door, _draw_window, _draw_picture, _draw_shelf, _draw_sofa):
        if rng.random() < 0.8:
            draw(img, rng, floor_y)
    img += (
        rng.normal(0, 4.0, (1, 1, 3)).astype(np.float32)
        * value_noise(rng, height, width, (height / 4, height / 4))[..., None]
    )
    img *= _lighting(rng, height, width)[..., None]
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    return _frozen(np.clip(img, *_ROOM_RANGE))


def _lighting(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A lamp somewhere above: brighter near it, with a gentle falloff."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    lx, ly = rng.uniform(0, width), rng.uniform(-0.3, 0.2) * height
    dist = np.hypot(xx - lx, yy - ly) / max(height, width)
    return (1.12 - 0.35 * dist).astype(np.float32)


def _box(
    rng: np.random.Generator,
    img: np.ndarray,
    w_frac: tuple[float, float],
    h_frac: tuple[float, float],
    bottom: int | None = None,
) -> tuple[int, int, int, int]:
    height, width = img.shape[:2]
    bw = int(width * rng.uniform(*w_frac))
    bh = int(height * rng.uniform(*h_frac))
    x0 = int(rng.uniform(0, max(width - bw, 1)))
    y0 = bottom - bh if bottom is not None else int(rng.uniform(0.05, 0.5) * height)
    return x0, max(y0, 0), x0 + bw, min(y0 + bh, height)


def _draw_floor(img: np.ndarray, rng: np.random.Generator, floor_y: int) -> None:
    height, width = img.shape[:2]
    rows = height - floor_y
    wood = np.array([rng.uniform(40, 70), rng.uniform(75, 105), rng.uniform(110, 150)], np.float32)
    grain = value_noise(rng, rows, width, (max(rows / 40, 1), width / 6)) * 12
    floor = wood + grain[..., None]
    plank = max(rows // 5, 3)
    floor[::plank] *= 0.6
    floor[:, rng.integers(width // 3) :: max(width // 3, 1)] *= 0.7
    img[floor_y:] = floor
    img[max(floor_y - 3, 0) : floor_y] = wood * 0.5  # skirting board


def _draw_door(img: np.ndarray, rng: np.random.Generator, floor_y: int) -> None:
    x0, y0, x1, y1 = _box(rng, img, (0.08, 0.12), (0.6, 0.7), bottom=floor_y)
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * 0.8 + np.float32(rng.uniform(20, 50))
    inset = max((x1 - x0) // 8, 2)
    cv2.rectangle(img, (x0 + inset, y0 + inset), (x1 - inset, (y0 + y1) // 2), (0, 0, 0), 1)
    cv2.rectangle(img, (x0 + inset, (y0 + y1) // 2 + inset), (x1 - inset, y1 - inset), (0, 0, 0), 1)
    cv2.circle(img, (x1 - 2 * inset, (y0 + y1) // 2), max(inset // 2, 1), (40, 90, 120), -1)


def _draw_window(img: np.ndarray, rng: np.random.Generator, floor_y: int) -> None:
    x0, y0, x1, y1 = _box(rng, img, (0.12, 0.2), (0.2, 0.3))
    sky = (
        np.array([185, 175, 150], np.float32)
        + value_noise(rng, y1 - y0, x1 - x0, ((y1 - y0) / 3, (x1 - x0) / 3))[..., None] * 8
    )
    img[y0:y1, x0:x1] = sky
    bar = max((x1 - x0) // 30, 2)
    colour = (235, 235, 230)
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, bar)
    cv2.line(img, ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), colour, bar)
    cv2.line(img, (x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2), colour, bar)


def _draw_picture(img: np.ndarray, rng: np.random.Generator, floor_y: int) -> None:
    x0, y0, x1, y1 = _box(rng, img, (0.06, 0.14), (0.1, 0.2))
    h, w = y1 - y0, x1 - x0
    art = np.stack([value_noise(rng, h, w, (h / 4, w / 4)) for _ in range(3)], axis=-1)
    img[y0:y1, x0:x1] = 110 + art * 45
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (20, 30, 40), max(w // 20, 2))


def _draw_shelf(img: np.ndarray, rng: np.random.Generator, floor_y: int) -> None:
    x0, y0, x1, y1 = _box(rng, img, (0.12, 0.2), (0.4, 0.55), bottom=floor_y)
    img[y0:y1, x0:x1] = (40, 60, 85)
    rows = int(rng.integers(3, 5))
    row_h = (y1 - y0) // rows
    for row in range(rows):
        top, x = y0 + row * row_h + 4, x0 + 4
        while x < x1 - 6:
            spine = int(rng.integers(max(row_h // 12, 2), max(row_h // 5, 3)))
            book_top = top + int(rng.integers(0, max(row_h // 4, 1)))
            img[book_top : top + row_h - 4, x : min(x + spine, x1 - 4)] = rng.uniform(30, 185, 3)
            x += spine + 1


def _draw_sofa(img: np.ndarray, rng: np.random.Generator, floor_y: int) -> None:
    x0, y0, x1, y1 = _box(rng, img, (0.25, 0.4), (0.15, 0.22), bottom=floor_y + img.shape[0] // 20)
    fabric = rng.uniform(40, 170, 3).astype(np.float32)
    texture = value_noise(rng, y1 - y0, x1 - x0, (3.0, 3.0))[..., None] * 5
    img[y0:y1, x0:x1] = fabric + texture
    for k in range(1, 3):
        x = x0 + (x1 - x0) * k // 3
        cv2.line(img, (x, y0 + (y1 - y0) // 3), (x, y1), tuple(float(c) * 0.6 for c in fabric), 2)
    cv2.line(
        img,
        (x0, y0 + (y1 - y0) // 3),
        (x1, y0 + (y1 - y0) // 3),
        tuple(float(c) * 0.7 for c in fabric),
        2,
    )


def subject_size(height: int) -> tuple[int, int]:
    """(width, height) of the subject sprite made for frames `height` tall."""
    return round(0.56 * height), round(0.8 * height)


def subject(height: int, seed: int = 0, shirt: tuple[float, float, float] | None = None) -> Sprite:
    """A head-and-torso subject for frames `height` tall, with a hair fringe; `shirt` sets its main colour."""
    key = None if shirt is None else tuple(float(c) for c in shirt)
    return _subject(int(height), int(seed), key)


@lru_cache(maxsize=32)
def _subject(height: int, seed: int, shirt: tuple[float, float, float] | None) -> Sprite:
    rng = _rng(seed, "subject")
    masks = _subject_masks(rng, height)
    w, h = subject_size(height)
    small = {
        name: cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        for name, mask in masks.items()
    }
    body = cv2.GaussianBlur(small["body"], (0, 0), 0.5 + height / 720)
    alpha = np.clip(np.maximum(body, small["strands"] * 0.9), 0, 1)
    colour = _subject_colour(rng, small, shirt)
    return Sprite(_frozen(alpha.astype(np.float32)), _frozen(colour))


def _subject_masks(rng: np.random.Generator, height: int) -> dict[str, np.ndarray]:
    """Binary masks at 4x: body (torso, neck, head), face, hair mass and hair strands."""
    u = height * _SUPERSAMPLE
    w, h = (side * _SUPERSAMPLE for side in subject_size(height))
    cx, head_y = w // 2, int(0.17 * u)
    ax, ay = int(0.068 * u * rng.uniform(0.9, 1.1)), int(0.088 * u * rng.uniform(0.9, 1.1))
    shoulder_y, half = head_y + int(0.15 * u), int(0.2 * u * rng.uniform(0.9, 1.1))
    body, face, hair, strands = (np.zeros((h, w), np.uint8) for _ in range(4))
    cv2.ellipse(body, (cx, shoulder_y + int(0.07 * u)), (half, int(0.08 * u)), 0, 180, 360, 1, -1)
    torso = np.array(
        [
            [cx - half, shoulder_y + int(0.07 * u)],
            [cx + half, shoulder_y + int(0.07 * u)],
            [cx + int(half * 1.08), h],
            [cx - int(half * 1.08), h],
        ]
    )
    cv2.fillPoly(body, [torso], 1)
    cv2.rectangle(
        body,
        (cx - int(0.035 * u), head_y),
        (cx + int(0.035 * u), shoulder_y + int(0.02 * u)),
        1,
        -1,
    )
    cv2.ellipse(face, (cx, head_y), (ax, ay), 0, 0, 360, 1, -1)
    body |= face
    face[: head_y - int(ay * rng.uniform(0.3, 0.6))] = 0  # below the hairline
    long_hair = rng.random() < 0.5
    hair_axes = (int(ax * 1.12), int(ay * (1.35 if long_hair else 1.06)))
    hair_y = head_y + (int(0.035 * u) if long_hair else -int(0.01 * u))
    cv2.ellipse(hair, (cx, hair_y), hair_axes, 0, 0, 360, 1, -1)
    if not long_hair:
        hair[head_y + ay // 3 :] = 0
    hair &= 1 - face
    body |= hair
    _draw_strands(rng, strands, (cx, hair_y), hair_axes, u, long_hair)
    strands &= 1 - hair - face
    return {"body": body, "face": face, "hair": hair, "strands": strands}


def _draw_strands(
    rng: np.random.Generator,
    canvas: np.ndarray,
    centre: tuple[int, int],
    axes: tuple[int, int],
    u: int,
    long_hair: bool,
) -> None:
    """Flyaway strands leaving the hair outline and falling under their weight.

    They are 1-2 px wide at 4x, so after downsampling their alpha is fractional (about 0.25-0.5).
    """
    low = 0.05 * np.pi if not long_hair else 0.4 * np.pi
    for _ in range(int(150 * rng.uniform(0.7, 1.3))):
        angle = rng.uniform(-np.pi - low, low)
        x, y = (
            centre[0] + 0.97 * axes[0] * np.cos(angle),
            centre[1] + 0.97 * axes[1] * np.sin(angle),
        )
        side = 1.0 if np.cos(angle) >= 0 else -1.0
        heading = angle + side * rng.uniform(0.2, 0.9)  # leave at a slant, combed sideways
        step = rng.uniform(0.008, 0.03) * u / 4
        points = [(x, y)]
        for _ in range(4):
            heading += side * 0.25 + rng.normal(0, 0.15)  # curl over and down
            x, y = x + step * np.cos(heading), y + step * np.sin(heading)
            points.append((x, y))
        cv2.polylines(canvas, [np.array(points, np.int32)], False, 1, int(rng.integers(1, 3)))


def _subject_colour(
    rng: np.random.Generator, masks: dict[str, np.ndarray], shirt: tuple[float, float, float] | None
) -> np.ndarray:
    h, w = masks["body"].shape
    base = np.array(shirt if shirt is not None else _SHIRTS[rng.integers(len(_SHIRTS))], np.float32)
    folds = 1.0 + 0.08 * value_noise(rng, h, w, (h / 8, w / 5))
    colour = base * folds[..., None] + value_noise(rng, h, w, (2.0, 2.0))[..., None] * 4
    if rng.random() < 0.3:
        stripe = (np.arange(h) // max(h // 30, 2)) % 2 == 1
        colour[stripe] = colour[stripe] * 0.7 + 20
    skin = (
        np.array(_SKINS[rng.integers(len(_SKINS))], np.float32)
        * (1 + 0.05 * value_noise(rng, h, w, (h / 20, h / 20)))[..., None]
    )
    hair = (
        np.array(_HAIRS[rng.integers(len(_HAIRS))], np.float32)
        + value_noise(rng, h, w, (h / 6, 1.5))[..., None] * 10
    )
    face = masks["face"][..., None]
    colour = colour * (1 - face) + skin * face
    hair_weight = np.clip(masks["hair"] + masks["strands"], 0, 1)[..., None]
    colour = colour * (1 - hair_weight) + hair * hair_weight
    return np.clip(colour, 5, 230).astype(np.float32)


def paste_over(
    canvas: np.ndarray, canvas_alpha: np.ndarray, sprite: Sprite, x: int, y: int
) -> None:
    """Composite `sprite` with its top-left at (x, y) over `canvas` in place, clipped to the frame.

    `canvas_alpha` accumulates the true alpha of everything pasted (A <- a + (1 - a) * A), so
    several overlapping subjects keep an exact truth. OpenCV writes into the views directly,
    which keeps a 720p paste well under a millisecond.
    """
    boxes = _clip(canvas.shape[:2], sprite.alpha.shape, x, y)
    if boxes is None:
        return
    dst, src = boxes
    region, region_alpha = canvas[dst], canvas_alpha[dst]
    cv2.multiply(region, sprite.transmission[src], dst=region)
    cv2.add(region, sprite.premultiplied[src], dst=region)
    cv2.multiply(region_alpha, sprite.transmission[src][..., 0], dst=region_alpha)
    cv2.add(region_alpha, sprite.alpha[src], dst=region_alpha)


def _clip(
    frame: tuple[int, ...], sprite: tuple[int, ...], x: int, y: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + sprite[1], frame[1]), min(y + sprite[0], frame[0])
    if x0 >= x1 or y0 >= y1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and saturate a float image to uint8, as a sensor's ADC would."""
    return cv2.convertScaleAbs(cv2.threshold(image, 0, 0, cv2.THRESH_TOZERO)[1])


def shirt_near(
    background: np.ndarray, rng: np.random.Generator, distance: float = 18.0
) -> tuple[float, float, float]:
    """A shirt colour `distance` levels from the mean of `background`: a near-camouflage subject."""
    direction = rng.normal(size=3)
    mean = background.reshape(-1, 3).mean(axis=0)
    colour = mean + distance * direction / np.linalg.norm(direction)
    blue, green, red = (float(c) for c in np.clip(colour, 5, 230))
    return blue, green, red
