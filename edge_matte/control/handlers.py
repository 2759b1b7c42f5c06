"""The topic -> handler table: validate a request, apply it through ControlApi, build the answer.

Handlers know nothing about MQTT connections; they turn (relative topic, payload bytes) into an
Answer the transport publishes. Every request gets exactly one answer; a request that fails
validation or is refused by the daemon changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from edge_matte.config import schema as config_mod
from edge_matte.config.redact import mask, shorten
from edge_matte.control import payloads
from edge_matte.control.api import ControlApi
from edge_matte.control.payloads import PayloadError
from edge_matte.control.topics import (
    AUTO_REFRESH_SET,
    CMD_PREFIX,
    CMD_RESULT,
    CONFIG_RESULT,
    CONFIG_SET,
    PLATE_FREEZE,
    PLATE_UNFREEZE,
    SNAPSHOT_COMMAND,
    command_topic,
)
from edge_matte.errors import ConfigError, EdgeMatteError

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What to publish for one request: a result (on `result_topic`) and maybe more."""

    result_topic: str  # CONFIG_RESULT or CMD_RESULT, relative to the device base
    result: dict[str, Any]
    snapshot: bytes | None = None
    changed: bool = False  # the request changed something: republish config and state


def dispatch(
    api: ControlApi, relative: str, payload: bytes, refusal: str | None = None
) -> Answer | None:
    """Answer the request at `relative` (None for topics that are not requests).

    With `refusal` (retained message, too busy) the request is answered with that error and
    not executed.
    """
    handler = _handler_for(relative)
    if handler is None:
        return None
    try:
        return handler(api, relative, payload, refusal)
    except Exception as err:  # supervision boundary: a bug must not kill the control thread
        _LOG.exception("handling %s failed", shorten(relative))
        return handler(api, relative, payload, f"internal error: {type(err).__name__}: {err}")


def handles(relative: str) -> bool:
    """Whether `relative` is a request topic (our own answers, echoed back, are not)."""
    return _handler_for(relative) is not None


Handler = Callable[[ControlApi, str, bytes, str | None], Answer]


def _handler_for(relative: str) -> Handler | None:
    exact = _HANDLERS.get(relative)
    if exact is not None:
        return exact
    if relative.startswith(CMD_PREFIX) and relative != CMD_RESULT:  # our own answers come back
        return _command
    return None


def _config_set(api: ControlApi, relative: str, payload: bytes, refusal: str | None) -> Answer:
    limit = api.config().mqtt.max_payload_bytes
    request_id = payloads.peek_id(payload, limit)
    if refusal is not None:
        return _config_answer(request_id, [f"<message>: {refusal}"])
    try:
        request_id, patch = payloads.split_id(payloads.decode_object(payload, limit))
        old = api.config()
        new = config_mod.apply_patch(old, patch)
        if new == old:
            return _config_answer(request_id, [])
        api.apply_config(new)  # refuses device-only keys before opening anything
    except PayloadError as err:
        return _config_answer(request_id, err.errors)
    except ConfigError as err:
        return _config_answer(request_id, _config_errors(err))
    except EdgeMatteError as err:
        return _config_answer(request_id, [str(err)])
    return Answer(CONFIG_RESULT, {"id": request_id, "ok": True, "errors": []}, changed=True)


def _config_answer(request_id: payloads.RequestId, errors: list[str]) -> Answer:
    """The answer; at most 20 errors of bounded length, secrets masked."""
    shown = [mask(line) for line in config_mod.capped(errors)]
    return Answer(CONFIG_RESULT, {"id": request_id, "ok": not errors, "errors": shown})


def _config_errors(err: ConfigError) -> list[str]:
    """One line per problem, keys dotted (`compose.mode: ...`), from the validation error."""
    if isinstance(err.__cause__, ValidationError):
        return config_mod.format_errors(err.__cause__)
    return err.problems


def _command(api: ControlApi, relative: str, payload: bytes, refusal: str | None) -> Answer:
    name = relative[len(CMD_PREFIX) :]
    limit = api.config().mqtt.max_payload_bytes
    request_id = payloads.peek_id(payload, limit)
    if refusal is not None:
        return _command_answer(request_id, name, error=refusal)
    try:
        request_id, args = payloads.split_id(payloads.decode_object(payload, limit))
        args = payloads.command_args(name, args, limit)
        if name == SNAPSHOT_COMMAND:
            jpeg = api.snapshot_jpeg()
            return Answer(
                CMD_RESULT,
                _command_result(request_id, name, {"bytes": len(jpeg)}),
                snapshot=jpeg,
            )
        result = api.command(name, args)
    except EdgeMatteError as err:  # PayloadError included
        return _command_answer(request_id, name, error=str(err))
    return Answer(CMD_RESULT, _command_result(request_id, name, result), changed=True)


def _auto_refresh(api: ControlApi, relative: str, payload: bytes, refusal: str | None) -> Answer:
    """Home Assistant switch: ON = automatic plate refresh (unfreeze), OFF = freeze."""
    choice = {b"ON": PLATE_UNFREEZE, b"OFF": PLATE_FREEZE}.get(payload.strip())
    if refusal is None:
        if choice is not None:
            return _command(api, command_topic(choice), b"{}", None)
        refusal = "<payload>: expected ON or OFF"
    return _command_answer(None, relative, error=refusal)


def _command_answer(request_id: payloads.RequestId, name: str, error: str) -> Answer:
    shown = shorten(mask(error))
    return Answer(
        CMD_RESULT, {"id": request_id, "command": shorten(name), "ok": False, "error": shown}
    )


def _command_result(
    request_id: payloads.RequestId, name: str, result: dict[str, Any]
) -> dict[str, Any]:
    return {"id": request_id, "command": name, "ok": True, "result": result}


_HANDLERS: dict[str, Handler] = {CONFIG_SET: _config_set, AUTO_REFRESH_SET: _auto_refresh}
