"""The package type-checks under mypy (with pydantic's plugin) as configured in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mypy(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Mypy with the project's configuration; no files named: the files it names (the package)."""
    command = [sys.executable, "-m", "mypy", "--no-error-summary", *arguments]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def _errors_in(tmp_path: Path, source: str) -> str:
    """Mypy's report on a module holding `source`, which must fail the check."""
    module = tmp_path / "checked.py"
    module.write_text(source)
    result = _mypy(str(module), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout.replace(str(module), "checked.py")


def test_package_type_checks() -> None:
    result = _mypy()
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unguarded_optional_fails_the_check(tmp_path: Path) -> None:
    """The check can fail: an Optional used without a guard, as `_control` once was."""
    report = _errors_in(
        tmp_path,
        "class Control:\n"
        "    def start(self) -> None: ...\n\n\n"
        "def run(control: Control | None) -> None:\n"
        "    control.start()\n",
    )
    assert 'checked.py:6: error: Item "None" of "Control | None" has no attribute "start"' in report


def test_the_pydantic_plugin_is_on(tmp_path: Path) -> None:
    """Without pydantic's plugin `model_construct` takes anything; with it, the fields' types."""
    report = _errors_in(
        tmp_path,
        "from pydantic import BaseModel\n\n\n"
        "class Settings(BaseModel):\n"
        "    port: int\n\n\n"
        'Settings.model_construct(port="8554")\n',
    )
    assert 'checked.py:8: error: Argument "port" to "model_construct"' in report
