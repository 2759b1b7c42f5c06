"""Still composites with known truth, built from the `test://` scene's room and subjects.

The engines' quality tests matte these: one frame, its plate and everything true about it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_matte.capture.scene import Sprite, paste_over, room, shirt_near, subject, to_uint8


@dataclass(frozen=True)
class Composite:
    """One test image with everything known about it."""

    image: np.ndarray  # [H, W, 3] uint8: the frame the camera delivers (gain, noise)
    plate: np.ndarray  # [H, W, 3] uint8: the empty room as captured earlier (gain 1, little noise)
    alpha: np.ndarray  # [H, W] float32: the true alpha
    foreground: np.ndarray  # [H, W, 3] float32 BGR: the true subject colour (where alpha > 0)
    background: np.ndarray  # [H, W, 3] float32 BGR: the room behind the subject, gain applied


def make_composite(
    width: int,
    height: int,
    seed: int = 0,
    gain: float = 1.0,
    noise_sigma: float = 2.0,
    plate_noise_sigma: float = 0.7,
    camouflage: float | None = None,
) -> Composite:
    """A frame with one subject standing in the room, its plate and its truth.

    `gain` changes the room's light since the plate was taken; `noise_sigma` is the frame's sensor
    noise and `plate_noise_sigma` the plate's (a temporal median leaves a little). `camouflage`
    gives the subject a shirt that many levels from the room's colour behind it.
    """
    rng = np.random.default_rng([seed, *b"composite"])
    background = room(width, height, seed)
    shirt = (
        None
        if camouflage is None
        else shirt_near(background[height // 2 :, width // 3 : 2 * width // 3], rng, camouflage)
    )
    sprite = subject(height, seed, shirt)
    canvas = background * np.float32(gain)
    alpha = np.zeros((height, width), np.float32)
    x = (width - sprite.size[0]) // 2 + int(rng.integers(-width // 8, width // 8 + 1))
    paste_over(canvas, alpha, sprite, x, height - sprite.size[1])
    foreground = np.zeros_like(canvas)
    solid = Sprite(np.ones_like(sprite.alpha), sprite.colour)
    paste_over(foreground, np.zeros_like(alpha), solid, x, height - sprite.size[1])
    image = to_uint8(canvas + rng.normal(0, noise_sigma, canvas.shape).astype(np.float32))
    plate = to_uint8(background + rng.normal(0, plate_noise_sigma, canvas.shape).astype(np.float32))
    return Composite(image, plate, alpha, foreground, background * np.float32(gain))
