"""``cdc-pipeline connectors apply|status|list|restart|pause|resume|stop|delete|recover``.

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
import sys
import time
from collections.abc import Callable
from typing import Annotated

import psycopg
import sqlalchemy.exc
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
from pipeline.cli.common import ConfigOption, fail, fail_unreachable, load_or_exit
from pipeline.cli.snapshot_cmd import one_source
from pipeline.cli.source_cmd import SourceOption, echo_check, echo_diagnosis, select_sources
from pipeline.control.bulkload.state import lost_slot_message, slot_problem
from pipeline.control.bulkload.status import load_done
from pipeline.control.recovery import (
    Diagnosis,
    RecoverOptions,
    Recovery,
    RecoveryError,
    SnapshotChoice,
    inspect,
)
from pipeline.control.snapshot.model import SnapshotRequest
from pipeline.control.verify.model import format_result
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import TransientSinkError

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


def _hint_failed(status: ConnectorStatus, src: SourceSettings, diagnosis: Diagnosis | None = None) -> None:
    """The fix of a failed connector: ``connectors recover`` when its position is lost, else restart."""
    if diagnosis is not None:
        echo_diagnosis(diagnosis, err=True)
        return
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


def _bulk_load_missing(settings: Settings, src: SourceSettings) -> bool:
    """True (the refusal printed) when ``src`` uses ``initial_load: bulk`` and its load is not done: a
    connector with ``snapshot.mode=no_data`` on a slot nobody copied would leave the targets without
    the existing rows."""
    if src.initial_load != "bulk":
        return False
    try:
        if load_done(settings, src):
            return False
    except (psycopg.Error, sqlalchemy.exc.DBAPIError, TransientSinkError) as exc:
        _err(f"{src.resolved_connector_name}: cannot read the bulk-load state of source {src.name}: {exc}")
        return True
    _err(
        f"source {src.name} uses initial_load: bulk and has no completed load: "
        f"run `cdc-pipeline load run -s {src.name}`"
    )
    return True


def _bulk_slot_gone(client: ConnectClient, src: SourceSettings) -> bool:
    """True (the refusal printed) when ``src`` is a loaded bulk source whose connector is not
    registered and whose slot is missing or lost: Debezium would create a new slot at the current
    LSN and the changes committed since the load would never reach the targets."""
    if src.initial_load != "bulk" or client.get_config(src.resolved_connector_name) is not None:
        return False
    try:
        with source_prep.connect(src, "cdc-pipeline connectors apply") as conn:
            problem = slot_problem(conn, src.resolved_slot_name)
    except psycopg.Error as exc:
        text = source_prep.redactor(src)(str(exc).strip())
        _err(f"{src.resolved_connector_name}: cannot read the slot of the bulk load: {text}")
        return True
    if problem is None:
        return False
    _err(f"{src.resolved_connector_name}: {lost_slot_message(src, problem)}")
    return True


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
    the running tasks are kept. With --wait (default) waits until the connector is RUNNING
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
        if _bulk_load_missing(settings, src) or _bulk_slot_gone(client, src):
            return 1
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
        _hint_failed(status, src, inspect(src, client, status) if status.failed else None)
        return 0 if status.healthy else 1

    _for_each(config, source, one, settings)


@app.command()
def status(
    config: ConfigOption = None,
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the states as JSON (full traces).")] = False,
    full_trace: Annotated[bool, typer.Option("--full-trace", help="Print whole stack traces.")] = False,
    check_source: Annotated[
        bool,
        typer.Option(
            "--check-source/--no-check-source",
            help="Also read the replication slot on the source, to detect a lost position.",
        ),
    ] = True,
) -> None:
    """Show the connector and task states, and the trace of anything FAILED. Exit 1 unless all are healthy.

    Traces are condensed to their exception and 'Caused by:' lines unless --full-trace. A
    connector whose slot or stored position is gone (slot missing, WAL lost, slot re-created)
    is reported in one line with its fix: cdc-pipeline connectors recover.
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
            diagnosis = inspect(src, client, st, read_source=check_source) if check_source or st.failed else None
            code = max(code, 0 if st.healthy and diagnosis is None else 1)
            if as_json:
                doc = st.to_dict()
                if diagnosis is not None:
                    doc["position_lost"] = diagnosis.to_dict()
                    doc["healthy"] = False
                report.append(doc)
            else:
                echo_status(st, full_trace)
                _hint_failed(st, src, diagnosis)
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
    """Restart the connector and its failed tasks (includeTasks=true&onlyFailed=true); wait until RUNNING."""

    def one(client: ConnectClient, src: SourceSettings) -> int:
        name = src.resolved_connector_name
        client.restart(name, include_tasks=True, only_failed=not all_tasks)
        typer.echo(f"{name}: restart requested")
        if not wait:
            return 0
        st = _await(client, name, lambda s: s.healthy, timeout)
        echo_status(st)
        _hint_failed(st, src, inspect(src, client, st) if st.failed else None)
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
    """Stop (Connect 3.5+): shut the tasks down, keep config and offsets; state STOPPED. 'resume' restarts it."""
    _state_command(
        config, source, "stop", ConnectClient.stop, lambda s: s.state == "STOPPED" and not s.tasks, wait, timeout
    )


YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed when not a terminal).")
]


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on a terminal; exit 1 when declined, 2 when stdin is not a terminal and no --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail([f"{question} (not a terminal: pass --yes to confirm)"])
    if not typer.confirm(question, default=False):
        fail(["aborted, nothing changed"], code=1)


@app.command()
def delete(
    config: ConfigOption = None,
    source: SourceOption = None,
    all_sources: Annotated[
        bool, typer.Option("--all", help="Delete the connector of every configured source (asks first).")
    ] = False,
    yes: YesOption = False,
) -> None:
    """Delete the connector. Its replication slot stays (and retains WAL) until dropped on the source.

    Without --source, --all is required, and the deletion is confirmed first (--yes when not a terminal).
    """
    settings = load_or_exit(config)
    if source is None:
        if not all_sources:
            fail(["name the connector's source with --source S, or pass --all to delete every configured connector"])
        names = ", ".join(s.resolved_connector_name for s in select_sources(settings, None))
        confirm(f"delete connectors {names}?", yes)

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

    _for_each(config, source, one, settings)


def _tasks_text(status: ConnectorStatus) -> str:
    if not status.tasks:
        return "no tasks"
    states = sorted({t.state for t in status.tasks})
    running = sum(1 for t in status.tasks if t.state == "RUNNING")
    return f"{running}/{len(status.tasks)} running" + ("" if states == ["RUNNING"] else f" ({', '.join(states)})")


@app.command(name="list")
def list_connectors(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the connectors as JSON.")] = False,
) -> None:
    """List every connector on the Kafka Connect cluster: name, state, tasks, and the configured
    source it belongs to ('-' for connectors this configuration does not define)."""
    settings = load_or_exit(config)
    owners = {s.resolved_connector_name: s.name for s in settings.sources}
    try:
        with _client(settings) as client:
            found = client.statuses()
    except ConnectError as exc:
        fail([f"{settings.connect.url}: {exc}"], code=1)
    if as_json:
        typer.echo(json.dumps([{**st.to_dict(), "source": owners.get(st.name)} for st in found], indent=2))
        raise typer.Exit(0)
    if not found:
        typer.echo("no connectors")
        raise typer.Exit(0)
    width = max(len(st.name) for st in found)
    typer.echo(f"{'NAME':<{width}}  {'STATE':<10}  {'TASKS':<24}  SOURCE")
    for st in found:
        typer.echo(f"{st.name:<{width}}  {st.state:<10}  {_tasks_text(st):<24}  {owners.get(st.name, '-')}")
    raise typer.Exit(0)


def _snapshot_echo() -> Callable[[list[SnapshotRequest]], None]:
    """An ``on_poll`` callback printing each request's state and tables done when they change."""
    shown: dict[object, str] = {}

    def show(found: list[SnapshotRequest]) -> None:
        for r in found:
            done = sum(1 for t in r.tables if r.table_progress(t).state.terminal)
            line = f"snapshot request {r.id}: {r.state.value}, {done}/{len(r.tables)} table(s) done"
            if shown.get(r.id) != line:
                shown[r.id] = line
                typer.echo(line)

    return show


