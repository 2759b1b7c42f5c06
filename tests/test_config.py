"""Config validation: every bad key/value is named, nothing is applied, saves are atomic."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_matte.config import schema as config
from edge_matte.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-matte.yaml"
    path.write_text(text)
    return path


def test_defaults_give_a_working_daemon() -> None:
    cfg = config.Config()
    assert cfg.source.uri == "test://"
    assert cfg.matting.weights is None  # the weight-free engine
    assert cfg.stream.enabled and cfg.stream.port == 8554
    assert cfg.stream.outputs == ["composite"]


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "")) == config.Config()


def test_valid_file_loads(tmp_path: Path) -> None:
    cfg = config.load(
        write(tmp_path, "source:\n  uri: file:///x.mp4\n  width: 640\ncompose:\n  mode: blur\n")
    )
    assert (cfg.source.uri, cfg.source.width, cfg.compose.mode) == ("file:///x.mp4", 640, "blur")


BAD = [
    ("source:\n  widht: 640\n", "source.widht: unknown key"),
    ("source:\n  width: -3\n", "source.width"),
    ("source:\n  width: wide\n", "source.width"),
    ("source:\n  uri: ftp://x\n", "source.uri: Value error, unsupported scheme"),
    ("matting:\n  refine_mode: fast\n", "matting.refine_mode"),
    ("matting:\n  backbone_scale: 0.9\n", "matting.backbone_scale"),
    ("compose:\n  background: '#12345'\n", "#RRGGBB"),
    ("stream:\n  port: 70000\n", "stream.port"),
    ("stream:\n  outputs: []\n", "stream.outputs"),
    ("mqtt:\n  device_id: 'a/b'\n", "mqtt.device_id"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("source: [\n", "not valid YAML"),
    ("compose: {mode: blur}\ncompose: {mode: replace}\n", "duplicate key 'compose'"),
    ("mqtt:\n  host: ''\n", "mqtt.host"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml")


def test_merge_patch_follows_rfc7396() -> None:
    target = {"a": 1, "b": {"c": 2, "d": 3}}
    assert config.merge_patch(target, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1,
        "b": {"d": 3, "e": 4},
        "f": [1],
    }
    assert target == {"a": 1, "b": {"c": 2, "d": 3}}  # not mutated


def test_apply_patch_validates_and_leaves_original() -> None:
    cfg = config.Config()
    new = config.apply_patch(cfg, {"compose": {"mode": "blur"}})
    assert new.compose.mode == "blur" and cfg.compose.mode == "replace"
    with pytest.raises(ConfigError, match=r"compose.mood: unknown key"):
        config.apply_patch(cfg, {"compose": {"mood": "blur"}})
    with pytest.raises(ConfigError, match="must be a JSON object"):
        config.apply_patch(cfg, [1, 2])


def test_an_empty_patch_round_trips_secrets_and_only_set_keys() -> None:
    """A patch dumps the set keys (passwords in clear) and parses them again: nothing is lost."""
    cfg = config.parse(
        {"mqtt": {"enabled": True, "password": "s3cret"}, "compose": {"mode": "blur"}}
    )
    again = config.apply_patch(cfg, {})
    assert again == cfg and again.mqtt.resolved_password() == "s3cret"
    assert again.model_fields_set == {"mqtt", "compose"}


def test_secret_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("from-cred\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.MqttConfig().resolved_password() == "from-cred"
    assert config.MqttConfig(password="inline").resolved_password() == "inline"


def test_effective_json_masks_secrets() -> None:
    cfg = config.parse({"stream": {"username": "u", "password": "p"}})
    assert cfg.to_json()["stream"]["password"] == "**********"


def test_digest_changes_with_content() -> None:
    assert config.Config().digest() == config.Config().digest()
    assert config.Config().digest() != config.parse({"compose": {"mode": "blur"}}).digest()


def test_patch_keeps_inline_secrets() -> None:
    cfg = config.parse({"mqtt": {"password": "right-pw"}, "stream": {"password": "rtsp-pw"}})
    new = config.apply_patch(cfg, {"compose": {"mode": "blur"}})
    assert new.mqtt.resolved_password() == "right-pw"
    assert new.stream.resolved_password() == "rtsp-pw"
