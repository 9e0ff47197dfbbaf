"""Helpers shared by CLI commands: config loading with user-facing errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from pipeline.checks.naming import check_target_names
from pipeline.core.settings.loading import ConfigError, load_settings
from pipeline.core.settings.root import Settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="CDC_CONFIG", help="Pipeline YAML file.", show_default=False),
]


def fail(lines: list[str], code: int = 2) -> NoReturn:
    """Print ``lines`` to stderr and exit with ``code`` (2: user error, 1: operation failed)."""
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(code)


def fail_invalid(path: Path, problems: list[str]) -> NoReturn:
    """Exit 2 with ``FILE: invalid configuration`` and one indented line per problem."""
    fail([f"{path}: invalid configuration", *(f"  {p}" for p in problems)])


def load_or_exit(path: Path | None, *, check_names: bool = True) -> Settings:
    """Load settings; on a :class:`ConfigError` print its problems and exit 2.

    With ``check_names`` (every command but ``config show``), colliding target table names
    (:func:`pipeline.checks.naming.check_target_names`) are refused the same way: a
    configuration that would merge two tables is as invalid as one with a duplicate name.
    """
    if path is None:
        fail(["no configuration: pass --config FILE or set CDC_CONFIG"])
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        fail_invalid(path, exc.problems)
    if check_names:
        problems = check_target_names(settings.sources, settings.pipelines)
        if problems:
            fail_invalid(path, problems)
    return settings