def _diagnose_or_exit(client: ConnectClient, src: SourceSettings, force: bool) -> None:
    """Print what is wrong with the connector's position; exit when recovery would not help."""
    name = src.resolved_connector_name
    try:
        status: ConnectorStatus | None = client.status(name)
    except ConnectorNotFoundError:
        fail([f"{name}: not found (create it with: cdc-pipeline connectors apply)"], code=1)
    diagnosis = inspect(src, client, status)
    if diagnosis is None:
        if not force:
            fail([f"{name}: no lost position detected (slot and offset agree); --force recovers anyway"], code=1)
        typer.echo(f"{name}: no lost position detected; recovering anyway (--force)")
        return
    typer.echo(f"{name}: {diagnosis.line()}")
    if not diagnosis.recoverable:
        fail([f"{name}: {diagnosis.fix}"], code=1)


@app.command()
def recover(
    config: ConfigOption = None,
    source: SourceOption = None,
    snapshot: Annotated[
        str,
        typer.Option(
            "--snapshot",
            help="initial: the connector snapshots every table on start; incremental: it streams at once and the "
            "tables are snapshotted through the signal table (see --table).",
        ),
    ] = "initial",
    tables: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", help="With --snapshot incremental: only this table ('schema.table'); repeat."),
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Repair what the final verification finds (see verify --repair).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Recover even when no lost position is detected.")] = False,
    yes: YesOption = False,
    timeout: TimeoutOption = 900.0,
) -> None:
    """Bring back a connector whose replication slot or WAL position is gone.

    Stops the connector, deletes its Kafka Connect offsets, drops the dead slot, runs source
    prepare, resumes it with a fresh snapshot, then verifies every pipeline of the source. Each
    step is printed; the plan is confirmed first (--yes when not a terminal). Exit 0 when the
    pipelines verify clean, 1 when a step failed or verification did not.
    """
    if snapshot not in ("initial", "incremental"):
        fail([f"--snapshot: use initial or incremental, not {snapshot!r}"])
    settings = load_or_exit(config)
    src = one_source(settings, source)
    mode: SnapshotChoice = "initial" if snapshot == "initial" else "incremental"
    options = RecoverOptions(snapshot=mode, tables=tuple(tables or ()), repair=repair, timeout_s=timeout)
    with _client(settings) as client:
        plan = Recovery(settings, src, client, options, typer.echo)
        problems = plan.problems()
        if problems:
            fail(problems)
        try:
            _diagnose_or_exit(client, src, force)
        except ConnectError as exc:
            fail([f"{src.resolved_connector_name}: {exc}"], code=1)
        typer.echo("recovery plan:")
        for number, step in enumerate(plan.plan(), start=1):
            typer.echo(f"  {number}. {step}")
        confirm(f"recover connector {src.resolved_connector_name}?", yes)
        code = _run_recovery(plan)
    raise typer.Exit(code)


def _run_recovery(recovery: Recovery) -> int:
    recovery.on_snapshot = _snapshot_echo()
    try:
        report = recovery.run()
    except RecoveryError as exc:
        _err(f"recovery stopped: {exc}")
        _err("  each step is idempotent: fix the cause and run the same command again, with --force")
        return 1
    except ConnectError as exc:
        _err(f"recovery stopped: {exc}")
        return 1
    except (psycopg.Error, TransientSinkError) as exc:
        _err(f"recovery stopped: {type(exc).__name__}: {recovery.source.name}: {str(exc).strip()[:300]}")
        return 1
    if not report.verified:
        typer.echo("no pipeline reads this source: nothing verified")
    for result in report.verified.values():
        typer.echo(format_result(result, False))
    typer.echo("recovered: every pipeline verifies clean" if report.ok else "recovered, but verification failed")
    return 0 if report.ok else 1
