"""The import contracts in pyproject.toml (import-linter) hold for the code, and they do catch a
cycle or an upward import when one is planted: the checker itself can fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO

LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
]


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LINT, *args], cwd=cwd, capture_output=True, text=True, check=False, env={"PYTHONPATH": str(cwd)}
    )


def test_the_project_keeps_its_contracts() -> None:
    result = _lint(REPO, "--config", str(REPO / "pyproject.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def _package(root: Path, files: dict[str, str]) -> None:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))


def _contracts(root: Path) -> Path:
    """The project's own contracts, pointed at a planted copy of its layer names."""
    config = (REPO / "pyproject.toml").read_text()
    section = config[config.index("[tool.importlinter]") :]
    path = root / "contracts.toml"
    path.write_text(section)
    return path


LAYOUT = {
    "pipeline/__init__.py": "",
    "pipeline/cli/__init__.py": "",
    "pipeline/app.py": "",
    "pipeline/localstack/__init__.py": "",
    "pipeline/dataplane/__init__.py": "",
    "pipeline/dataplane/runner.py": "from pipeline.core import events\n",
    "pipeline/control/__init__.py": "",
    "pipeline/control/a.py": "from pipeline.control import b\n",
    "pipeline/control/b.py": "",
    "pipeline/checks/__init__.py": "",
    "pipeline/transform/__init__.py": "",
    "pipeline/decode/__init__.py": "",
    "pipeline/core/__init__.py": "",
    "pipeline/core/events.py": "",
    "sinks/__init__.py": "",
    "sinks/base.py": "from pipeline.core import events\n",
    "connectors/__init__.py": "",
}


def test_a_planted_layout_without_faults_passes(tmp_path: Path) -> None:
    _package(tmp_path, LAYOUT)
    result = _lint(tmp_path, "--config", str(_contracts(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lazy_import_cycle_is_caught(tmp_path: Path) -> None:
    # b imports a inside a function: a cycle hidden in a function is still a cycle.
    _package(tmp_path, {**LAYOUT, "pipeline/control/b.py": "def f():\n    from pipeline.control import a\n"})
    result = _lint(tmp_path, "--config", str(_contracts(tmp_path)))
    assert result.returncode == 1
    assert "acyclic" in result.stdout.lower() or "cycles" in result.stdout.lower()
    assert "BROKEN" in result.stdout


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    # A target importing the data plane breaks the layers (and the composition root's rule).
    _package(tmp_path, {**LAYOUT, "sinks/base.py": "from pipeline.dataplane import runner\n"})
    result = _lint(tmp_path, "--config", str(_contracts(tmp_path)))
    assert result.returncode == 1
    assert "BROKEN" in result.stdout and "sinks.base -> pipeline.dataplane.runner" in result.stdout
