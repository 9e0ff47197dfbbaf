"""``cdc-pipeline connectors apply|status|restart|pause|resume|stop|delete``.

One Debezium PostgreSQL connector per entry of ``sources`` (name ``connector_name``, default
``cdc-<name>``), managed through the Kafka Connect REST API of ``connect.url``.

Exit codes: 0 success (and, where the command waits, the connector healthy); 1 an operation
failed: Connect refused or was unreachable, the configuration did not validate, the source's
publication does not match, or the connector is not healthy; 2 invalid configuration or
arguments. Passwords are never printed: configurations are masked and every message coming
from Connect or PostgreSQL is redacted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Annotated

import psycopg
import typer
from psycopg import sql

from connectors import source_prep
from connectors.connect_client import (
    ApplyAction,
    ConnectClient,
    ConnectError,
    ConnectorNotFoundError,
    ConnectorStatus,
    settled,
)
from connectors.debezium import ConnectorConfigError, build_connector_config
from pipeline.cli.common import ConfigOption, fail_unreachable, load_or_exit
from pipeline.cli.source_cmd import SourceOption, echo_check, select_sources
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings

app = typer.Typer(
    help="Register and operate the Debezium connectors of the configured sources (Kafka Connect REST).",
    no_args_is_help=True,
)

WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the resulting state.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the state.", min=0)]

# After a PUT or restart, Connect may still report the previous generation's state briefly.
SETTLE_DELAY_S = 2.0
# A healthy state must hold this long (a task can start RUNNING and fail a moment later).
STABLE_S = 3.0

_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")


def _client(settings: Settings) -> ConnectClient:
    return ConnectClient(settings.connect)


def _err(line: str) -> None:
    typer.echo(line, err=True)


def condense_trace(trace: str) -> list[str]:
    """The exception and ``Caused by:`` lines of a Java stack trace, without the frames."""
    return [line for line in trace.rstrip().splitlines() if line.strip() and not _FRAME.match(line)]


def echo_status(status: ConnectorStatus, full_trace: bool = False) -> None:
    """Print the connector state, each task's, and the trace of whatever failed (condensed by default)."""
    typer.echo(f"{status.name}: {status.state} (worker {status.worker_id or '-'})")
    if status.trace:
        _echo_trace(status.trace, full_trace)
    if not status.tasks:
        typer.echo("  no tasks")
    for task in status.tasks:
        typer.echo(f"  task {task.id}: {task.state} (worker {task.worker_id or '-'})")
        if task.trace:
            _echo_trace(task.trace, full_trace)


def _echo_trace(trace: str, full: bool) -> None:
    lines = trace.rstrip().splitlines() if full else condense_trace(trace)
    for line in lines:
        typer.echo(f"      {line}")


def _hint_failed(status: ConnectorStatus, src: SourceSettings) -> None:
    if status.failed:
        _err(
            f"  fix the cause (see the trace; 'cdc-pipeline source check' helps), then: "
            f"cdc-pipeline connectors restart -c FILE --source {src.name}"
        )


def _for_each(
    config: ConfigOption,
    source: str | None,
    action: Callable[[ConnectClient, SourceSettings], int],
    settings: Settings | None = None,
) -> None:
    """Run ``action`` for each selected source with one client; exit with the worst code.

    Loads the configuration unless ``settings`` is given.
    """
    settings = settings if settings is not None else load_or_exit(config)
    sources = select_sources(settings, source)
    code = 0
    with _client(settings) as client:
        for src in sources:
            try:
                code = max(code, action(client, src))
            except ConnectorNotFoundError:
                _err(f"{src.resolved_connector_name}: not found (create it with: cdc-pipeline connectors apply)")
                code = max(code, 1)
            except ConnectError as exc:
                _err(f"{src.resolved_connector_name}: {exc}")
                code = max(code, 1)
    raise typer.Exit(code)


def _await(
    client: ConnectClient, name: str, done: Callable[[ConnectorStatus], bool], timeout: float
) -> ConnectorStatus:
    time.sleep(min(SETTLE_DELAY_S, timeout))
    return client.wait_for(name, done, timeout_s=max(0.0, timeout - SETTLE_DELAY_S), stable_s=STABLE_S)


