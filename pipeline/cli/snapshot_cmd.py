"""``cdc-pipeline snapshot start|stop|pause|resume|status|coordinate``: Debezium ad hoc snapshots
through the source's signal table and the durable request queue (:mod:`pipeline.control.snapshot`;
``docs/design/snapshot.md``).

``start`` queues a request and signals it at once when no other request of the source is in
flight (the queue guarantees one at a time); with ``--wait`` it also follows the notifications
until the snapshot ends. ``coordinate`` runs the coordinator (notifications, automatic
snapshots of newly captured tables, lag throttling, next request) in the foreground until
SIGTERM/SIGINT, for deployments that do not run it inside ``cdc-pipeline run``.

Exit codes: 0 success; 1 the operation failed (database or Kafka unreachable, snapshot failed
or stopped, nothing to pause/resume/stop, timeout); 2 invalid configuration or arguments.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Annotated, Any

import psycopg
import typer

from pipeline.cli.common import ConfigOption, fail, fail_unreachable, load_or_exit
from pipeline.cli.progress import ProgressView, make_console
from pipeline.cli.source_cmd import SourceOption, select_sources
from pipeline.control.snapshot.model import Condition, RequestState, SnapshotKind, SnapshotRequest, SnapshotSettings
from pipeline.control.snapshot.progress import request_progress, table_state
from pipeline.control.snapshot.sql import NothingToSignalError, SnapshotQueue, estimated_rows
from pipeline.control.snapshot.wiring import build_coordinator
from pipeline.core.logs import configure_logging, get_logger
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings


class _Log:
    """Resolves the structlog logger at each call, so records follow the configuration made
    after import (``get_logger().bind()`` at import time would freeze structlog's defaults:
    console format on stdout, which would corrupt ``--json`` output)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_logger(__name__), name)


log = _Log()

_SNAPSHOT_DEFAULTS = SnapshotSettings()

app = typer.Typer(
    help="Debezium ad hoc snapshots (incremental or blocking) through the signal table, with a durable queue.",
    no_args_is_help=True,
)

TablesArgument = Annotated[list[str], typer.Argument(help="Tables to snapshot, 'schema.table' (of the source).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait with --wait.")]


def one_source(settings: Settings, name: str | None) -> SourceSettings:
    """The source a command acts on: ``--source``, or the only one. Exits 2 otherwise."""
    sources = select_sources(settings, name)
    if len(sources) != 1:
        fail([f"--source: several sources are defined ({', '.join(s.name for s in sources)}): name one"])
    return sources[0]


def _parse_filters(values: list[str], tables: list[str]) -> list[Condition]:
    conditions: list[Condition] = []
    for value in values:
        table, sep, text = value.partition("=")
        if not sep or not text.strip():
            fail([f"--filter {value!r}: write 'schema.table=SQL condition'"])
        if table not in tables:
            fail([f"--filter {value!r}: {table} is not among the tables to snapshot"])
        conditions.append(Condition(table, text.strip()))
    return conditions


def _echo_request(request: SnapshotRequest) -> None:
    paused = f", paused by {request.paused_by}" if request.paused_by else ""
    typer.echo(
        f"{request.id}  {request.state.value}{paused}  {request.kind.value}  {request.origin}  "
        f"{', '.join(request.tables)}"
    )
    for c in request.conditions:
        typer.echo(f"    filter {c.table}: {c.filter}")
    for table, p in request.progress.items():
        keys = f" last key {p.last_key} of {p.max_key}" if p.last_key is not None or p.max_key is not None else ""
        rows = f", {p.rows_scanned} rows" if p.rows_scanned is not None else ""
        typer.echo(f"    {table}: {p.state.value}{keys}{rows}")
    if request.detail:
        typer.echo(f"    {request.detail}")


