"""The tests' one wait helper fails the same clear way whether it polls or is woken."""

from __future__ import annotations

import threading

import pytest
from waiting import wait_on, wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    values = iter([0, None, [], "ready"])
    assert wait_until(lambda: next(values), 1.0, interval=0) == "ready"


def test_a_timed_out_wait_names_what_it_awaited_and_the_last_value() -> None:
    queue: list[str] = []
    with pytest.raises(AssertionError) as failure:
        wait_until(lambda: queue[:], 0.05, show=lambda: "state: idle")
    message = str(failure.value)
    assert message.startswith("timed out after 0.05 s waiting for")
    assert "lambda: queue[:]" in message  # the condition's own source names it
    assert "last value: []" in message and message.endswith("; state: idle")
    with pytest.raises(AssertionError, match=r"waiting for the camera; last value: False$"):
        wait_until(lambda: False, 0.01, "the camera")


def test_wait_on_is_woken_by_its_condition_and_fails_the_same_way() -> None:
    changed = threading.Condition()
    box: list[str] = []

    def put() -> None:
        with changed:
            box.append("done")
            changed.notify_all()

    threading.Timer(0.05, put).start()
    assert wait_on(changed, lambda: box[:], 5.0) == ["done"]
    with pytest.raises(AssertionError, match=r"waiting for nothing; last value: \[\]; box: 1"):
        wait_on(changed, list, 0.01, "nothing", show=lambda: f"box: {len(box)}")
