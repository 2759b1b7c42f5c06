"""The package layout of docs/architecture.md, enforced: who may import whom.

Data flows one way (source -> plate/matte -> composite -> outputs) and the import graph follows
it: a stage package imports the shared modules, `config` and the stages before it, never the
runtime that drives it. Lazy imports inside functions count too: they are still dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edge_matte"
DOC = PACKAGE.parent / "docs" / "architecture.md"

SHARED = {"errors", "atomic", "frames", "events", "slot"}
TOP_LEVEL = SHARED | {"__init__", "cli"}
BASE = SHARED | {"config"}

# What each package may import besides itself (module names where only one module is allowed).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "atomic": {"errors"},
    "frames": {"errors"},
    "events": {"errors"},
    "slot": set(),
    "config": SHARED,
    "model": {"errors"},
    "capture": BASE,
    "plate": BASE | {"capture"},
    "engine": BASE | {"model", "runtime.notify"},
    "output": BASE,
    "control": BASE | {"capture", "output", "plate", "__version__"},
    "runtime": BASE | {"capture", "plate", "engine", "model", "output", "control", "__version__"},
    # soak's load generator is an MQTT client of the daemon: it spells topics from their table.
    "tools": BASE
    | {"capture", "plate", "engine", "model", "output", "runtime.telemetry", "control.topics"},
    "bench": BASE | {"capture", "plate", "engine", "model", "output", "runtime.pipeline"},
    "cli": BASE | {"capture", "engine", "control", "runtime", "tools", "bench", "__version__"},
}


def _owner(path: Path) -> str:
    """The package (or shared top-level module) a source file belongs to."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    """Dotted names under edge_matte that `path` imports, e.g. `runtime.notify` or `config`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (use edge_matte.* names)"
            if node.module == "edge_matte":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("edge_matte."):
                names.add(node.module.removeprefix("edge_matte."))
        elif isinstance(node, ast.Import):
            names.update(
                a.name.removeprefix("edge_matte.")
                for a in node.names
                if a.name.startswith("edge_matte.")
            )
    return names


def _allowed(owner: str, name: str) -> bool:
    head = name.split(".", maxsplit=1)[0]
    if head == owner:
        return True
    rules = ALLOWED[owner]
    return head in rules or any(name == r or name.startswith(r + ".") for r in rules)


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_top_level_holds_only_shared_modules_and_the_cli() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == TOP_LEVEL, "a new top-level module belongs in one of the packages"
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages | SHARED | {"cli"} == set(ALLOWED), "every package needs a row in ALLOWED"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    owner = _owner(path)
    wrong = sorted(n for n in _imports(path) if not _allowed(owner, n))
    assert not wrong, f"{owner} may not import {wrong} (docs/architecture.md)"


def test_the_architecture_page_describes_every_package() -> None:
    text = DOC.read_text()
    for name in ALLOWED:
        if name not in SHARED | {"cli"}:
            assert f"`{name}/`" in text, f"docs/architecture.md does not describe {name}/"


def test_the_rule_table_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a stage importing the runtime that drives it is refused."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from edge_matte.runtime.daemon import Daemon\n")
    assert _imports(probe) == {"runtime.daemon"}
    assert not _allowed("plate", "runtime.daemon")
    assert not _allowed("engine", "runtime.pipeline")
    assert _allowed("engine", "runtime.notify")
    assert _allowed("plate", "capture")
