"""Checkpoint loading: strict round trips, accepted wrappers, and every refusal with its reason."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from edge_matte.errors import CheckpointError
from edge_matte.model import MattingRefine, load_model, load_state_dict, weights_digest


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """A full state dict with every tensor random (BN statistics too, so a skipped key shows)."""
    gen = torch.Generator().manual_seed(0)
    result = {}
    for key, value in MattingRefine().state_dict().items():
        if value.is_floating_point():
            result[key] = torch.randn(value.shape, generator=gen)
        else:
            result[key] = torch.randint(0, 1000, value.shape, generator=gen)
    return result


def save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def assert_same(model: MattingRefine, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_round_trip_is_strict_and_exact(tmp_path, state):
    model = load_model(save(tmp_path / "w.pth", state))
    assert_same(model, state)
    assert not model.training
    again = load_model(save(tmp_path / "again.pth", model.state_dict()))
    assert_same(again, state)


@pytest.mark.parametrize(
    "wrap",
    [
        OrderedDict,
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    ],
    ids=["ordered-dict", "module-prefix", "state-dict-wrapper", "wrapper-and-prefix"],
)
def test_common_wrappings_load(tmp_path, state, wrap):
    path = save(tmp_path / "w.pth", wrap(state))
    assert list(load_state_dict(path)) == list(state)
    assert_same(load_model(path), state)


def test_refine_settings_are_applied(tmp_path, state):
    model = load_model(save(tmp_path / "w.pth", state), refine_mode="full", backbone_scale=0.125)
    assert model.refiner.mode == "full" and model.backbone_scale == 0.125


class _Thing:
    """An arbitrary class: unpickling it would import and construct code from this module."""


class _Payload:
    """Would leave a marker file behind if unpickling ever ran it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_files(tmp: Path, state: dict[str, torch.Tensor]) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected message fragment)."""
    good = save(tmp / "good.pth", state).read_bytes()
    (tmp / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp / "random.pth").write_bytes(
        torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes()
    )
    (tmp / "empty.pth").write_bytes(b"")
    (tmp / "text.pth").write_text("model weights go here\n")
    (tmp / "folder.pth").mkdir()
    save(tmp / "class.pth", {"backbone.features.0.0.weight": _Thing()})
    save(tmp / "code.pth", {"backbone.features.0.0.weight": _Payload(tmp / "executed")})
    (tmp / "raw-pickle.pth").write_bytes(pickle.dumps(_Payload(tmp / "executed"), protocol=2))
    save(tmp / "list.pth", [state["refiner.conv1.weight"]])
    save(tmp / "mixed.pth", {"refiner.conv1.weight": state["refiner.conv1.weight"], "epoch": 3})
    return {
        "missing": (tmp / "absent.pth", "no such file"),
        "folder": (tmp / "folder.pth", "not a regular file"),
        "empty": (tmp / "empty.pth", "empty file"),
        "truncated": (tmp / "truncated.pth", "truncated or corrupt"),
        "random bytes": (tmp / "random.pth", "not a PyTorch checkpoint or corrupt"),
        "text": (tmp / "text.pth", "not a PyTorch checkpoint or corrupt"),
        "arbitrary class": (
            tmp / "class.pth",
            "needs arbitrary code to load (test_checkpoint._Thing)",
        ),
        "code on load": (tmp / "code.pth", "needs arbitrary code to load (getattr)"),
        "raw pickle": (tmp / "raw-pickle.pth", "needs arbitrary code to load (getattr)"),
        "not a dict": (tmp / "list.pth", "holds a list, not a state dict"),
        "non-tensor entry": (tmp / "mixed.pth", "entry 'epoch' is a int, not a tensor"),
    }


def test_unreadable_files_are_refused_with_the_reason(tmp_path, state):
    for name, (path, message) in _bad_files(tmp_path, state).items():
        with pytest.raises(CheckpointError) as caught:
            load_model(path)
        assert message in str(caught.value), name
        assert str(path) in str(caught.value), name
    assert not (tmp_path / "executed").exists(), "a refused pickle ran code"


def _variants(state: dict[str, torch.Tensor]) -> dict[str, tuple[dict, list[str]]]:
    """name -> (state dict that does not fit, expected message fragments)."""
    resnet = {
        "backbone.conv1.weight": torch.zeros(64, 6, 7, 7),
        "backbone.bn1.weight": torch.zeros(64),
        "backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
        "aspp.convs.0.0.weight": torch.zeros(256, 2048, 1, 1),
    }
    missing = {k: v for k, v in state.items() if k != "refiner.conv4.bias"}
    extra = {**state, "refiner.conv5.weight": torch.zeros(4, 4, 3, 3)}
    shaped = {**state, "decoder.conv4.weight": torch.zeros(38, 54, 3, 3)}
    foreign = {"fc.weight": torch.zeros(10, 10)}
    integer = {**state, "aspp.convs.0.0.weight": state["aspp.convs.0.0.weight"].long()}
    nan = state["refiner.conv1.weight"].clone()
    nan[0, 0, 0, 0] = float("nan")
    inf = state["decoder.bn1.bias"].clone()
    inf[3] = float("-inf")
    broken = {**state, "refiner.conv1.weight": nan, "decoder.bn1.bias": inf}
    return {
        "resnet": (
            resnet,
            ["ResNet-backbone checkpoint (backbone.bn1.weight", "only the MobileNetV2"],
        ),
        "foreign": (foreign, ["no MobileNetV2 backbone keys"]),
        "missing key": (missing, ["1 missing keys: refiner.conv4.bias"]),
        "unexpected key": (extra, ["1 unexpected keys: refiner.conv5.weight"]),
        "wrong shape": (
            shaped,
            ["decoder.conv4.weight is (38, 54, 3, 3) in the file but (37, 54, 3, 3) in the model"],
        ),
        "integer weights": (
            integer,
            ["1 tensors of the wrong dtype: aspp.convs.0.0.weight is torch.int64"],
        ),
        "not finite": (
            broken,
            ["2 tensors with NaN or Inf values:", "decoder.bn1.bias", "refiner.conv1.weight"],
        ),
    }


def test_files_that_do_not_fit_the_architecture_are_refused(tmp_path, state):
    for name, (bad, messages) in _variants(state).items():
        path = save(tmp_path / f"{name}.pth", bad)
        with pytest.raises(CheckpointError) as caught:
            load_model(path)
        for message in messages:
            assert message in str(caught.value), name


def test_half_precision_weights_load_as_float32(tmp_path, state):
    half = {
        key: value.half() if value.is_floating_point() else value for key, value in state.items()
    }
    model = load_model(save(tmp_path / "half.pth", half))
    key = "decoder.conv4.weight"
    assert model.state_dict()[key].dtype == torch.float32
    assert torch.equal(model.state_dict()[key], half[key].float())


def test_many_missing_keys_are_listed_briefly(tmp_path, state):
    half = dict(list(state.items())[::2])
    with pytest.raises(CheckpointError, match=r"191 missing keys: .*\(186 more\)"):
        load_model(save(tmp_path / "half.pth", half))


def test_kernel_size_mismatch_names_the_setting(tmp_path, state):
    with pytest.raises(CheckpointError) as caught:
        load_model(save(tmp_path / "w.pth", state), refine_kernel_size=1)
    assert "refiner.conv1.weight is (24, 42, 3, 3) in the file but (24, 42, 1, 1)" in str(
        caught.value
    )
    assert "refine_kernel_size" in str(caught.value)


def test_weights_digest_identifies_the_content(tmp_path, state):
    first = save(tmp_path / "a.pth", state)
    copy = tmp_path / "b.pth"
    copy.write_bytes(first.read_bytes())
    digest = weights_digest(first)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert weights_digest(copy) == digest
    changed = {**state, "refiner.conv4.bias": state["refiner.conv4.bias"] + 1}
    assert weights_digest(save(tmp_path / "c.pth", changed)) != digest
    with pytest.raises(CheckpointError, match="cannot read"):
        weights_digest(tmp_path / "absent.pth")
