"""``cdc-pipeline load run|status``: the bulk initial load of a source with ``initial_load: bulk``.

``run`` copies every captured table from the replication slot's exported snapshot into the targets
(:func:`pipeline.control.bulkload.run.run_bulk_load`), then registers the source's Debezium connector
with ``snapshot.mode=no_data`` and waits until it is healthy, as ``connectors apply`` does. While it
runs it serves ``/metrics`` on ``metrics.port`` (when ``metrics.enabled``).

Exit codes: 0 loaded (or already loaded) and the connector healthy; 1 the load was refused or failed,
a service was unreachable, or the connector is not healthy; 2 invalid configuration or arguments.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
import sqlalchemy.exc
import typer

from connectors import source_prep
from connectors.connect_client import ApplyAction, ConnectClient, ConnectError, settled
from connectors.debezium import ConnectorConfigError, build_connector_config
from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.cli.connectors_cmd import SETTLE_DELAY_S, STABLE_S, echo_status
from pipeline.cli.progress import make_console
from pipeline.cli.source_cmd import SourceOption, select_sources
from pipeline.control.bulkload.model import BulkLoadError, LoadReport
from pipeline.control.bulkload.progress import BulkProgress
from pipeline.control.bulkload.run import run_bulk_load
from pipeline.control.bulkload.state import all_done
from pipeline.control.bulkload.status import load_status
from pipeline.core.health import HealthServer
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import TransientSinkError

app = typer.Typer(
    help="Bulk initial load of sources with initial_load: bulk (parallel COPY, then streaming).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


class ConnectorUnhealthyError(Exception):
    """The connector was registered but did not become healthy (its status was printed)."""


def bulk_sources(settings: Settings, name: str | None) -> list[SourceSettings]:
    """The selected sources; exits 2 when a named one does not use ``initial_load: bulk``; without
    ``--source``, the bulk ones (exit 2 when there is none)."""
    chosen = select_sources(settings, name)
    if name is not None and chosen[0].initial_load != "bulk":
        fail([f"source {name} uses initial_load: {chosen[0].initial_load}: set initial_load: bulk to load it"])
    bulk = [s for s in chosen if s.initial_load == "bulk"]
    if not bulk:
        fail(["no source uses initial_load: bulk (set it on a source under 'sources')"])
    return bulk


def register_connector(settings: Settings, src: SourceSettings, timeout_s: float, to_stderr: bool) -> None:
    """Create or update ``src``'s connector (``snapshot.mode=no_data``) and wait until it is RUNNING
    with every task RUNNING. Raises ConnectorUnhealthyError (status printed to stderr) when it is not healthy,
    ConnectError when Connect refuses or is unreachable."""
    config = build_connector_config(src)
    name = src.resolved_connector_name
    with ConnectClient(settings.connect) as client:
        applied = client.apply(name, config)
        typer.echo(f"{name}: {applied.action.value} (snapshot.mode={config['snapshot.mode']})", err=to_stderr)
        if applied.action is not ApplyAction.UNCHANGED:
            time.sleep(min(SETTLE_DELAY_S, timeout_s))
        status = client.wait_for(name, settled, timeout_s=timeout_s, stable_s=STABLE_S)
    if not status.healthy:
        with contextlib.redirect_stdout(sys.stderr):
            echo_status(status)
        raise ConnectorUnhealthyError(f"{name}: {status.state} after registration (see above)")


@contextlib.contextmanager
def metrics_endpoint(settings: Settings) -> Iterator[HealthServer | None]:
    """``/metrics`` on ``metrics.host:metrics.port`` for the duration, when metrics are enabled."""
    if not settings.metrics.enabled:
        yield None
        return
    server = HealthServer(settings.metrics.host, settings.metrics.port, lambda: (True, {"command": "load run"}))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def report_doc(report: LoadReport) -> dict[str, Any]:
    """The JSON form of a LoadReport (``--json``): LSN as text ``X/Y`` as well as bytes."""
    lsn = report.consistent_lsn
    return {
        "source": report.source,
        "slot_name": report.slot_name,
        "consistent_lsn": lsn,
        "consistent_point": f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}",
        "already_loaded": report.already_loaded,
        "recovered": report.recovered,
        "rows": report.rows,
        "copy_seconds": round(report.copy_seconds, 3),
        "rows_per_s": round(report.rows_per_s, 1),
        "tables": [
            {
                "pipeline": t.pipeline,
                "table": t.table,
                "rows": t.rows,
                "seconds": round(t.seconds, 3),
                "rows_per_s": round(t.rows / t.seconds, 1) if t.seconds > 0 else 0.0,
                "path": t.path,
            }
            for t in report.tables
        ],
    }


def report_lines(report: LoadReport) -> list[str]:
    """The text form of a LoadReport: one line per table, then the totals."""
    if report.already_loaded:
        return [f"source {report.source}: already loaded (slot {report.slot_name}); connector registered"]
    lines = [
        f"source {report.source}: slot {report.slot_name}, consistent point {report_doc(report)['consistent_point']}"
    ]
    if report.recovered:
        lines.append("  an interrupted load was cleaned up first (old slot dropped, its tables truncated)")
    width = max((len(f"{t.pipeline} {t.table}") for t in report.tables), default=10)
    for t in report.tables:
        rate = t.rows / t.seconds if t.seconds > 0 else 0.0
        label = f"{t.pipeline} {t.table}"
        lines.append(f"  {label:<{width}}  {t.rows:>12,} rows  {t.seconds:8.1f} s  {rate:>10,.0f} rows/s  ({t.path})")
    lines.append(f"bulk load: {report.rows:,} rows in {report.copy_seconds:.1f} s ({report.rows_per_s:,.0f} rows/s)")
    return lines


def _load_one(settings: Settings, src: SourceSettings, jobs: int | None, as_json: bool, timeout_s: float) -> LoadReport:
    console = make_console(sys.stderr if as_json else sys.stdout)
    with BulkProgress(console) as progress:
        return run_bulk_load(
            settings,
            src,
            jobs=jobs,
            progress=progress,
            register=lambda: register_connector(settings, src, timeout_s, to_stderr=as_json),
        )


@app.command()
def run(
    config: ConfigOption = None,
    source: SourceOption = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", min=1, max=32, help="Parallel copy sessions (default: bulk_load.jobs).")
    ] = None,
    as_json: JsonOption = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Seconds to wait for the connector.")] = 90.0,
) -> None:
    """Copy every table of each bulk source from an exported snapshot, then register its connector.

    Progress per table (rows, rows/s, percent, ETA) goes to the terminal as bars, or as plain lines
    when stdout is not a terminal (to stderr with --json). A load interrupted earlier is cleaned up and
    restarted; a completed one is not redone (the connector is only registered).
    """
    settings = load_or_exit(config)
    sources = bulk_sources(settings, source)
    docs: list[dict[str, Any]] = []
    with metrics_endpoint(settings):
        for src in sources:
            try:
                report = _load_one(settings, src, jobs, as_json, timeout)
            except BulkLoadError as exc:
                fail([f"load refused: {exc}"], code=1)
            except ConnectorUnhealthyError as exc:
                fail([f"connector not healthy: {exc}"], code=1)
            except (ConnectError, ConnectorConfigError) as exc:
                fail([f"{src.resolved_connector_name}: {exc}"], code=1)
            except (psycopg.Error, sqlalchemy.exc.DBAPIError, TransientSinkError) as exc:
                text = source_prep.redactor(src)(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
                fail([f"load of source {src.name} failed: {type(exc).__name__}: {text}"], code=1)
            if as_json:
                docs.append(report_doc(report))
            else:
                for line in report_lines(report):
                    typer.echo(line)
    if as_json:
        typer.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))


@app.command()
def status(config: ConfigOption = None, source: SourceOption = None, as_json: JsonOption = False) -> None:
    """Print each bulk source's load state per pipeline (no load recorded, copying, done).

    Exit 1 when a selected source's load is not done.
    """
    settings = load_or_exit(config)
    sources = bulk_sources(settings, source)
    out: dict[str, dict[str, Any]] = {}
    code = 0
    for src in sources:
        try:
            states = load_status(settings, src)
        except (psycopg.Error, sqlalchemy.exc.DBAPIError, TransientSinkError) as exc:
            fail([f"cannot read the load state of source {src.name}: {type(exc).__name__}: {exc}"], code=1)
        done = all_done(states)
        code = code if done else 1
        out[src.name] = {"done": done, "pipelines": states}
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
    else:
        for name, entry in out.items():
            typer.echo(f"source {name}: {'loaded' if entry['done'] else 'not loaded'}")
            for pipe, state in entry["pipelines"].items():
                typer.echo(f"  {pipe}: {_state_text(state)}")
    raise typer.Exit(code)


def _state_text(state: dict[str, Any] | None) -> str:
    """``done, 100,011 rows in 3.2 s, slot cdc_app`` / ``copying, slot cdc_app`` / ``no load recorded``."""
    if state is None:
        return "no load recorded"
    text = str(state.get("status", "?"))
    rows = state.get("rows")
    if isinstance(rows, dict):
        text += f", {sum(int(n) for n in rows.values()):,} rows"
        if isinstance(state.get("seconds"), int | float):
            text += f" in {float(state['seconds']):.1f} s"
    if state.get("slot"):
        text += f", slot {state['slot']}"
    return text
