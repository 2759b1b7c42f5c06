"""Generated payloads fired at a live control: refused ones change nothing, and it keeps answering."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_broker import Broker, Probe
from test_control_mqtt import online, running

from edge_matte.config import schema as config_mod
from edge_matte.config.schema import Config
from edge_matte.control.topics import COMMANDS

DEVICE = "edge-matte/fuzz"
GROUP = "edge-matte/group/lobby"
# Real keys make some patches valid and many wrong in interesting ways; `mqtt` is left out so a
# valid patch cannot move or disable the connection under test.
SECTIONS = [name for name in Config.model_fields if name != "mqtt"]
FIELDS = sorted(
    {
        field
        for name in SECTIONS
        for field in getattr(Config.model_fields[name].annotation, "model_fields", {})
    }
)

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.sampled_from(FIELDS) | st.text(max_size=8).filter(lambda key: key != "mqtt")
patches = st.dictionaries(
    st.sampled_from(SECTIONS) | keys, st.dictionaries(keys, values, max_size=3) | values, max_size=3
)
requests_ = st.one_of(
    patches.map(lambda patch: json.dumps(patch).encode()),
    st.builds(
        lambda patch, request_id: json.dumps({"id": request_id, **patch}).encode(), patches, values
    ),
    values.map(lambda value: json.dumps(value).encode()),
    st.binary(min_size=1, max_size=120),  # an empty payload is not a request: never answered
)
command_names = st.sampled_from(COMMANDS) | st.text("abcz/_-.", min_size=1, max_size=12).filter(
    lambda name: name != "result"
)
targets = st.tuples(
    st.sampled_from([DEVICE, GROUP]),
    st.just("config/set") | command_names.map(lambda name: f"cmd/{name}"),
)


def test_generated_requests_never_change_anything_when_refused(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        mqtt = broker.mqtt_config(device_id="fuzz", group="lobby")
        with Probe(broker, f"{DEVICE}/#") as probe, running(tmp_path, mqtt) as api:
            online(probe, mqtt)
            outcomes: Counter[bool] = Counter()

            @settings(
                max_examples=300,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(target=targets, payload=requests_)
            def fire(target: tuple[str, str], payload: bytes) -> None:
                base, relative = target
                answer_topic = (
                    f"{DEVICE}/config/result"
                    if relative == "config/set"
                    else f"{DEVICE}/cmd/result"
                )
                before_file, before_config = api.path.read_bytes(), api.config()
                answer = probe.request(f"{base}/{relative}", payload, answer_topic).json()
                outcomes[answer["ok"]] += 1
                if answer["ok"]:
                    assert config_mod.load(api.path).to_json() == api.config().to_json()
                else:
                    assert api.path.read_bytes() == before_file
                    assert api.config() is before_config

            fire()
            assert outcomes[True] > 0 and outcomes[False] > outcomes[True]  # both paths exercised
            still = probe.request(
                f"{DEVICE}/config/set",
                '{"id": "last", "log_level": "ERROR"}',
                f"{DEVICE}/config/result",
            )
            assert still.json() == {"id": "last", "ok": True, "errors": []}
