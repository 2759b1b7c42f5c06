"""Person presence (Home Assistant's occupancy sensor) and the list of event kinds."""

from __future__ import annotations

import re
from pathlib import Path

from edge_matte.events import KINDS, Event
from edge_matte.runtime.presence import Presence

PACKAGE = Path(__file__).resolve().parents[1] / "edge_matte"


def test_presence_changes_only_after_hold_frames_agree() -> None:
    events: list[Event] = []
    presence = Presence(events.append, hold=3)
    for seen in (None, True, True, False, True, True):  # a one-frame flicker resets the count
        presence.update(seen)
    assert presence.present is None and events == []
    presence.update(True)
    assert presence.present is True and [e.kind for e in events] == ["scene.occupied"]
    for _ in range(2):
        presence.update(False)
    presence.update(None)  # no plate: no verdict, no change
    assert presence.present is True
    for _ in range(3):
        presence.update(False)
    assert presence.present is False and events[-1].kind == "scene.empty"


def test_every_emitted_event_kind_is_listed() -> None:
    """Home Assistant's event entity ignores kinds it was not told about in advance."""
    emitted: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        emitted |= set(re.findall(r'Event\(\s*"([a-z_]+\.[a-z_]+)"', text))
        if path.name == "keeper.py":  # the keeper passes its kinds to _change
            emitted |= set(re.findall(r'"(plate\.[a-z_]+)"', text))
    assert emitted and emitted <= set(KINDS), emitted - set(KINDS)
