"""``cdc-pipeline verify``: compare a pipeline's target with its source (counts and chunked
checksums), optionally repair the differing chunks, and store the result for cutover readiness.

Exit codes: 0 every table matches; 1 a mismatch, rows still in flight, a table that cannot be
verified (unless ``--allow-unverifiable``), or a database/Kafka that cannot be reached; 2 invalid
configuration or arguments.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
import sqlalchemy.exc
import typer

from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.cli.progress import ProgressView, make_console
from pipeline.control.snapshot.model import SnapshotRequest
from pipeline.control.verify.model import VerifyResult, VerifySettings, export_verify_metrics, format_result
from pipeline.control.verify.repair import RepairReport, repair_pipeline
from pipeline.control.verify.run import VerifyProgress, store_result, verify_pipeline
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import Target, TransientSinkError
from sinks.factory import UnsupportedTargetError, make_target

PipelineOption = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="Pipeline name (optional when there is one).")
]
TableOption = Annotated[
    list[str] | None,
    typer.Option("--table", "-t", help="Only this source table ('schema.table'); repeat for several. Default: all."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
RepairOption = Annotated[
    bool,
    typer.Option(
        "--repair",
        help="Delete target rows the source lacks and re-snapshot mismatched chunks (incremental snapshots "
        "filtered to their key ranges), then verify again.",
    ),
]
ChunkOption = Annotated[
    int | None, typer.Option("--chunk-size", min=1, help="Rows per compared chunk (default: verify.chunk_size).")
]
WaitOption = Annotated[
    float | None,
    typer.Option(
        "--max-wait-s", min=0, help="Seconds to wait for the pipeline to catch up (default: verify.max_wait_s)."
    ),
]
UnverifiableOption = Annotated[
    bool, typer.Option("--allow-unverifiable", help="Tables that cannot be verified do not fail the command.")
]
ExactNumericOption = Annotated[
    bool,
    typer.Option(
        "--exact-numeric",
        help="Compare numeric columns by their text, display scale included (1.50 differs from 1.5); "
        "default: verify.numeric_text_exact.",
    ),
]
StoreOption = Annotated[
    bool, typer.Option("--store/--no-store", help="Store the result in the target for cdc_cutover_ready.")
]
ProgressOption = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress",
        help="Show progress: a bar on a terminal, plain lines otherwise (on stderr with --json).",
    ),
]


def _say(line: str, json_out: bool) -> None:
    typer.echo(line, err=json_out)


def _settings(
    settings: Settings, chunk_size: int | None, max_wait_s: float | None, exact_numeric: bool = False
) -> VerifySettings:
    cfg = VerifySettings.from_config(settings.verify)
    if chunk_size is not None:
        cfg = dataclasses.replace(cfg, chunk_size=chunk_size)
    if max_wait_s is not None:
        cfg = dataclasses.replace(cfg, max_wait_s=max_wait_s)
    if exact_numeric:
        cfg = dataclasses.replace(cfg, numeric_text_exact=True)
    return cfg


def _report_repair(report: RepairReport, json_out: bool) -> None:
    for name, rows in sorted(report.deleted.items()):
        _say(f"  {name}: {rows} target row(s) absent from the source deleted", json_out)
    for name, why in sorted(report.skipped.items()):
        _say(f"  {name}: not repaired: {why}", json_out)
    if not report.completed:
        _say("  not every repair snapshot completed; verifying anyway", json_out)


def _verify_and_repair(
    settings: Settings,
    chosen: PipelineSettings,
    table: list[str] | None,
    cfg: VerifySettings,
    flags: tuple[bool, bool, bool, bool],
    progress: bool = False,
) -> tuple[VerifyResult, dict[str, Any]]:
    """Verify, and with ``repair`` repair and verify again; the final result and the JSON document.
    ``flags`` are ``(repair, store, json_out, allow_unverifiable)``; ``progress`` shows progress."""
    repair, store, json_out, allow_unverifiable = flags
    target = make_target(chosen, purpose="verify")
    shown = (progress, json_out)
    try:
        first = _run(settings, chosen, table, cfg, store, target, shown)
        if not (repair and any(t.mismatched for t in first.tables)):
            return first, first.to_dict()
        if not json_out:
            typer.echo(format_result(first, allow_unverifiable))
        _say("repairing mismatched chunks...", json_out)

        def repair_progress(requests: list[SnapshotRequest]) -> None:
            states = ", ".join(f"{r.id}: {r.state.value}" for r in requests)
            _say(f"  snapshot requests: {states}", json_out)

        report = repair_pipeline(settings, chosen, first, cfg, on_progress=repair_progress, target=target)
        _report_repair(report, json_out)
        final = _run(settings, chosen, table, cfg, store, target, shown)
        return final, {**final.to_dict(), "before_repair": first.to_dict(), "repair": report.to_dict()}
    finally:
        target.close()


def verify_progress(view: ProgressView, started: float) -> Callable[[VerifyProgress], None]:
    """An ``on_progress`` callback drawing chunks done/total and rows/s on ``view``."""

    def show(event: VerifyProgress) -> None:
        elapsed = max(1e-6, time.monotonic() - started)
        detail = f"{event.table} (table {min(event.tables_done + 1, event.tables_total)}/{event.tables_total})"
        view.update(event.chunks_done, event.chunks_total, f"{detail}, {event.rows / elapsed:,.0f} rows/s")

    return show


def verify(
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    table: TableOption = None,
    json_out: JsonOption = False,
    repair: RepairOption = False,
    chunk_size: ChunkOption = None,
    max_wait_s: WaitOption = None,
    allow_unverifiable: UnverifiableOption = False,
    store: StoreOption = True,
    progress: ProgressOption = True,
    exact_numeric: ExactNumericOption = False,
) -> None:
    """Verify that the pipeline's target equals its source (counts + checksums of key-ordered chunks)."""
    settings = load_or_exit(config)
    try:
        chosen = settings.pipeline(pipeline)
    except KeyError as exc:
        fail([f"--pipeline: {exc.args[0]} (defined: {', '.join(p.name for p in settings.pipelines) or 'none'})"])
    cfg = _settings(settings, chunk_size, max_wait_s, exact_numeric)
    try:
        final, doc = _verify_and_repair(
            settings, chosen, table, cfg, (repair, store, json_out, allow_unverifiable), progress
        )
    except KeyError as exc:
        fail([f"--table: {exc.args[0]}"])
    except UnsupportedTargetError as exc:
        fail([str(exc)])
    except (psycopg.Error, sqlalchemy.exc.DBAPIError, TransientSinkError) as exc:
        fail([f"verification failed: {type(exc).__name__}: {str(exc).strip()}"], code=1)
    if json_out:
        typer.echo(json.dumps(doc, indent=2, default=str))
    else:
        typer.echo(format_result(final, allow_unverifiable))
    raise typer.Exit(final.exit_code(allow_unverifiable))


def _run(
    settings: Settings,
    pipeline: PipelineSettings,
    tables: list[str] | None,
    cfg: VerifySettings,
    store: bool,
    target: Target,
    progress: tuple[bool, bool] = (False, False),
) -> VerifyResult:
    """Verify once; ``progress`` is ``(show, to_stderr)``."""
    show, to_stderr = progress
    if not show:
        result = verify_pipeline(settings, pipeline, tables, cfg, target=target)
    else:
        console = make_console(sys.stderr if to_stderr else sys.stdout)
        with ProgressView(f"verify {pipeline.name}", "chunks", console) as view:
            result = verify_pipeline(
                settings, pipeline, tables, cfg, target=target, on_progress=verify_progress(view, time.monotonic())
            )
    export_verify_metrics(result)
    if store:  # every backend: cdc_cutover_ready reads them from the target
        store_result(target, result)
    return result
