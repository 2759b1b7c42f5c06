"""Load BackgroundMattingV2 weights safely (`weights_only`) and strictly, or say exactly why not.

The official scripts load with `strict=False`, so a wrong or damaged file silently leaves layers
at random values. Here a file either fits `MattingRefine` key for key and shape for shape, or
`CheckpointError` names the problem: missing, corrupt, unsafe, the wrong backbone, missing or
unexpected keys, or mismatched shapes.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edge_matte.errors import CheckpointError
from edge_matte.model.model import MattingRefine

_LOG = logging.getLogger(__name__)

_SHOWN = 5  # keys listed per problem; the rest are counted
_GLOBAL = re.compile(r"GLOBAL (\S+)")
_RESNET_PREFIXES = ("backbone.conv1.", "backbone.bn1.", "backbone.layer")


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors in a checkpoint file, unwrapped from `{"state_dict": ...}` and `module.` prefixes.

    Loads with `weights_only=True` onto the CPU: a pickle that would run code is refused.
    """
    path = Path(path)
    data = _torch_load(path)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict of tensors")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; not a state dict"
            )
    if data and all(key.startswith("module.") for key in data):
        data = {key[len("module.") :]: value for key, value in data.items()}
    return dict(data)


def load_model(path: str | Path, **refine_kwargs: Any) -> MattingRefine:
    """`MattingRefine(**refine_kwargs)` with the file's weights loaded strictly, in eval mode.

    `refine_kwargs` are MattingRefine's arguments (backbone_scale, refine_mode, ...); a bad one
    raises ValueError. A file that does not fit raises CheckpointError.
    """
    state = load_state_dict(path)
    model = MattingRefine(**refine_kwargs)
    check_fit(model.state_dict(), state, str(path))
    model.load_state_dict(state, strict=True)
    _LOG.info("loaded %d tensors from %s", len(state), path)
    return model.eval()


def check_fit(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], origin: str) -> None:
    """Raise CheckpointError unless `state` has exactly `expected`'s keys and shapes, with finite
    floating-point weights where the model has them."""
    resnet = sorted(key for key in state if key.startswith(_RESNET_PREFIXES))
    if resnet:
        raise CheckpointError(
            f"{origin}: a ResNet-backbone checkpoint ({resnet[0]}, ...); "
            "only the MobileNetV2 variant (pytorch_mobilenetv2.pth) is supported"
        )
    if not any(key.startswith("backbone.features.") for key in state):
        raise CheckpointError(
            f"{origin}: no MobileNetV2 backbone keys (backbone.features.*); "
            "not a BackgroundMattingV2 MobileNetV2 checkpoint"
        )
    problems = _key_problems(expected, state) + _value_problems(expected, state)
    if problems:
        raise CheckpointError(
            f"{origin}: does not fit MattingRefine(mobilenetv2): " + "; ".join(problems)
        )


def _key_problems(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> list[str]:
    """Missing and unexpected keys, and shape mismatches (the refiner's kernel size is a common one)."""
    problems = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing:
        problems.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    mismatched = [
        key for key in expected if key in state and state[key].shape != expected[key].shape
    ]
    if mismatched:
        details = [
            f"{key} is {_shape(state[key])} in the file but {_shape(expected[key])} in the model"
            for key in mismatched
        ]
        problems.append(f"{len(mismatched)} shape mismatches: {_first(details)}")
        if any(key.startswith("refiner.conv") for key in mismatched):
            problems.append("check refine_kernel_size (the released weights use 3)")
    return problems


def _value_problems(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> list[str]:
    """Weights of the wrong kind (integers, complex) or not finite (NaN/Inf from a bad training
    run or a damaged file): `load_state_dict` would cast or copy them silently into garbage alpha.
    Half and bfloat16 weights are fine; they are cast to the model's float32."""
    problems = []
    wrong_kind = [
        f"{key} is {state[key].dtype}"
        for key, want in expected.items()
        if key in state and _kind(state[key]) != _kind(want)
    ]
    if wrong_kind:
        problems.append(f"{len(wrong_kind)} tensors of the wrong dtype: {_first(wrong_kind)}")
    not_finite = [
        key
        for key, value in state.items()
        if key in expected and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if not_finite:
        problems.append(f"{len(not_finite)} tensors with NaN or Inf values: {_first(not_finite)}")
    return problems


def _kind(tensor: Tensor) -> str:
    if tensor.is_complex():
        return "complex"
    return "float" if tensor.is_floating_point() else "integer"


def weights_digest(path: str | Path) -> str:
    """First 16 hex digits of the file's SHA-256: identifies the weights in cache keys."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}") from err
    return digest.hexdigest()[:16]


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), with every failure turned into a CheckpointError that says which."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from err
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_problem(path, str(err))) from err
    except (EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (ends early)") from err
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "zip archive" in first_line or "central directory" in first_line:
            raise CheckpointError(
                f"{path}: truncated or corrupt checkpoint ({first_line[:120]})"
            ) from err
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint or corrupt ({first_line[:120]})"
        ) from err


def _unpickling_problem(path: Path, message: str) -> str:
    """Tell a pickle that needs arbitrary code (unsafe) from one that is simply damaged."""
    found = _GLOBAL.search(message)
    if found:
        return (
            f"{path}: refused: the pickle needs arbitrary code to load ({found.group(1)}); "
            "only plain state dicts of tensors are accepted (weights_only)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    reason = detail.group(1).strip() if detail else message.strip().splitlines()[0]
    return f"{path}: not a PyTorch checkpoint or corrupt (weights-only unpickler: {reason[:120]})"


def _first(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _shape(tensor: Tensor) -> str:
    return "(" + ", ".join(str(size) for size in tensor.shape) + ")"