def snapshot_progress(
    view: ProgressView, estimates: Mapping[str, float | None]
) -> Callable[[list[SnapshotRequest]], None]:
    """An ``on_poll`` callback drawing a request's rows done/estimated on ``view`` (ETA by the view)."""

    def show(found: list[SnapshotRequest]) -> None:
        for r in found:
            p = request_progress(r, estimates)
            done = sum(1 for t in r.tables if table_state(r, t).terminal)
            view.update(p.rows_done, p.rows_total, f"{r.state.value}, {done}/{len(r.tables)} table(s)")

    return show


def wait_with_progress(
    settings: Settings,
    src: SourceSettings,
    request: SnapshotRequest,
    estimates: Mapping[str, float | None],
    timeout: float,
    to_stderr: bool,
) -> SnapshotRequest:
    """Follow ``request`` with a coordinator until it ends or ``timeout`` s pass; shows progress."""
    coordinator = build_coordinator(settings, src)
    console = make_console(sys.stderr if to_stderr else sys.stdout)
    try:
        with ProgressView(f"snapshot {src.name}", "rows", console) as view:
            found = coordinator.wait_for([request.id], timeout, on_poll=snapshot_progress(view, estimates))
    finally:
        coordinator.stop(5.0)
    return found[0] if found else request


@app.command()
def start(
    tables: TablesArgument,
    config: ConfigOption = None,
    source: SourceOption = None,
    blocking: Annotated[bool, typer.Option("--blocking", help="A blocking snapshot (streaming pauses).")] = False,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="'schema.table=SQL condition' restricting that table's rows; repeatable."),
    ] = None,
    surrogate_key: Annotated[
        str | None, typer.Option("--surrogate-key", help="Column to chunk by instead of the primary key.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the snapshot until it ends.")] = False,
    timeout: TimeoutOption = 3600.0,
    json_out: JsonOption = False,
) -> None:
    """Queue a snapshot of TABLES and signal it when no other snapshot of the source is in flight."""
    settings = load_or_exit(config)
    src = one_source(settings, source)
    unknown = [t for t in tables if t not in src.tables]
    if unknown:
        fail([f"not captured by source {src.name}: {', '.join(unknown)} (see sources[{src.name}].tables)"])
    conditions = _parse_filters(filters or [], tables)
    kind = SnapshotKind.BLOCKING if blocking else SnapshotKind.INCREMENTAL
    queue = SnapshotQueue(src)
    estimates: dict[str, float | None] = {}
    try:
        try:
            request = queue.enqueue(tables, kind, conditions, surrogate_key, origin="cli")
        except ValueError as exc:
            fail([str(exc)])
        queue.send_next()
        current = queue.get(request.id) or request
        if wait:
            estimates = {t: estimated_rows(queue.connection(), t) for t in tables}
    except psycopg.Error as exc:
        fail([f"snapshot queue: {type(exc).__name__}: {str(exc).strip()}"], code=1)
    finally:
        queue.close()
    if wait:
        current = wait_with_progress(settings, src, current, estimates, timeout, json_out)
    if json_out:
        typer.echo(json.dumps(current.to_dict(), indent=2))
    else:
        _echo_request(current)
    if wait and current.state is not RequestState.COMPLETED:
        raise typer.Exit(1)


@app.command()
def stop(
    config: ConfigOption = None,
    source: SourceOption = None,
    request_id: Annotated[
        str | None, typer.Option("--id", help="Only this request (default: the running one and all queued).")
    ] = None,
) -> None:
    """Stop the in-flight incremental snapshot (stop-snapshot signal) and drop queued requests."""
    settings = load_or_exit(config)
    src = one_source(settings, source)
    rid: uuid.UUID | None = None
    if request_id is not None:
        try:
            rid = uuid.UUID(request_id)
        except ValueError:
            fail([f"--id {request_id!r} is not a UUID"])
    queue = SnapshotQueue(src)
    try:
        acted = queue.stop(rid)
    except psycopg.Error as exc:
        fail([f"snapshot queue: {type(exc).__name__}: {str(exc).strip()}"], code=1)
    finally:
        queue.close()
    if not acted:
        fail(["nothing to stop (no queued request, and no incremental snapshot in flight)"], code=1)
    for request in acted:
        _echo_request(request)