def _check_publication(src: SourceSettings) -> int:
    """0 when the publication matches the configured tables; else print why and return 1."""
    name = src.resolved_connector_name
    try:
        with source_prep.connect(src, "cdc-pipeline connectors apply") as conn:
            result = source_prep.check_publication(src, conn)
    except psycopg.Error as exc:
        _err(f"{name}: cannot check the source's publication: {source_prep.redactor(src)(str(exc).strip())}")
        _err("  (use --no-check-source when this host cannot reach the source database)")
        return 1
    if result.ok:
        return 0
    _err(f"{name}: the source is not prepared for this configuration")
    echo_check(result)
    _err(f"  run: cdc-pipeline source prepare -c FILE --source {src.name}   (or: connectors apply --prepare)")
    return 1


def _prepare_source(src: SourceSettings) -> bool:
    """``source prepare`` for ``src``, printing each step; True when it failed (printed)."""
    name = src.resolved_connector_name
    try:
        steps = source_prep.prepare(src)
    except source_prep.PrepareError as exc:
        _err(f"{name}: source prepare failed: {exc}")
        return True
    for step in steps:
        typer.echo(f"{name}: source prepared: {step.description}")
    return False


def _invalid(client: ConnectClient, name: str, connector_config: dict[str, str]) -> bool:
    """Validate ``connector_config`` through Connect; True (per-field errors printed) when invalid."""
    result = client.validate(connector_config, name=name)
    if result.ok:
        return False
    _err(f"{name}: invalid connector configuration ({result.error_count} error(s))")
    for error in result.errors:
        for message in error.messages:
            _err(f"  {error.key}: {message}")
    return True


@app.command()
def apply(
    config: ConfigOption = None,
    source: SourceOption = None,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Validate through Connect before applying.")
    ] = True,
    prepare: Annotated[bool, typer.Option("--prepare", help="Run 'source prepare' first (idempotent).")] = False,
    check_source: Annotated[
        bool,
        typer.Option("--check-source/--no-check-source", help="Check that the publication matches the tables."),
    ] = True,
    wait: WaitOption = True,
    timeout: TimeoutOption = 90.0,
) -> None:
    """Create or update each source's connector; print created, updated or unchanged.

    Validates first and prints per-field errors. An unchanged configuration is not sent, so
    the running tasks are kept. With ``--wait`` (default) waits until the connector is RUNNING
    with all tasks RUNNING, or something failed (then prints the trace, exit 1).
    """
    settings = load_or_exit(config)
    sources = select_sources(settings, source)
    built: dict[str, dict[str, str]] = {}
    for src in sources:
        try:
            built[src.name] = build_connector_config(src)
        except ConnectorConfigError as exc:
            _err(f"{config}: invalid configuration")
            _err(f"  {exc}")
            raise typer.Exit(2) from None

    def one(client: ConnectClient, src: SourceSettings) -> int:
        name = src.resolved_connector_name
        if prepare and _prepare_source(src):
            return 1
        if check_source and _check_publication(src):
            return 1
        if validate and _invalid(client, name, built[src.name]):
            return 1
        applied = client.apply(name, built[src.name])
        suffix = f" ({', '.join(applied.changed_keys)})" if applied.changed_keys else ""
        typer.echo(f"{name}: {applied.action.value}{suffix}")
        if not wait:
            return 0
        if applied.action is ApplyAction.UNCHANGED:
            status = client.wait_for(name, settled, timeout_s=timeout)
        else:
            status = _await(client, name, settled, timeout)
        echo_status(status)
        _hint_failed(status, src)
        return 0 if status.healthy else 1

    _for_each(config, source, one, settings)


