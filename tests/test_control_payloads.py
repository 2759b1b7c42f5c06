"""Payload validation, topic routing and discovery documents (no broker needed)."""

from __future__ import annotations

import base64
import json

import pytest

from edge_matte.config.schema import MqttConfig
from edge_matte.control import discovery
from edge_matte.control.payloads import (
    PayloadError,
    command_args,
    decode_object,
    peek_id,
    split_id,
)
from edge_matte.control.topics import BACKGROUND_SET, COMMANDS, Topics

LIMIT = 1024


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (b"{not json", "<payload>: malformed JSON"),
        (b"", "<payload>: malformed JSON"),
        (b"[1, 2]", "<payload>: must be a JSON object, got array"),
        (b'"text"', "<payload>: must be a JSON object, got string"),
        (b"\xff\xfe{}", "<payload>: not UTF-8"),
        (b'{"source": {"fps": NaN}}', "<payload>: malformed JSON"),
        (b'{"a": "' + b"x" * LIMIT + b'"}', "<payload>: larger than mqtt.max_payload_bytes"),
        (b"[" * 5000 + b"]" * 5000, "<payload>"),
        (
            json.dumps({"a": [[[{"b": [[[[1]]]]}]]]})
            .encode()
            .replace(b"1", b"[" * 30 + b"1" + b"]" * 30),
            "nested deeper",
        ),
        (
            b'{"compose": {"background": "\\ud800"}}',
            "compose.background: contains an unpaired surrogate",
        ),
        (b'{"compose": {"background": "a\\u0000b"}}', "compose.background: contains a NUL"),
        (b'{"list": ["ok", "\\u0000"]}', "list[1]: contains a NUL"),
    ],
)
def test_decode_object_refuses_bad_payloads_naming_the_key(payload: bytes, key: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_object(payload, LIMIT)
    assert any(key in line for line in caught.value.errors), caught.value.errors


def test_decode_object_accepts_objects_and_never_blank_payloads() -> None:
    assert decode_object(b' {"compose": {"mode": "blur"}} ', LIMIT) == {"compose": {"mode": "blur"}}
    with pytest.raises(PayloadError, match="malformed JSON"):
        decode_object(b"  ", LIMIT)  # a command without arguments is {}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [({"id": "r1", "a": 1}, ("r1", {"a": 1})), ({"id": 7}, (7, {})), ({"a": 1}, (None, {"a": 1}))],
)
def test_split_id_takes_the_request_id_out(request_: dict, expected: tuple) -> None:
    assert split_id(request_) == expected


@pytest.mark.parametrize("bad_id", [True, 1.5, [1], {"a": 1}, "x" * 200])
def test_split_id_refuses_ids_that_cannot_be_echoed(bad_id: object) -> None:
    with pytest.raises(PayloadError, match=r"^id: "):
        split_id({"id": bad_id})


def test_a_refusal_for_a_bad_value_still_carries_the_request_id() -> None:
    """The controller matches answers by id: a NUL elsewhere in the request must not lose it."""
    payload = b'{"id": "r1", "source": {"uri": "rtsp://a\\u0000b/x"}}'
    with pytest.raises(PayloadError, match=r"source.uri: contains a NUL"):
        decode_object(payload, LIMIT)
    assert peek_id(payload, LIMIT) == "r1"
    for unusable in (
        b'{"id": "a\\u0000b"}',
        b'{"id": [1]}',
        b"{",
        b"[]",
        b'{"id": "x"}' + b" " * LIMIT,
    ):
        assert peek_id(unusable, LIMIT) is None, unusable


