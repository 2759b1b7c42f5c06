"""The config's JSON schema published for editors (docs/config.schema.json) is the model's own."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_matte.config import schema as config_mod

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "docs" / "config.schema.json"
EXAMPLE = ROOT / "systemd" / "edge-matte.yaml"

jsonschema = pytest.importorskip("jsonschema")


def published() -> dict[str, Any]:
    return json.loads(PUBLISHED.read_text(encoding="utf-8"))


def errors(document: Any) -> list[str]:
    """Every complaint of a standard validator (what an editor shows) about `document`."""
    validator = jsonschema.Draft202012Validator(published())
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_the_published_schema_is_what_the_model_says() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--schema"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert PUBLISHED.read_text(encoding="utf-8") == generated, (
        "run `python scripts/config_reference.py --schema > docs/config.schema.json`"
    )
    jsonschema.Draft202012Validator.check_schema(published())


def test_the_example_config_validates_against_it() -> None:
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert errors(example) == []
    config_mod.parse(example, str(EXAMPLE))  # and the daemon agrees


@pytest.mark.parametrize(
    ("section", "key", "value", "complaint"),
    [
        ("source", "fps", "fast", "source.fps: 'fast' is not of type 'number'"),
        ("stream", "port", 8554.5, "stream.port: 8554.5 is not of type 'integer'"),
        ("compose", "mode", "sepia", "compose.mode: 'sepia' is not one of"),
        ("source", "fsp", 30, "source: Additional properties are not allowed ('fsp'"),
    ],
)
def test_a_wrong_value_is_refused_like_the_daemon_refuses_it(
    section: str, key: str, value: Any, complaint: str
) -> None:
    wrong = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    wrong[section][key] = value
    found = errors(wrong)
    assert len(found) == 1 and found[0].startswith(complaint), found
    with pytest.raises(config_mod.ConfigError):
        config_mod.parse(wrong, "wrong")
