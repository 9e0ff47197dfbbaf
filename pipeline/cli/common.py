"""Helpers shared by CLI commands: config loading and unreachable services, with user-facing errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import typer

from pipeline.checks.naming import check_target_names
from pipeline.core.logs import current_format, get_logger
from pipeline.core.settings.loading import ConfigError, load_settings
from pipeline.core.settings.root import Settings

log = get_logger(__name__)

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


def error_text(exc: BaseException) -> str:
    """The first line of an error's message; a confluent-kafka ``KafkaException`` by its
    ``KafkaError.str()`` (\"Failed to get metadata: Local: Broker transport failure\") rather
    than the ``KafkaError{code=...}`` repr."""
    first: Any = exc.args[0] if exc.args else None
    describe = getattr(first, "str", None)
    text = (str(describe()) if callable(describe) else str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unreachable(service: str, where: str, exc: BaseException) -> str:
    """``cannot reach <service> at <where>: <error>``: the one line a command prints when Kafka,
    Kafka Connect or a database does not answer. ``where`` is the host list or URL (without
    credentials), so the user sees which address was tried."""
    where = _without_credentials(where)
    return f"cannot reach {service} at {where}: {error_text(exc)}"


def fail_unreachable(service: str, where: str, exc: BaseException) -> NoReturn:
    """Report :func:`unreachable` once on stderr and exit 1, without a traceback: as a JSON log
    record (``event``, ``service``, ``host``, ``error``) when logs are JSON, else as a plain line."""
    where = _without_credentials(where)
    message = unreachable(service, where, exc)
    if current_format() == "json":
        log.error(message, service=service, host=where, error=error_text(exc))
        raise typer.Exit(1)
    fail([message], code=1)


def _without_credentials(where: str) -> str:
    """``where`` with any ``user:password@`` of a URL removed (host lists pass unchanged)."""
    if "://" not in where:
        return where
    parts = urlsplit(where)
    if "@" not in parts.netloc:
        return where
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
