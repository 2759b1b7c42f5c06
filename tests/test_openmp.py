"""`on_passing_thread`: one-off torch work on a thread that ends with it."""

from __future__ import annotations

import threading

import pytest

from edge_matte.engine.openmp import on_passing_thread


def test_the_work_runs_on_another_thread_that_is_gone_afterwards() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert on_passing_thread(work) == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()  # its OpenMP pool, if any, went with it


def test_the_work_s_exception_reaches_the_caller() -> None:
    def work() -> None:
        raise KeyError("no such engine")

    with pytest.raises(KeyError, match="no such engine"):
        on_passing_thread(work)
