"""Validation of control message payloads, before anything reaches the daemon.

A payload from the network is untrusted: it may be huge, not UTF-8, not JSON, nested without
bound, carry NUL bytes or lone surrogates that break files later, or name unknown arguments.
Everything here either returns a clean Python object or raises PayloadError listing each
problem with the key it concerns, so a bad message is answered and never half-applied.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from edge_matte.control.topics import BACKGROUND_SET, COMMANDS
from edge_matte.errors import EdgeMatteError

MAX_DEPTH = 32
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 255

RequestId = str | int | None


class PayloadError(EdgeMatteError):
    """A control message is malformed; `errors` has one line per problem, naming its key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def decode_object(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse a JSON object payload within `max_bytes` (arguments-free commands send `{}`)."""
    if len(payload) > max_bytes:
        raise PayloadError([f"<payload>: larger than mqtt.max_payload_bytes ({max_bytes} bytes)"])
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise PayloadError([f"<payload>: not UTF-8 ({err.reason} at byte {err.start})"]) from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise PayloadError([f"<payload>: malformed JSON: {err}"]) from err
    if not isinstance(data, dict):
        raise PayloadError([f"<payload>: must be a JSON object, got {_json_type(data)}"])
    _check_strings(data)
    return data


def split_id(request: dict[str, Any]) -> tuple[RequestId, dict[str, Any]]:
    """Take the optional request `id` (echoed in the answer) out of a decoded request."""
    body = dict(request)
    request_id = body.pop("id", None)
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int, type(None))):
        raise PayloadError([f"id: must be a string or an integer, got {_json_type(request_id)}"])
    if isinstance(request_id, str) and len(request_id) > MAX_ID_CHARS:
        raise PayloadError([f"id: longer than {MAX_ID_CHARS} characters"])
    return request_id, body


def peek_id(payload: bytes, max_bytes: int) -> RequestId:
    """The request id of a payload if one can be read, else None (for answering errors).

    Read past problems elsewhere in the request (a NUL in a value), so their refusal still
    carries the id the controller matches answers by; only a clean id is echoed."""
    if len(payload) > max_bytes:
        return None
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
        request_id = split_id(data)[0] if isinstance(data, dict) else None
        if isinstance(request_id, str):
            _check_text("id", request_id)
        return request_id
    except (ValueError, RecursionError, PayloadError):  # UnicodeDecodeError is a ValueError
        return None


def command_args(name: str, args: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Check the arguments of command `name`; raise PayloadError for unknown names or keys."""
    validator = _COMMANDS.get(name)
    if validator is None:
        known = ", ".join(sorted(_COMMANDS))
        raise PayloadError([f"command: unknown command {name!r} (known: {known})"])
    return validator(name, args, max_bytes)


def _no_args(name: str, args: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    if args:
        raise PayloadError([f"{key}: unknown argument for {name}" for key in sorted(args)])
    return {}


def _background_args(name: str, args: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    errors = [f"{key}: unknown argument for {name}" for key in sorted(args) if key not in _BG_KEYS]
    given = [key for key in _BG_KEYS if key in args]
    if len(given) != 1:
        errors.append("name/image_base64: give exactly one of them")
    errors += [problem for key in given for problem in _BG_CHECKS[key](args[key], max_bytes)]
    if errors:
        raise PayloadError(errors)
    return {given[0]: args[given[0]]}


def _check_name(value: Any, max_bytes: int) -> list[str]:
    if not isinstance(value, str):
        return [f"name: must be a string, got {_json_type(value)}"]
    if not value or len(value) > MAX_NAME_CHARS:
        return [f"name: must be 1 to {MAX_NAME_CHARS} characters"]
    return []


def _check_image(value: Any, max_bytes: int) -> list[str]:
    if not isinstance(value, str):
        return [f"image_base64: must be a string, got {_json_type(value)}"]
    try:
        size = len(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError) as err:
        return [f"image_base64: not valid base64 ({err})"]
    if size == 0 or size > max_bytes:
        return [f"image_base64: decoded size {size} bytes is not within 1..{max_bytes}"]
    return []


_BG_KEYS = ("name", "image_base64")
_BG_CHECKS: dict[str, Callable[[Any, int], list[str]]] = {
    "name": _check_name,
    "image_base64": _check_image,
}
_Validator = Callable[[str, dict[str, Any], int], dict[str, Any]]
_COMMANDS: dict[str, _Validator] = {
    name: _background_args if name == BACKGROUND_SET else _no_args for name in COMMANDS
}


def _check_strings(data: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings that cannot be stored or logged safely."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        key, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PayloadError([f"{key or '<payload>'}: nested deeper than {MAX_DEPTH} levels"])
        if isinstance(value, dict):
            for child, item in value.items():
                _check_text(_join(key, child), child)
                stack.append((_join(key, child), item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{key}[{index}]", item, depth + 1) for index, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(key, value)


def _check_text(key: str, text: str) -> None:
    if "\x00" in text:
        raise PayloadError([f"{key}: contains a NUL character"])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PayloadError([f"{key}: contains an unpaired surrogate (\\u escape)"]) from err


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_type(value: Any) -> str:
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)
