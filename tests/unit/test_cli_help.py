"""Every command's --help is plain text: no reStructuredText markup leaks from docstrings."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app

REST = re.compile(r"``|:(class|func|meth|mod|data|attr|exc|ref|doc):`")


def _paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    if hasattr(command, "commands"):  # a group (typer vendors its own click)
        for name, sub in sorted(command.commands.items()):
            found.extend(_paths(sub, (*path, name)))
    return found


PATHS = _paths(typer.main.get_command(app))


def test_the_walk_finds_the_commands() -> None:
    assert ("connectors", "recover") in PATHS
    assert ("connectors", "list") in PATHS
    assert ("verify",) in PATHS
    assert len(PATHS) > 30


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "root")
def test_help_has_no_rest_markup(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    found = [line for line in result.output.splitlines() if REST.search(line)]
    assert not found, "reST markup in --help:\n" + "\n".join(found)


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"cdc-pipeline \d+\.\d+\.\d+\S*\n", result.output)


def test_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output
    assert "--show-completion" in result.output
