"""A one-item hand-over between pipeline threads that drops stale items.

A camera does not wait for inference: when the consumer is slower, the newest item replaces the
one still waiting and the drop is counted. Memory is bounded by one item per hand-over.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item; `put` never blocks, `get` waits for a new one or a timeout."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()

    def get(self, timeout: float) -> T | None:
        """The waiting item, or None on timeout or when closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake every waiter; later gets return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