def _pause_resume(config: ConfigOption, source: str | None, pause: bool) -> None:
    settings = load_or_exit(config)
    src = one_source(settings, source)
    queue = SnapshotQueue(src)
    try:
        request = queue.pause(by="user") if pause else queue.resume()
    except NothingToSignalError as exc:
        fail([str(exc)], code=1)
    except psycopg.Error as exc:
        fail([f"snapshot queue: {type(exc).__name__}: {str(exc).strip()}"], code=1)
    finally:
        queue.close()
    _echo_request(request)


@app.command()
def pause(config: ConfigOption = None, source: SourceOption = None) -> None:
    """Pause the running incremental snapshot (pause-snapshot signal); the throttle leaves it paused."""
    _pause_resume(config, source, pause=True)


@app.command()
def resume(config: ConfigOption = None, source: SourceOption = None) -> None:
    """Resume the paused incremental snapshot (resume-snapshot signal)."""
    _pause_resume(config, source, pause=False)


@app.command()
def status(
    config: ConfigOption = None,
    source: SourceOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest requests shown per source.")] = 20,
    json_out: JsonOption = False,
) -> None:
    """Show the snapshot requests of the source(s): state, per-table progress, detail."""
    settings = load_or_exit(config)
    out: dict[str, list[dict[str, object]]] = {}
    for src in select_sources(settings, source):
        queue = SnapshotQueue(src)
        try:
            requests = queue.recent(limit)
        except psycopg.OperationalError as exc:  # the source does not answer
            fail_unreachable(f"source {src.name} (PostgreSQL)", f"{src.host}:{src.port}", exc)
        except psycopg.Error as exc:
            fail([f"{src.name}: snapshot queue: {type(exc).__name__}: {str(exc).strip()}"], code=1)
        finally:
            queue.close()
        if json_out:
            out[src.name] = [r.to_dict() for r in requests]
            continue
        typer.echo(f"source {src.name}: {len(requests)} request(s)")
        for request in requests:
            _echo_request(request)
    if json_out:
        typer.echo(json.dumps(out, indent=2))


@app.command()
def coordinate(
    config: ConfigOption = None,
    source: SourceOption = None,
    interval_s: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = (
        _SNAPSHOT_DEFAULTS.interval_s
    ),
    max_consumer_lag: Annotated[
        int | None, typer.Option("--max-consumer-lag", help="Pause snapshots above this many messages behind.")
    ] = _SNAPSHOT_DEFAULTS.max_consumer_lag,
    max_wal_retained: Annotated[
        int | None, typer.Option("--max-wal-retained-bytes", help="Pause snapshots above this slot WAL (bytes).")
    ] = _SNAPSHOT_DEFAULTS.max_wal_retained_bytes,
    auto: Annotated[
        bool, typer.Option("--auto/--no-auto", help="Snapshot tables the connector starts capturing.")
    ] = True,
    capture_settle_s: Annotated[
        float, typer.Option("--capture-settle-s", min=0, help="Seconds a new table must be captured first.")
    ] = _SNAPSHOT_DEFAULTS.capture_settle_s,
) -> None:
    """Run the snapshot coordinator(s) in the foreground until SIGTERM/SIGINT."""
    settings = load_or_exit(config)
    cfg = SnapshotSettings(
        interval_s=interval_s,
        max_consumer_lag=max_consumer_lag,
        max_wal_retained_bytes=max_wal_retained,
        auto_snapshot_new_tables=auto,
        capture_settle_s=capture_settle_s,
    )
    coordinators = [build_coordinator(settings, src, cfg) for src in select_sources(settings, source)]
    done = threading.Event()

    def stop_all(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        done.set()

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for coordinator in coordinators:
            coordinator.start()
        log.info("snapshot coordinators running", sources=[c.source.name for c in coordinators])
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for coordinator in coordinators:
            coordinator.stop(10.0)


if __name__ == "__main__":  # ``python -m pipeline.cli.snapshot_cmd`` until the command is registered
    configure_logging("json", "info")
    app()
