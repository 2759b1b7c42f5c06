#!/usr/bin/env python3
"""Print the config reference (Markdown) from the pydantic model, so the README cannot drift.

tests/test_readme.py checks that README.md contains exactly this output. With `--schema` it
prints the config's JSON schema instead, for editors (docs/config.schema.json holds it, and
tests/test_config_schema.py checks that file against this output).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel  # noqa: E402

from edge_matte.config.schema import Config  # noqa: E402


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return (
            "(section)"
            if isinstance(value, BaseModel)
            else f"`{value}`"
            if not isinstance(value, str)
            else "(host name)"
        )
    return "required" if field.is_required() else f"`{field.default}`"


def _limits(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, name, None) is not None:
                parts.append(f"{symbol} {getattr(meta, name)}")
        if getattr(meta, "multiple_of", None) is not None:
            parts.append(f"multiple of {meta.multiple_of}")
    return ", ".join(parts)


def rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        sub = next(
            (
                a
                for a in getattr(annotation, "__args__", (annotation,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if sub is not None and field.default_factory is not None:
            out += rows(sub, f"{key}.")
            continue
        if sub is not None:  # optional section (e.g. mqtt.tls): list its keys too
            out.append(f"| `{key}` | section or null | `None` | | {field.description or ''} |")
            out += rows(sub, f"{key}.")
            continue
        type_name = (
            str(annotation)
            .replace("typing.", "")
            .replace("pathlib.", "")
            .replace("pydantic.types.", "")
        )
        type_name = (
            type_name.replace("Literal[", "one of [")
            .replace("<class '", "")
            .replace("'>", "")
            .replace("|", "\\|")
        )
        out.append(
            f"| `{key}` | {type_name} | {_default(field)} | {_limits(field)} | {field.description or ''} |"
        )
    return out


def reference() -> str:
    lines = ["| key | type | default | range | meaning |", "|---|---|---|---|---|", *rows(Config)]
    return "\n".join(lines) + "\n"


def schema() -> str:
    """The JSON schema (draft 2020-12) of the config file, as docs/config.schema.json holds it."""
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Config.model_json_schema(),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema() if sys.argv[1:] == ["--schema"] else reference())
