"""What a remote controller may change, validation that matches what runs, the overrides file,
secret masking and upload quotas: the pieces, each on real files (issue 17, issue 20 items 3, 5)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from edge_matte.config import profile as profile_mod
from edge_matte.config import redact
from edge_matte.config import schema as config_mod
from edge_matte.config.schema import Config
from edge_matte.control import overrides, remote
from edge_matte.errors import ConfigError, MediaError
from edge_matte.runtime import checks, uploads


def patched(config: Config, patch: dict[str, Any]) -> Config:
    return config_mod.apply_patch(config, patch)


def nested(key: str, value: Any) -> dict[str, Any]:
    *parents, leaf = key.split(".")
    patch: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        patch = {part: patch}
    return patch


# -- the line between remote and device-only keys ----------------------------------------------

# One changed value per device-only key (every leaf of the model not in remote.REMOTE_KEYS).
DEVICE_ONLY_CHANGES = {
    "state_dir": "/tmp/elsewhere",
    "calibration": "/tmp/profile.yaml",
    "log_level": "DEBUG",
    "source.timeout_s": 9.0,
    "matting.weights": "/tmp/w.pth",
    "matting.cache_dir": "/tmp/cache",
    "matting.threads": 3,
    "plate.path": "/tmp/plate.png",
    "compose.media_dir": "/tmp/media",
    "compose.upload_max_files": 999,
    "stream.bind": "127.0.0.1",
    "stream.port": 9554,
    "stream.username": "viewer",
    "stream.password": "pw",
    "stream.password_file": "/tmp/pw",
    "mqtt.enabled": True,
    "mqtt.host": "elsewhere.example",
    "mqtt.port": 18839,
    "mqtt.client_id": "x",
    "mqtt.topic_prefix": "other",
    "mqtt.discovery_prefix": "ha",
    "mqtt.tls": {"ca_file": "/etc/shadow"},
    "mqtt.username": "u",
    "mqtt.password_file": "/tmp/pw",
}


@pytest.mark.parametrize("key", sorted(DEVICE_ONLY_CHANGES))
def test_a_patch_touching_a_device_only_key_is_refused_naming_it(key: str) -> None:
    old = Config()
    new = patched(old, {"compose": {"mode": "blur"}, **nested(key, DEVICE_ONLY_CHANGES[key])})
    with pytest.raises(ConfigError) as caught:
        remote.refuse(old, new)
    assert any(
        line.startswith(key) and "config file on the device" in line
        for line in caught.value.problems
    )
    assert not remote.is_remote(key)


def test_stream_auth_cannot_be_removed_remotely() -> None:
    old = config_mod.parse({"stream": {"username": "viewer", "password": "secret-pw"}})
    for patch in ({"stream": {"username": None}}, {"stream": {"password": None}}):
        with pytest.raises(ConfigError, match="stream"):
            remote.refuse(old, patched(old, patch))


def test_every_model_key_is_classified_and_the_readme_table_lists_the_remote_ones() -> None:
    keys = remote.flatten(Config().model_dump())
    remote_keys = [key for key in keys if remote.is_remote(key)]
    assert "compose.mode" in remote_keys and "mqtt.host" not in remote_keys
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("<!-- remote-keys:start -->")[1].split("<!-- remote-keys:end -->")[0]
    for key in remote.REMOTE_KEYS:
        assert f"`{key}`" in table, key


@pytest.mark.parametrize(
    "uri", ["csi://0", "v4l2:///dev/video7", "rtsp://cam.local:554/live", "test://?seed=2"]
)
def test_cameras_may_be_chosen_remotely(uri: str) -> None:
    old = Config()
    remote.refuse(old, patched(old, {"source": {"uri": uri}}))


def test_file_sources_only_inside_the_media_directory(tmp_path: Path) -> None:
    media = tmp_path / "state" / "media"
    media.mkdir(parents=True)
    (media / "clip.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (media / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    old = config_mod.parse({"state_dir": str(tmp_path / "state")})
    remote.refuse(old, patched(old, {"source": {"uri": f"file://{media}/clip.mp4"}}))
    for uri in (
        "file:///etc/passwd",
        f"file://{tmp_path}/secret.mp4",
        f"file://{media}/link.mp4",  # a symlink out of the media directory
        f"file://{media}/../secret.mp4",
        f"file://{media}/" + "a" * 5000,
        "v4l2:///etc/passwd",
        # A host part is where the opener's path begins: these name <cwd>/x/<media>/clip.mp4
        # and /etc/<media>/clip.mp4, not the clip in the media directory.
        f"file://x{media}/clip.mp4",
        f"file://%2Fetc{media}/clip.mp4",
        f"file://..{media}/clip.mp4",
    ):
        with pytest.raises(ConfigError, match=r"source.uri"):
            remote.refuse(old, patched(old, {"source": {"uri": uri}}))


# -- validation that matches what runs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"mqtt": {"host": ""}}, "mqtt.host"),
        ({"mqtt": {"host": "a b"}}, "mqtt.host"),
        ({"stream": {"bind": ""}}, "stream.bind"),
        ({"mqtt": {"discovery_prefix": "#"}}, "mqtt.discovery_prefix"),
        ({"mqtt": {"discovery_prefix": "home/+/x"}}, "mqtt.discovery_prefix"),
        ({"mqtt": {"topic_prefix": "a/#"}}, "mqtt.topic_prefix"),
        ({"mqtt": {"client_id": "c" * 70_000}}, "mqtt.client_id"),
        ({"mqtt": {"client_id": ""}}, "mqtt.client_id"),
        ({"compose": {"background": "b" * 4100}}, "compose.background"),
        ({"compose": {"background": "x\nsecond line"}}, "compose.background"),
        ({"compose": {"background": "c" * 300 + ".png"}}, "compose.background"),
        ({"stream": {"outputs": ["composite", "alpha", "composite"]}}, "stream.outputs"),
        # Published retained to every subscriber of the broker.
        ({"mqtt": {"configuration_url": "http://kiosk:pw@dev:8080/"}}, "mqtt.configuration_url"),
        ({"http": {"bind": "not a host"}}, "http.bind"),
        ({"http": {"bind": ""}}, "http.bind"),
        # The opener's urlsplit fails on these on every retry, each with a traceback.
        ({"source": {"uri": "rtsp://cam[1/live"}}, "source.uri"),
        ({"source": {"uri": "rtsp://cam:99999/live"}}, "source.uri"),
        # Terminal escapes and line breaks would reach every log line and message naming it.
        ({"source": {"uri": "rtsp://cam\x1b[2J\x07/live"}}, "source.uri"),
        ({"source": {"uri": "csi://0\n"}}, "source.uri"),
    ],
)
def test_values_run_would_refuse_are_schema_errors_naming_the_key(patch: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.parse(patch)
    assert any(key in line for line in caught.value.problems), caught.value.problems
    assert all(len(line) < 600 for line in caught.value.problems)


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("compose:\n  mode: blur\n  mode: replace\n")
    with pytest.raises(ConfigError, match="duplicate key 'mode'"):
        config_mod.load(path)


def test_a_profile_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        profile_mod.load(path)


def test_start_checks_list_every_problem_one_per_line(tmp_path: Path) -> None:
    config = config_mod.parse(
        {
            "state_dir": str(tmp_path),
            "matting": {"weights": str(tmp_path / "missing.pth")},
            "stream": {"username": "viewer", "port": 18554},
            "mqtt": {
                "enabled": True,
                "password_file": str(tmp_path / "no-such-file"),
                "tls": {"ca_file": str(tmp_path / "no-such-ca.pem")},
            },
            "compose": {"background": "gone.png"},
        }
    )
    found = checks.problems(config)
    keys = ("matting.weights", "stream.username", "mqtt.password_file", "mqtt.tls.ca_file")
    for key in (*keys, "compose.background"):
        assert sum(line.startswith(key) for line in found) == 1, (key, found)
    with pytest.raises(ConfigError) as caught:
        checks.preflight(config)
    assert caught.value.problems == found


@pytest.mark.parametrize(
    ("stream_bind", "http_bind", "clash"),
    [
        ("0.0.0.0", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "::", True),
        ("127.0.0.1", "127.0.0.2", False),
    ],
)
def test_the_browser_view_on_the_rtsp_port_is_a_start_problem(
    tmp_path: Path, stream_bind: str, http_bind: str, clash: bool
) -> None:
    """`run` would fail to listen (exit 1, restarted for ever) where check-config said ok."""
    password = tmp_path / "http-password"
    password.write_text("pw\n")
    http = {"enabled": True, "bind": http_bind, "port": 18554, "password_file": str(password)}
    config = config_mod.parse(
        {"state_dir": str(tmp_path), "stream": {"bind": stream_bind, "port": 18554}, "http": http}
    )
    found = [line for line in checks.problems(config) if line.startswith("http.port")]
    assert len(found) == clash, checks.problems(config)


def test_check_config_and_run_exit_2_listing_all_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    profile = tmp_path / "profile.yaml"
    profile.write_bytes(b"\xff\xfe not utf-8")
    path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "calibration": str(profile),
                "stream": {"port": 18554, "password_file": str(tmp_path / "missing")},
                "mqtt": {"enabled": True, "password_file": str(tmp_path / "missing")},
            }
        )
    )
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        done = subprocess.run(
            [sys.executable, "-m", "edge_matte.cli", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "rtsp://" not in done.stdout
        assert [
            any(key in line for line in lines)
            for key in ("calibration", "stream.password_file", "mqtt.password_file")
        ] == [True] * 3, lines
        assert len(lines) == 3, lines
    assert not (tmp_path / "state").exists()


# -- one masking function ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "rtsp://admin:p@ssw0rd@cam.local:554/live",
        "rtsp://user:secret@host/stream",
        "rtsps://a:b:c@host",
        "rtsp://user:p@ss:w/rd@cam.local:554/live",  # an unescaped "/" in the password
    ],
)
def test_masking_keeps_no_piece_of_the_password(uri: str) -> None:
    password = uri.split("://")[1].rsplit("@", 1)[0].split(":", 1)[1]
    assert password not in redact.mask_uri(uri)
    assert password not in redact.mask(f"opening {uri} failed")
    assert redact.mask_uri(uri).endswith(uri.rsplit("@", 1)[1])
    pieces = [piece for piece in password.split("@") if len(piece) > 2]  # "p" is in "rtsp"
    assert all(piece not in redact.mask(f"{uri} failed") for piece in pieces)


@pytest.mark.parametrize(
    "text",
    ["file:///media/me@home.mp4", "rtsp://cam/live@2?user=a@b", "test://?seed=2", "no uri@all"],
)
def test_masking_leaves_an_at_sign_outside_the_authority(text: str) -> None:
    assert redact.mask_uri(text) == text and redact.mask(text) == text


def test_config_json_masks_camera_credentials() -> None:
    config = config_mod.parse({"source": {"uri": "rtsp://admin:p@ssw0rd@cam/live"}})
    assert "ssw0rd" not in str(config.to_json())


# -- the overrides file ------------------------------------------------------------------------


def operator_file(tmp_path: Path, **sections: Any) -> Path:
    data = {"state_dir": str(tmp_path / "state"), **sections}
    path = tmp_path / "edge-matte.yaml"
    path.write_text("# the operator's comment\n" + yaml.safe_dump(data))
    return path


def test_overrides_merge_over_the_file_and_the_file_wins_for_keys_it_changes(
    tmp_path: Path,
) -> None:
    path = operator_file(tmp_path, compose={"mode": "replace", "blur_sigma": 5.0})
    before = overrides.load(path)
    changed = patched(before.effective, {"compose": {"mode": "blur", "blur_sigma": 9.0}})
    overrides.save(before.operator, changed, overrides.path_for(before.operator))
    loaded = overrides.load(path)
    assert loaded.effective.compose.mode == "blur" and loaded.effective.compose.blur_sigma == 9.0
    assert not loaded.dropped
    origins = {key: origin for key, _, origin in overrides.origins(loaded, path)}
    assert origins["compose.mode"].startswith("override")
    assert origins["state_dir"].startswith("file") and origins["stream.port"] == "default"

    # The operator sets compose.mode anew: the file wins for it, the other override stays.
    path.write_text(path.read_text().replace("mode: replace", "mode: passthrough"))
    edited = overrides.load(path)
    assert edited.effective.compose.mode == "passthrough"
    assert edited.effective.compose.blur_sigma == 9.0
    assert [line.split(":")[0] for line in edited.dropped] == ["compose.mode"]

    assert overrides.reset(overrides.path_for(edited.operator)) == 2
    assert overrides.load(path).effective.compose.blur_sigma == 5.0


def test_overrides_of_device_only_keys_are_ignored(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    saved = overrides.path_for(config_mod.load(path))
    saved.parent.mkdir(parents=True)
    saved.write_text(
        yaml.safe_dump({"overrides": {"mqtt.host": {"value": "evil", "file_value": "localhost"}}})
    )
    loaded = overrides.load(path)
    assert loaded.effective.mqtt.host == "localhost" and loaded.dropped


@pytest.mark.parametrize("key", ["source.uri", "compose.background"])
def test_overrides_holding_what_no_remote_patch_could_set_are_dropped(
    tmp_path: Path, key: str
) -> None:
    """Someone who can write the state directory cannot reach files outside the media
    directory through the overrides file either: its values pass the remote checks."""
    path = operator_file(tmp_path)
    operator = config_mod.load(path)
    outside = tmp_path / "outside.png"  # a real image and a file that exist, not in media
    cv2.imwrite(str(outside), np.zeros((8, 8, 3), np.uint8))
    value = {"source.uri": f"file://{outside}", "compose.background": str(outside)}[key]
    saved = overrides.path_for(operator)
    saved.parent.mkdir(parents=True)
    entry = {"value": value, "file_value": remote.flatten(operator.model_dump(mode="json"))[key]}
    saved.write_text(yaml.safe_dump({"version": 1, "overrides": {key: entry}}))
    loaded = overrides.load(path, checks.problems)
    assert loaded.effective == operator, loaded.effective
    assert "outside the media directory" in loaded.dropped[0], loaded.dropped
    assert checks.check_file(path) == []  # check-config agrees: the file alone runs...
    done = subprocess.run(
        [sys.executable, "-m", "edge_matte.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.endswith(f"{path}: ok\n"), done
    assert f"override not applied: {key}" in done.stdout, done.stdout  # ...and says what it drops


def test_overrides_that_no_longer_validate_give_way_to_the_file(tmp_path: Path) -> None:
    path = operator_file(tmp_path)
    operator = config_mod.load(path)
    media = operator.resolved_media_dir()
    media.mkdir(parents=True)
    cv2.imwrite(str(media / "beach.png"), np.zeros((8, 8, 3), np.uint8))
    overrides.save(
        operator,
        patched(operator, {"compose": {"background": "beach.png"}}),
        overrides.path_for(operator),
    )
    (media / "beach.png").unlink()
    loaded = overrides.load(path, checks.problems)
    assert loaded.effective == operator and "compose.background" in loaded.dropped[0]


# -- upload quotas -----------------------------------------------------------------------------


def encoded_image(seed: int, size: int = 64) -> str:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    return base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode()


def test_uploads_keep_within_count_and_bytes_removing_the_oldest_unused(tmp_path: Path) -> None:
    compose = config_mod.ComposeConfig(upload_max_files=3, upload_max_total_bytes=60_000)
    names = []
    for seed in range(8):
        names.append(uploads.store(encoded_image(seed), tmp_path, compose))
        os.utime(tmp_path / names[-1], (seed, seed))  # distinct ages, whatever the clock's grain
    kept = [path.name for path in uploads.kept(tmp_path)]
    assert kept == names[-3:]
    in_use = config_mod.ComposeConfig(
        upload_max_files=3, upload_max_total_bytes=60_000, background=names[-3]
    )
    names.append(uploads.store(encoded_image(99), tmp_path, in_use))
    assert names[-4] in [path.name for path in uploads.kept(tmp_path)]  # in use: kept
    assert len(uploads.kept(tmp_path)) == 3
    total = sum(path.stat().st_size for path in uploads.kept(tmp_path))
    assert total <= 60_000


def test_an_upload_over_the_size_quota_is_refused_and_nothing_written(tmp_path: Path) -> None:
    compose = config_mod.ComposeConfig(upload_max_bytes=2000)
    with pytest.raises(MediaError, match="upload_max_bytes"):
        uploads.store(encoded_image(1, 128), tmp_path, compose)
    assert not list(tmp_path.iterdir())


def test_masking_published_data_keeps_it_valid_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "_secrets", set())  # this process's secrets: this test's only
    redact.remember_secret("123")
    data = {"fps": 1234.5, "note": 'said "123" twice: 123', "123": [1230, "x123"]}
    masked = redact.mask_data(data)
    assert masked == {"fps": 1234.5, "note": 'said "***" twice: ***', "***": [1230, "x***"]}