@app.command()
def status(
    config: ConfigOption = None,
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the states as JSON (full traces).")] = False,
    full_trace: Annotated[bool, typer.Option("--full-trace", help="Print whole stack traces.")] = False,
) -> None:
    """Show the connector and task states, and the trace of anything FAILED. Exit 1 unless all are healthy.

    Traces are condensed to their exception and ``Caused by:`` lines unless ``--full-trace``.
    """
    settings = load_or_exit(config)
    sources = select_sources(settings, source)
    code = 0
    report: list[dict[str, object]] = []
    with _client(settings) as client:
        for src in sources:
            name = src.resolved_connector_name
            try:
                st = client.status(name)
            except ConnectorNotFoundError:
                code = 1
                if as_json:
                    report.append({"name": name, "error": "not found", "healthy": False})
                else:
                    _err(f"{name}: not found (create it with: cdc-pipeline connectors apply)")
                continue
            except ConnectError as exc:
                if exc.status_code is None and not as_json:  # Connect itself does not answer
                    fail_unreachable("Kafka Connect", settings.connect.url, exc)
                code = 1
                if as_json:
                    report.append({"name": name, "error": str(exc), "healthy": False})
                else:
                    _err(f"{name}: {exc}")
                continue
            code = max(code, 0 if st.healthy else 1)
            if as_json:
                report.append(st.to_dict())
            else:
                echo_status(st, full_trace)
                _hint_failed(st, src)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    raise typer.Exit(code)


@app.command()
def restart(
    config: ConfigOption = None,
    source: SourceOption = None,
    all_tasks: Annotated[
        bool, typer.Option("--all-tasks", help="Restart every task, not only the failed ones.")
    ] = False,
    wait: WaitOption = True,
    timeout: TimeoutOption = 90.0,
) -> None:
    """Restart the connector and its failed tasks (``includeTasks=true&onlyFailed=true``); wait until RUNNING."""

    def one(client: ConnectClient, src: SourceSettings) -> int:
        name = src.resolved_connector_name
        client.restart(name, include_tasks=True, only_failed=not all_tasks)
        typer.echo(f"{name}: restart requested")
        if not wait:
            return 0
        st = _await(client, name, lambda s: s.healthy, timeout)
        echo_status(st)
        _hint_failed(st, src)
        return 0 if st.healthy else 1

    _for_each(config, source, one)


def _state_command(
    config: ConfigOption,
    source: str | None,
    verb: str,
    call: Callable[[ConnectClient, str], None],
    done: Callable[[ConnectorStatus], bool],
    wait: bool,
    timeout: float,
) -> None:
    def one(client: ConnectClient, src: SourceSettings) -> int:
        name = src.resolved_connector_name
        call(client, name)
        typer.echo(f"{name}: {verb} requested")
        if not wait:
            return 0
        st = _await(client, name, done, timeout)
        echo_status(st)
        return 0 if done(st) else 1

    _for_each(config, source, one)


def _all_state(state: str) -> Callable[[ConnectorStatus], bool]:
    return lambda s: s.state == state and all(t.state == state for t in s.tasks)


@app.command()
def pause(
    config: ConfigOption = None, source: SourceOption = None, wait: WaitOption = True, timeout: TimeoutOption = 60.0
) -> None:
    """Pause: tasks stop reading the slot (WAL accumulates on the source); state PAUSED."""
    _state_command(config, source, "pause", ConnectClient.pause, _all_state("PAUSED"), wait, timeout)


@app.command()
def resume(
    config: ConfigOption = None, source: SourceOption = None, wait: WaitOption = True, timeout: TimeoutOption = 90.0
) -> None:
    """Resume a PAUSED or STOPPED connector; wait until it is RUNNING with all tasks."""
    _state_command(config, source, "resume", ConnectClient.resume, lambda s: s.healthy, wait, timeout)


@app.command()
def stop(
    config: ConfigOption = None, source: SourceOption = None, wait: WaitOption = True, timeout: TimeoutOption = 60.0
) -> None:
    """Stop (Connect 3.5+): shut the tasks down, keep config and offsets; state STOPPED. ``resume`` restarts it."""
    _state_command(
        config, source, "stop", ConnectClient.stop, lambda s: s.state == "STOPPED" and not s.tasks, wait, timeout
    )


@app.command()
def delete(config: ConfigOption = None, source: SourceOption = None) -> None:
    """Delete the connector. Its replication slot stays (and retains WAL) until dropped on the source."""

    def one(client: ConnectClient, src: SourceSettings) -> int:
        name = src.resolved_connector_name
        existed = client.delete(name)
        typer.echo(f"{name}: {'deleted' if existed else 'absent (nothing to delete)'}")
        if existed:
            slot = src.resolved_slot_name
            typer.echo(
                f"  note: replication slot {slot} is kept and retains WAL; if the source is retired run on it: "
                + sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(slot)).as_string(None)
            )
        return 0

    _for_each(config, source, one)
