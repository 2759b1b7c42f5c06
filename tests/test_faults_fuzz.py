"""Bad input everywhere the appliance reads a file: config files, saved plates, checkpoints and
replacement images, generated (hypothesis) from nothing and by mutating real files.

Each reader either returns a valid result or raises its documented error (ConfigError,
MediaError, CheckpointError); nothing else escapes, nothing hangs (a deadline per input), and
nothing on disk is changed by reading it. MQTT payloads are fuzzed at a live control in
test_control_fuzz.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_builders import random_model

from edge_matte.config import schema as config_mod
from edge_matte.config.schema import Config, PlateConfig
from edge_matte.errors import CheckpointError, ConfigError, MediaError
from edge_matte.model.checkpoint import check_fit, load_model, load_state_dict
from edge_matte.output.media import decode_image
from edge_matte.plate import PlateKeeper, store

pytestmark = pytest.mark.timeout(180)

FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms per input: a reader that takes longer is as bad as one that hangs
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def mutations(draw: st.DrawFn, data: bytes, regions: list[tuple[int, int]] | None = None) -> bytes:
    """`data` with a few byte flips, overwrites, insertions, deletions or a truncation, aimed
    at `regions` (start, end) when given (the structure of a file rather than its payload)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(regions)) if regions else (0, len(out))
        end = min(end, len(out))
        position = draw(st.integers(start, max(start, end - 1)))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "truncate":
            del out[position:]
        elif action == "insert":
            out[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del out[position : position + draw(st.integers(1, 64))]
        elif position < len(out):
            value = draw(st.integers(0, 255))
            out[position] = out[position] ^ (1 << value % 8) if action == "flip" else value
    return bytes(out)


def unchanged(path: Path, read: Callable[[Path], object], errors: type[Exception]) -> object:
    """`read(path)`, or None if it raised `errors`; AssertionError if it touched the file."""
    before = path.read_bytes()
    try:
        result = read(path)
    except errors:
        result = None
    assert path.read_bytes() == before, "reading changed the file"
    return result


# -- config files ----------------------------------------------------------------------------------

SECTIONS = sorted(Config.model_fields)
FIELDS = sorted(
    {
        field
        for name in SECTIONS
        for field in getattr(Config.model_fields[name].annotation, "model_fields", {})
    }
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_subnormal=False)
    | st.text(max_size=20)
    | st.sampled_from(["test://", "rtsp://x", "#00ff00", "auto", "classic", "/dev/null", "~"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(SECTIONS + FIELDS) | st.text(max_size=10)
config_data = st.dictionaries(keys, st.dictionaries(keys, values, max_size=4) | values, max_size=5)
VALID_CONFIG = yaml.safe_dump(
    Config(source={"uri": "rtsp://user:pw@cam/live"}, mqtt={"device_id": "kiosk"}).model_dump(
        mode="json"
    )
).encode()


def _alias_bomb(levels: int, under: str) -> bytes:
    """A YAML 'billion laughs': 9**levels references to one string, hung under `under`."""
    lines = [b"l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{refs}]".encode())
    return b"\n".join([*lines, f"{under}: *l{levels - 1}".encode()]) + b"\n"


# Inputs that have hurt YAML loaders: alias bombs, self-reference, tags that would construct
# objects, NUL bytes, documents of the wrong shape, numbers out of range.
NASTY_CONFIGS = [
    _alias_bomb(9, "unknown"),  # 9**9 references under a key that is refused by name
    b"source: &s {uri: test://, width: *s}\n",
    b"x: &x [*x]\n",
    b"source: !!python/object/apply:os.system [echo pwned]\n",
    b"!!python/object:edge_matte.config.schema.Config {}\n",
    b"source:\n  uri: test://\x00\n",
    b"- 1\n- 2\n",
    b"--- 1\n--- 2\n",
    b"source: {width: 1e400}\n",
    b"source: {width: 99999999999999999999999999999999999999}\n",
    b"stream:\n\tport: 1\n",
]
# Once found by this suite escaping as other exceptions (PyYAML's recursive parser raised
# RecursionError, read_text UnicodeDecodeError); now ConfigErrors that say why.
DEEP_OR_NOT_UTF8_CONFIGS = {
    "deep-lists": (b"[" * 5000 + b"]" * 5000, "config is nested too deeply"),
    "deep-maps": (b"{a: " * 3000 + b"1" + b"}" * 3000, "config is nested too deeply"),
    "utf-16": (
        b"\xff\xfes\x00o\x00u\x00r\x00c\x00e\x00",
        "config is not UTF-8 text (invalid start byte at byte 0)",
    ),
    "latin-1": (
        b"source: {uri: 'test://caf\xe9'}\n",
        "config is not UTF-8 text (invalid continuation byte at byte 25)",
    ),
}


def load_config(path: Path) -> Config | None:
    return unchanged(path, config_mod.load, ConfigError)


@pytest.mark.parametrize("data", NASTY_CONFIGS, ids=range(len(NASTY_CONFIGS)))
def test_nasty_config_files_are_config_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "edge-matte.yaml"
    path.write_bytes(data)
    assert load_config(path) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(data, reason, id=name)
        for name, (data, reason) in DEEP_OR_NOT_UTF8_CONFIGS.items()
    ],
)
def test_deep_or_non_utf8_config_files_are_config_errors_saying_why(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    path = tmp_path / "edge-matte.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert str(caught.value) == f"{path}: {reason}"
    assert path.read_bytes() == data


def test_an_alias_bomb_under_a_known_key_gives_a_short_error(tmp_path: Path) -> None:
    path = tmp_path / "edge-matte.yaml"
    path.write_bytes(_alias_bomb(7, "source:\n  uri"))
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert len(str(caught.value)) < 10_000


@FUZZ
@given(data=config_data)
def test_generated_config_files(tmp_path: Path, data: dict) -> None:
    path = tmp_path / "edge-matte.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = load_config(path)
    assert result is None or isinstance(result, Config)


@FUZZ
@given(data=mutations(VALID_CONFIG) | st.binary(max_size=300))  # raw bytes: any encoding
def test_mutated_config_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "edge-matte.yaml"
    path.write_bytes(data)
    result = load_config(path)
    if result is not None:  # whatever loads survives the dump/parse round trip patches make
        assert config_mod.apply_patch(result, {}) == result


# -- saved plates ------------------------------------------------------------------------------------

PLATE_SIZE = (64, 48)
PLATE_URI = "test://"


@pytest.fixture(scope="module")
def plate_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """The PNG and JSON of a plate saved the way the keeper saves one."""
    path = tmp_path_factory.mktemp("plate") / "plate.png"
    image = np.random.default_rng(1).integers(0, 256, (*PLATE_SIZE[::-1], 3), np.uint8)
    store.save(path, image, store.PlateMeta(1.0, PLATE_URI, *PLATE_SIZE, None, "median", 1.0))
    return path.read_bytes(), store.sidecar(path).read_bytes()


def signed(png: bytes, record: bytes) -> bytes:
    """The JSON record re-signed for `png`, so the mutated PNG reaches the decoder."""
    try:
        data = json.loads(record)
    except ValueError:
        return record
    if isinstance(data, dict):
        data["sha256"] = hashlib.sha256(png).hexdigest()
    return json.dumps(data).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_subnormal=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def damaged_plates(draw: st.DrawFn, files: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    png, record = files
    how = draw(st.sampled_from(["png", "png-resigned", "json-bytes", "json-fields"]))
    if how.startswith("png"):
        png = draw(mutations(png))
        return png, signed(png, record) if how == "png-resigned" else record
    if how == "json-bytes":
        return png, draw(mutations(record))
    fields = json.loads(record)
    for key in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3)):
        fields[key] = draw(json_values)
    return png, json.dumps(fields).encode()


def test_damaged_plates_are_media_errors_and_never_rewritten(
    tmp_path: Path, plate_files: tuple[bytes, bytes]
) -> None:
    @FUZZ
    @given(files=damaged_plates(plate_files))
    def check(files: tuple[bytes, bytes]) -> None:
        path = tmp_path / "plate.png"
        path.write_bytes(files[0])
        store.sidecar(path).write_bytes(files[1])
        loaded = unchanged(path, store.load, MediaError)
        if loaded is not None:
            image, meta = loaded
            assert image.dtype == np.uint8 and image.shape == (meta.height, meta.width, 3)
        keeper = PlateKeeper(PlateConfig(), path, PLATE_URI, lambda _event: None)
        restored = unchanged(path, lambda _: keeper.restore(*PLATE_SIZE), MediaError)
        assert restored in (True, False)
        assert store.sidecar(path).read_bytes() == files[1]
        assert (keeper.plate is not None) == restored

    check()


# -- checkpoints -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[tuple[int, int]]]:
    """A real (random-weight) MattingRefine checkpoint and its structural byte ranges: the zip
    headers, the pickle that describes the tensors, and the central directory at the end."""
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save(random_model().state_dict(), path)
    data = path.read_bytes()
    regions = [(0, 512), (len(data) - 4096, len(data))]
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            start = info.header_offset
            if info.filename.endswith("data.pkl"):
                regions.append((start, start + 64 + info.compress_size))
            else:
                regions.append((start, start + 96))
    return data, regions


EXPECTED = random_model().state_dict()


def read_checkpoint(path: Path) -> object:
    """What `load_model` does before building the model: load the tensors, check the fit."""
    state = load_state_dict(path)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    check_fit(EXPECTED, state, str(path))
    return state


def test_mutated_checkpoints_are_checkpoint_errors(
    tmp_path: Path, checkpoint: tuple[bytes, list[tuple[int, int]]]
) -> None:
    data, regions = checkpoint
    path = tmp_path / "weights.pth"
    loaded = []

    @settings(FUZZ, max_examples=60)
    @given(damaged=mutations(data, regions))
    def check(damaged: bytes) -> None:
        path.write_bytes(damaged)
        loaded.append(unchanged(path, read_checkpoint, CheckpointError) is not None)

    check()
    path.write_bytes(data[: len(data) // 3])
    assert unchanged(path, read_checkpoint, CheckpointError) is None
    assert not all(loaded)  # the mutations did reach the structure


def test_a_checkpoint_that_loads_but_does_not_fit_is_refused_by_the_model(
    tmp_path: Path, checkpoint: tuple[bytes, list[tuple[int, int]]]
) -> None:
    state = torch.load(_write(tmp_path / "good.pth", checkpoint[0]), weights_only=True)
    name = next(key for key in state if key.startswith("refiner."))
    for broken in (
        {key: value for key, value in state.items() if key != name},
        {**state, name: state[name][..., :1]},
        {**state, "extra.weight": torch.zeros(1)},
    ):
        torch.save(broken, tmp_path / "broken.pth")
        with pytest.raises(CheckpointError, match="does not fit"):
            load_model(tmp_path / "broken.pth")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- replacement images ------------------------------------------------------------------------------


def _encoded(extension: str, *flags: int) -> bytes:
    image = np.random.default_rng(2).integers(0, 256, (40, 60, 3), np.uint8)
    ok, data = cv2.imencode(extension, image, list(flags))
    assert ok
    return data.tobytes()


IMAGES = {
    "png": _encoded(".png"),
    "jpeg": _encoded(".jpg", cv2.IMWRITE_JPEG_QUALITY, 90),
    "progressive": _encoded(".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "webp": _encoded(".webp"),
}


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def decode(data: bytes) -> np.ndarray | None:
    try:
        image = decode_image(data)
    except MediaError:
        return None
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image


@pytest.mark.parametrize(
    "data",
    [_png_claiming(100_000, 100_000), _png_claiming(2**31 - 1, 1), _png_claiming(0, 10), b""],
    ids=["bomb", "wide", "empty-size", "nothing"],
)
def test_image_bombs_and_empty_images_are_refused_before_decoding(data: bytes) -> None:
    assert decode(data) is None


@FUZZ
@given(
    data=st.sampled_from(sorted(IMAGES)).flatmap(lambda kind: mutations(IMAGES[kind]))
    | st.binary(max_size=200)
)
def test_mutated_images_decode_or_are_media_errors(data: bytes) -> None:
    decode(data)
