"""Random patches driven through `config/set` into a running daemon (the handler layer, as the
MQTT transport calls it): every one is answered, never with a traceback, and is either refused
with the daemon and its saved overrides untouched, or applied and still valid after a restart
(what a fresh start would load from the files equals what runs). Plus: a change is saved before
the pipeline restarts, so a kill during the restart keeps it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fault_tools import running, small_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_matte.config.schema import Config
from edge_matte.control import handlers, overrides, remote
from edge_matte.errors import EdgeMatteError
from edge_matte.runtime import checks
from edge_matte.runtime.daemon import Daemon

KEYS = sorted(remote.flatten(Config().model_dump()))
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100_000),
    st.floats(0, 500, allow_nan=False, allow_subnormal=False),  # torch flushes denormals
    st.sampled_from(
        [
            "blur",
            "replace",
            "passthrough",
            "#00ff00",
            "#12",
            "classic",
            "auto",
            "test://?seed=3",
            "csi://0",
            "file:///etc/passwd",
            "../plate.png",
            "",
            "x" * 300,
            "127.0.0.1",
            "#",
        ]
    ),
    st.lists(st.sampled_from(["composite", "alpha", "debug", "depth"]), max_size=3),
)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = patch
        for part in parents:
            child = node.setdefault(part, {})
            node = child if isinstance(child, dict) else node
        node[leaf] = value
    return patch


PATCHES = st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3).map(nested)


def operator_file(tmp_path: Path) -> tuple[Path, Config]:
    config = small_config(tmp_path / "state", matting={"engine": "classic"})
    data = config.model_dump(mode="json", exclude_unset=True)
    path = tmp_path / "edge-matte.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, config


def saved_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def test_random_patches_are_answered_and_refused_cleanly_or_applied_durably(
    tmp_path: Path,
) -> None:
    path, config = operator_file(tmp_path)
    daemon = Daemon(config, path)
    saved = overrides.path_for(config)
    outcomes = {True: 0, False: 0}
    with running(daemon):

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(patch=PATCHES)
        def fire(patch: dict[str, Any]) -> None:
            before, before_saved = daemon.config(), saved_bytes(saved)
            answer = handlers.dispatch(daemon, "config/set", json.dumps(patch).encode())
            assert answer is not None
            result = answer.result
            assert not any("internal error" in line for line in result["errors"]), result
            outcomes[result["ok"]] += 1
            if not result["ok"]:
                assert daemon.config() is before and saved_bytes(saved) == before_saved
                return
            reloaded = overrides.load(path, checks.problems)
            assert reloaded.effective == daemon.config() and not reloaded.dropped
            assert checks.problems(reloaded.effective) == []

        fire()
    assert outcomes[True] > 0 and outcomes[False] > 0, outcomes


def test_a_change_is_saved_before_the_pipeline_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, config = operator_file(tmp_path)
    daemon = Daemon(config, path)
    seen_on_disk: list[Any] = []
    restart = daemon.restart_pipeline

    def observed(new: Config, profile: Any) -> None:
        seen_on_disk.append(overrides.load(path).effective.source.fps)
        restart(new, profile)

    monkeypatch.setattr(daemon, "restart_pipeline", observed)
    with running(daemon):
        answer = handlers.dispatch(daemon, "config/set", b'{"source": {"fps": 12}}')
        assert answer is not None and answer.result["ok"] is True, answer
    assert seen_on_disk == [12.0]  # a kill inside the restart would have kept it


def test_a_restart_that_fails_is_undone_in_the_saved_overrides_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, config = operator_file(tmp_path)
    daemon = Daemon(config, path)
    start = daemon._start_pipeline
    failures = [EdgeMatteError("stream: cannot listen (injected)")]

    def first_fails(new: Config, profile: Any) -> Any:
        if failures:
            raise failures.pop()
        return start(new, profile)

    with running(daemon):
        assert handlers.dispatch(daemon, "config/set", b'{"compose": {"mode": "blur"}}')
        before = overrides.path_for(config).read_bytes()
        monkeypatch.setattr(daemon, "_start_pipeline", first_fails)
        answer = handlers.dispatch(daemon, "config/set", b'{"source": {"fps": 12}}')
        assert answer is not None and answer.result["ok"] is False
        assert "injected" in answer.result["errors"][0]
        assert overrides.path_for(config).read_bytes() == before
        assert daemon.config().source.fps == config.source.fps
        assert daemon.pipeline.failed is None
