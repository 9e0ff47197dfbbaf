"""``cdc-pipeline source check|prepare``: make a PostgreSQL source ready for Debezium.

Exit codes: 0 every check passed (warnings allowed) / preparation done; 1 a check failed or
preparation could not be done; 2 invalid configuration or unknown ``--source``.
"""

from __future__ import annotations

import json
from typing import Annotated

import psycopg
import typer

from connectors import source_prep
from connectors.connect_client import ConnectClient, ConnectError, ConnectorStatus, RetryPolicy
from connectors.debezium import ConnectorConfigError
from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.control.recovery import Diagnosis, inspect
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings

app = typer.Typer(
    help="Check and prepare PostgreSQL sources (wal_level, slots, privileges, replica identity, publication).",
    no_args_is_help=True,
)

SourceOption = Annotated[
    str | None, typer.Option("--source", "-s", help="Only this source (a name under 'sources'); default: all.")
]


def select_sources(settings: Settings, name: str | None) -> list[SourceSettings]:
    """The sources a command acts on: the one named ``name``, or all. Exits 2 when there is none."""
    if not settings.sources:
        fail(["the configuration defines no sources"])
    if name is None:
        return list(settings.sources)
    try:
        return [settings.source(name)]
    except KeyError:
        fail([f"--source: unknown source {name!r} (defined: {', '.join(s.name for s in settings.sources)})"])


def echo_check(result: source_prep.CheckResult) -> None:
    """Print one check as ``  PASS name: detail`` with an indented ``fix:`` block when there is one."""
    typer.echo(f"  {result.level} {result.name}: {result.detail}")
    if result.fix and (not result.ok or result.warning):
        lines = result.fix.splitlines()
        typer.echo(f"       fix: {lines[0]}")
        for line in lines[1:]:
            typer.echo(f"            {line}")


def echo_diagnosis(diagnosis: Diagnosis, err: bool = False) -> None:
    """Print a lost connector position in one line, then its fix."""
    typer.echo(f"  {diagnosis.line()}", err=err)
    typer.echo(f"       fix: {diagnosis.fix}", err=err)


def position_check(settings: Settings, src: SourceSettings) -> source_prep.CheckResult | None:
    """The ``connector position`` check: whether the connector's stored offset can still be
    streamed from this source's slot (Kafka Connect offsets vs ``pg_replication_slots``).

    None when Connect cannot be reached quickly or has no such connector (nothing to check).
    """
    quick = RetryPolicy(max_attempts=2, max_elapsed_s=5.0)
    try:
        with ConnectClient(settings.connect, retry=quick) as client:
            status: ConnectorStatus | None = client.status(src.resolved_connector_name)
            diagnosis = inspect(src, client, status)
    except ConnectError:
        return None
    if diagnosis is None:
        return source_prep.CheckResult("connector position", True, "the stored offset can be streamed from the slot")
    return source_prep.CheckResult("connector position", False, diagnosis.line(), diagnosis.fix)


def _header(src: SourceSettings) -> str:
    return f"source {src.name} ({src.user}@{src.host}:{src.port}/{src.database})"


@app.command()
def check(
    config: ConfigOption = None,
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    check_connector: Annotated[
        bool,
        typer.Option(
            "--check-connector/--no-check-connector",
            help="Also compare the connector's stored offset (Kafka Connect) with the slot.",
        ),
    ] = True,
) -> None:
    """Run every check; print PASS/WARN/FAIL with the fix for each failure. Exit 1 when one fails.

    With Kafka Connect reachable, also checks that the connector's stored position still exists
    on the source (a missing, lost or re-created slot needs: cdc-pipeline connectors recover).
    """
    settings = load_or_exit(config)
    failed = False
    report: list[dict[str, object]] = []
    for src in select_sources(settings, source):
        results = source_prep.check(src)
        position = position_check(settings, src) if check_connector and results[0].ok else None
        if position is not None:
            results.append(position)
        failed |= any(not r.ok for r in results)
        if as_json:
            report.append(
                {
                    "source": src.name,
                    "ok": all(r.ok for r in results),
                    "checks": [
                        {"name": r.name, "level": r.level, "ok": r.ok, "detail": r.detail, "fix": r.fix}
                        for r in results
                    ],
                }
            )
            continue
        typer.echo(_header(src))
        for result in results:
            echo_check(result)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    raise typer.Exit(1 if failed else 0)


@app.command()
def prepare(
    config: ConfigOption = None,
    source: SourceOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print the SQL that would run (e.g. for a DBA).")
    ] = False,
) -> None:
    """Create the control schema, heartbeat and signal tables and the publication (idempotent), then check.

    Runs as the source's user, which needs CREATE on the database and ownership of the captured
    tables (or superuser); with --dry-run the SQL is printed instead.
    """
    settings = load_or_exit(config)
    failed = False
    for src in select_sources(settings, source):
        typer.echo(_header(src))
        try:
            if dry_run:
                with source_prep.connect(src, "cdc-pipeline source prepare") as conn:
                    steps = source_prep.plan(src, conn)
                for line in source_prep.format_steps(steps) or ["-- nothing to do"]:
                    typer.echo(f"  {line}")
                continue
            steps = source_prep.prepare(src)
        except source_prep.PrepareError as exc:
            typer.echo(f"  FAIL prepare: {exc}", err=True)
            failed = True
            continue
        except ConnectorConfigError as exc:
            fail([f"sources[{src.name}]: {exc}"])
        except psycopg.Error as exc:  # from --dry-run's own connection: shown redacted, no traceback
            typer.echo(f"  FAIL prepare: {source_prep.redactor(src)(str(exc).strip())}", err=True)
            failed = True
            continue
        for step in steps:
            typer.echo(f"  done: {step.description}")
        if not steps:
            typer.echo("  nothing to do: already prepared")
        results = source_prep.check(src)
        for result in results:
            echo_check(result)
        failed |= any(not r.ok for r in results)
    raise typer.Exit(1 if failed else 0)