PNG_BYTES = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("plate/capture", {}, {}),
        ("restart", {}, {}),
        ("background/set", {"name": "beach.png"}, {"name": "beach.png"}),
        ("background/set", {"image_base64": PNG_BYTES}, {"image_base64": PNG_BYTES}),
    ],
)
def test_command_args_accepts_valid_shapes(name: str, args: dict, expected: dict) -> None:
    assert command_args(name, args, LIMIT) == expected


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("plate/explode", {}, "command: unknown command 'plate/explode'"),
        ("result", {}, "unknown command"),
        ("plate/capture", {"now": True}, "now: unknown argument for plate/capture"),
        ("background/set", {}, "give exactly one"),
        ("background/set", {"name": "a.png", "image_base64": PNG_BYTES}, "give exactly one"),
        ("background/set", {"name": 3}, "name: must be a string"),
        ("background/set", {"name": ""}, "name: must be 1 to"),
        ("background/set", {"name": "a.png", "path": "/etc"}, "path: unknown argument"),
        ("background/set", {"image_base64": "!!not base64!!"}, "image_base64: not valid base64"),
        (
            "background/set",
            {"image_base64": base64.b64encode(b"x" * (LIMIT + 1)).decode()},
            "image_base64: decoded size",
        ),
        ("background/set", {"image_base64": ""}, "image_base64: decoded size 0"),
    ],
)
def test_command_args_refuses_bad_shapes(name: str, args: dict, message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("(", r"\(")):
        command_args(name, args, LIMIT)


def test_every_command_of_the_table_is_validated_and_only_those() -> None:
    """The one command table drives validation: a name added there is accepted at once."""
    for name in COMMANDS:
        args = {"name": "beach.png"} if name == BACKGROUND_SET else {}
        assert command_args(name, args, LIMIT) == args
    with pytest.raises(PayloadError, match="known: " + ", ".join(sorted(COMMANDS))):
        command_args("plate/explode", {}, LIMIT)


def test_topics_route_own_and_group_topics_only() -> None:
    topics = Topics.from_config(MqttConfig(device_id="kiosk1", group="lobby"))
    assert topics.route("edge-matte/kiosk1/config/set") == "config/set"
    assert topics.route("edge-matte/group/lobby/cmd/plate/capture") == "cmd/plate/capture"
    assert topics.route("edge-matte/group/hall/cmd/plate/capture") is None
    assert topics.route("edge-matte/kiosk10/config/set") is None
    assert "edge-matte/group/lobby/cmd/#" in topics.subscriptions()
    assert Topics.from_config(MqttConfig(device_id="kiosk1")).group_base is None


def test_discovery_documents_point_at_device_topics() -> None:
    mqtt = MqttConfig(device_id="kiosk1", homeassistant=True)
    topics = Topics.from_config(mqtt)
    messages = discovery.messages(mqtt, topics)
    documents = {topic: json.loads(payload) for topic, payload in messages if payload}
    select = documents["homeassistant/select/edge_matte_kiosk1/compose_mode/config"]
    assert select["command_topic"] == "edge-matte/kiosk1/config/set"
    assert json.loads(select["command_template"].replace("{{ value }}", "blur")) == {
        "compose": {"mode": "blur"}
    }
    assert select["options"] == ["replace", "blur", "passthrough"]
    unique_ids = {doc["unique_id"] for doc in documents.values()}
    assert len(unique_ids) == len(documents) == 16  # each its own id; no image: it is off
    availability = "edge-matte/kiosk1/availability"
    assert all(
        doc.get("availability_topic") == availability
        or {"topic": availability} in doc.get("availability", [])
        for doc in documents.values()
    )
    assert {topic.split("/")[1] for topic in documents} >= {"sensor", "select", "button", "switch"}


def test_discovery_disabled_gives_removals_for_the_same_topics() -> None:
    enabled = MqttConfig(device_id="kiosk1", homeassistant=True)
    disabled = MqttConfig(device_id="kiosk1")
    removals = discovery.messages(disabled, Topics.from_config(disabled))
    assert [topic for topic, _ in removals] == [
        topic for topic, _ in discovery.messages(enabled, Topics.from_config(enabled))
    ]
    assert all(payload == "" for _, payload in removals)
