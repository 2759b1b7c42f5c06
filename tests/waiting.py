"""The one way tests wait for something to become true.

`wait_until` polls a condition; `wait_on` is the same wait woken by a `threading.Condition`
instead of a clock. Both return the condition's first truthy value, and at the deadline both
fail the test with an AssertionError naming what was awaited (by default the condition's own
source line) and the last value it had, plus anything `show` reports: never a bare False.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

WAIT_S = 15.0  # the default deadline: generous for a loaded 2-core machine
POLL_S = 0.02


def wait_until(
    condition: Callable[[], T],
    timeout: float = WAIT_S,
    what: str | None = None,
    interval: float = POLL_S,
    show: Callable[[], Any] | None = None,
) -> T:
    """Poll `condition` every `interval` s until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(condition, timeout, what, value, show))
        time.sleep(interval)


def wait_on(
    changed: threading.Condition,
    condition: Callable[[], T],
    timeout: float = WAIT_S,
    what: str | None = None,
    show: Callable[[], Any] | None = None,
) -> T:
    """Like `wait_until`, re-checked whenever `changed` is notified (the caller must not hold
    it); `condition` and `show` run with `changed` held."""
    with changed:
        value = changed.wait_for(condition, timeout)
        if not value:
            raise AssertionError(_timed_out(condition, timeout, what, value, show))
        return value


def _timed_out(
    condition: Callable[[], Any],
    timeout: float,
    what: str | None,
    value: Any,
    show: Callable[[], Any] | None,
) -> str:
    message = f"timed out after {timeout:g} s waiting for {what or _describe(condition)}"
    message += f"; last value: {value!r}"
    if show is not None:
        message += f"; {show()}"
    return message


def _describe(condition: Callable[[], Any]) -> str:
    """The condition's source (its line, for a lambda), else its name."""
    try:
        source = inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return getattr(condition, "__qualname__", repr(condition))
    return " ".join(source.split())[:300]
