"""Is someone in view? Debounced from the matte stage, announced as scene.occupied/scene.empty.

The matte stage already knows per frame: a frame that matches the plate within the noise is
idle (nobody there), one that went through the engine has a subject. One frame is not enough to
say so to an operator (a flicker, a compression burst), so the answer changes only after `hold`
consecutive frames agree; without a plate there is no answer (None).
"""

from __future__ import annotations

from edge_matte.events import Emit, Event


class Presence:
    """A debounced person-present flag that emits an event when it changes."""

    def __init__(self, emit: Emit, hold: int) -> None:
        self._emit = emit
        self._hold = max(1, hold)
        self._disagreeing = 0  # consecutive frames agreeing on `_candidate`, against `present`
        self._candidate: bool | None = None
        self.present: bool | None = None

    def update(self, seen: bool | None) -> None:
        """One frame's verdict: True someone, False nobody, None unknown (no plate yet)."""
        if seen is None or seen == self.present:
            self._disagreeing = 0
            return
        same = seen == self._candidate
        self._candidate = seen
        self._disagreeing = self._disagreeing + 1 if same else 1
        if self._disagreeing < self._hold:
            return
        self._disagreeing = 0
        self.present = seen
        if seen:
            self._emit(Event("scene.occupied", "someone is in view"))
        else:
            self._emit(Event("scene.empty", "nobody is in view"))
