"""Retained topics that follow the truth: republished when what they describe changed.

`Retained` remembers the last payload sent on each retained topic, so a republish that would
say nothing new is skipped (volatile fields, such as an age that grows every second, are left out
of the comparison). `Pacer` turns "something may have changed" pokes (events, from any thread)
into at most one republish per interval, never dropping the last one: a burst of plate and
source events becomes one retained message with the final state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any


class Retained:
    """Decides which retained payloads are worth sending (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[str, str] = {}

    def changed(self, topic: str, data: dict[str, Any], volatile: Iterable[str] = ()) -> bool:
        """Whether `data` differs from what was last sent on `topic` (ignoring `volatile` keys);
        when it does, it is remembered as sent."""
        skipped = set(volatile)
        key = json.dumps(
            {k: v for k, v in data.items() if k not in skipped}, sort_keys=True, default=str
        )
        with self._lock:
            if self._sent.get(topic) == key:
                return False
            self._sent[topic] = key
            return True

    def forget(self) -> None:
        """After a (re)connect everything is sent again (the broker may have lost it)."""
        with self._lock:
            self._sent.clear()


class Pacer:
    """Runs `action` after pokes, at most once per `interval_s`, on its own thread."""

    def __init__(self, action: Callable[[], None], interval_s: float, name: str) -> None:
        self._action = action
        self._interval_s = interval_s
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Something may have changed (cheap; callable from any thread, events included)."""
        self._poked.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._poked.wait()
            if self._stop.is_set():
                return
            self._poked.clear()  # pokes from now on lead to another run
            self._action()
            if self._stop.wait(self._interval_s):
                return


def fit_jpeg(jpeg: bytes, max_bytes: int, quality: int = 80) -> bytes | None:
    """`jpeg` itself if within `max_bytes`, else the image halved until it fits (None if even a
    thumbnail does not): a retained image must never grow the broker's store without bound."""
    if len(jpeg) <= max_bytes:
        return jpeg
    import cv2  # only the image entity needs it
    import numpy as np

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    while image is not None and min(image.shape[:2]) >= 32:
        image = cv2.resize(
            image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(data) <= max_bytes:
            return data.tobytes()
    return None
