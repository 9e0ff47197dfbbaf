"""Helpers shared by CLI commands: config loading with user-facing errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

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


def load_or_exit(path: Path | None) -> Settings:
    """Load settings; on a :class:`ConfigError` print its problems and exit 2."""
    if path is None:
        fail(["no configuration: pass --config FILE or set CDC_CONFIG"])
    try:
        return load_settings(path)
    except ConfigError as exc:
        fail([f"{path}: invalid configuration", *(f"  {p}" for p in exc.problems)])
