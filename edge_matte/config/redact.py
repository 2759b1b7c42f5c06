"""Secrets out of everything that leaves the process, and every echoed value kept short.

One masking function serves logs, the MQTT `state`, `config` and `events` topics and error
answers: URIs lose their user:password part (up to the *last* `@` of the authority, so
`rtsp://admin:p@ssw0rd@host` keeps no piece of the password), and the secret values the daemon
was configured with are replaced wherever they appear. Echoed values are cut to a bounded length
so a megabyte-long name never reaches a log line or an answer whole.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
MAX_TEXT = 300  # characters of one echoed value or error line
MAX_LOG = 2000  # characters of one log line (message and traceback each)
# scheme://userinfo@ in free text; the userinfo runs up to the last @ before the path, and
# when it has one, on to the last @ before the query: a password with an unescaped "/"
# (`user:p@ss/word@host`) is cut there by URI parsers, but must not show either.
_URI_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@(?:[^\s?#]*@)?")

_secrets: set[str] = set()
_lock = threading.Lock()


def mask_uri(uri: str) -> str:
    """The URI with any user:password replaced by ***, for logs and messages."""
    return _URI_CREDENTIALS.sub(rf"\1{MASK}@", uri, count=1)


def remember_secret(value: str | None) -> None:
    """Mask `value` from now on wherever `mask` runs (passwords the config resolves)."""
    if value and len(value) >= 3:  # shorter would mask ordinary words and digits
        with _lock:
            _secrets.add(value)


def mask(text: str) -> str:
    """`text` with URI credentials and every remembered secret replaced by ***."""
    text = _URI_CREDENTIALS.sub(rf"\1{MASK}@", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def mask_data(value: Any) -> Any:
    """`value` (JSON-like data) with `mask` applied to every string in it, keys included;
    numbers are left alone, so the JSON stays valid whatever the secret looks like."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {mask(str(key)): mask_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_data(item) for item in value]
    return value


def shorten(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class MaskingFilter(logging.Filter):
    """A handler filter: every record's message (and traceback) masked and bounded."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = shorten(mask(record.getMessage()), MAX_LOG)
        record.args = None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = shorten(mask(text), MAX_LOG)
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Add MaskingFilter to every handler of `logger` (the root logger by default) once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
