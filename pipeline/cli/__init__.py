"""The ``cdc-pipeline`` command line (typer).

Exit codes: 0 success; 1 an operation failed (a service unhealthy, a check failed); 2 user
error (invalid config or arguments). User errors print one line per problem, no traceback.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
from typing import Annotated

import typer

from pipeline.cli import (
    config_cmd,
    connectors_cmd,
    cutover_cmd,
    demo_cmd,
    dlq_cmd,
    lag_cmd,
    load_cmd,
    local_cmd,
    monitor_cmd,
    offsets_cmd,
    run_cmd,
    snapshot_cmd,
    source_cmd,
    verify_cmd,
)
from pipeline.core.logs import LEVELS, configure_logging

app = typer.Typer(
    name="cdc-pipeline",
    help="Change data capture from PostgreSQL via Debezium and Kafka into target databases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(local_cmd.app, name="local")
app.add_typer(source_cmd.app, name="source")
app.add_typer(connectors_cmd.app, name="connectors")
app.command(name="run")(run_cmd.run)
app.command(name="control")(monitor_cmd.control)
app.command(name="monitor", help="Alias of control (kept for existing deployments).")(monitor_cmd.control)
app.command(name="lag")(lag_cmd.lag)
app.command(name="demo")(demo_cmd.demo)
app.command(name="verify")(verify_cmd.verify)
app.add_typer(snapshot_cmd.app, name="snapshot")
app.add_typer(offsets_cmd.app, name="offsets")
app.add_typer(dlq_cmd.app, name="dlq")
app.add_typer(cutover_cmd.app, name="cutover")
app.add_typer(load_cmd.app, name="load")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cdc-pipeline {importlib.metadata.version('cdc-pipeline')}")
        raise typer.Exit(0)


_REST_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`")


def plain_help(text: str) -> str:
    """``text`` without reST markup: roles become their (last dotted) name, literals lose their backticks."""
    text = _REST_ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def _plain_help_everywhere(typer_app: typer.Typer) -> None:
    """Strip reST markup from the help of every command and group (docstrings are written for
    the API docs; --help is plain text)."""
    for command in typer_app.registered_commands:
        doc = command.help if command.help is not None else inspect.getdoc(command.callback)
        command.help = plain_help(doc) if doc else doc
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        if isinstance(sub.info.help, str):
            sub.info.help = plain_help(sub.info.help)
        _plain_help_everywhere(sub)


@app.callback()
def _root(
    version: Annotated[  # handled eagerly by _version
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    log_format: Annotated[
        str, typer.Option("--log-format", envvar="CDC_LOG_FORMAT", help="json (default) or console.")
    ] = "json",
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="CDC_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Configure logging once for every command."""
    if log_format not in ("json", "console"):
        raise typer.BadParameter("use json or console", param_hint="--log-format")
    if log_level.lower() not in LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LEVELS)}", param_hint="--log-level")
    configure_logging("json" if log_format == "json" else "console", log_level)


_plain_help_everywhere(app)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
