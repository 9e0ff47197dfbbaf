"""One verification of a pipeline: catch up, plan and compare every table, recheck what
differed, and store the result in the target (docs/design/verify.md)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from connectors.debezium import TableRef, change_topic
from pipeline.control.verify.catchup import wait_caught_up
from pipeline.control.verify.compare import Pending, compare_keyed, compare_keyless, recheck, settle
from pipeline.control.verify.model import CatchUp, Status, TableResult, VerifyResult, VerifySettings, to_records
from pipeline.control.verify.plan import pipeline_tables, plan_table
from pipeline.control.verify.source import connect_source
from pipeline.core.events import TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import Target, TargetVerification
from sinks.factory import make_target


@contextlib.contextmanager
def pipeline_target(pipeline: PipelineSettings, purpose: str, target: Target | None = None) -> Iterator[Target]:
    """``target``, or one built by :func:`sinks.factory.make_target` and closed on exit."""
    if target is not None:
        yield target
        return
    own = make_target(pipeline, purpose=purpose)
    try:
        yield own
    finally:
        own.close()


def select_tables(settings: Settings, pipeline: PipelineSettings, tables: Sequence[str] | None) -> list[TableId]:
    """The pipeline's tables, or those of ``tables`` (``schema.table``). Raises KeyError naming
    tables the pipeline does not apply."""
    selected = pipeline_tables(settings, pipeline)
    if not tables:
        return selected
    wanted = {TableId(*t.split(".", 1)) for t in tables}
    unknown = sorted(str(t) for t in wanted - set(selected))
    if unknown:
        raise KeyError(f"not tables of pipeline {pipeline.name}: {', '.join(unknown)}")
    return [t for t in selected if t in wanted]


def verify_table(
    sconn: psycopg.Connection[Any],
    verification: TargetVerification,
    pipeline: PipelineSettings,
    table: TableId,
    chunk_size: int,
) -> tuple[TableResult, list[Pending]]:
    """Plan and compare one table; its result and the chunks that differed (to recheck)."""
    t0 = time.monotonic()
    try:
        plan = plan_table(sconn, verification, pipeline, table)
    except LookupError as exc:
        return TableResult(table, None, Status.ERROR, str(exc)), []
    result = TableResult(
        table,
        plan.target,
        Status.MATCH,
        excluded=plan.excluded,
        renamed=plan.renamed,
        added=plan.added,
        keyless=plan.keyless,
    )
    if plan.not_verifiable is not None:
        result.status, result.reason = Status.NOT_VERIFIABLE, f"transforms change rows: {plan.not_verifiable}"
        return result, []
    result.not_in_source = plan.target_only
    if plan.problem is not None:
        status = Status.SCHEMA_MISMATCH if plan.missing else Status.ERROR
        result.status, result.reason = status, plan.problem
        return result, []
    src, tgt = verification.sides(sconn, plan.checks)
    if plan.keyless:
        diffs = compare_keyless(src, tgt, chunk_size, result)
    else:
        diffs = compare_keyed(sconn, src, tgt, plan, chunk_size, result)
    result.seconds = time.monotonic() - t0
    if not plan.target_exists and result.rows_source == 0:
        result.reason = "target table not created yet (the source table is empty)"
    return result, [Pending(result, plan, d, src, tgt) for d in diffs]


def verify_pipeline(
    settings: Settings,
    pipeline: PipelineSettings,
    tables: Sequence[str] | None = None,
    config: VerifySettings | None = None,
    catch_up: Callable[[], CatchUp] | None = None,
    target: Target | None = None,
) -> VerifyResult:
    """Verify ``pipeline`` (all its tables, or ``tables`` given as ``schema.table``).

    ``target`` defaults to one built for the pipeline (closed afterwards). ``catch_up`` replaces
    :func:`pipeline.control.verify.catchup.wait_caught_up` (tests; return ``CatchUp(True, True, 0)``
    to skip waiting). Raises KeyError for a table the pipeline does not apply, psycopg.Error
    when the source is unreachable, TransientSinkError (or a driver error) when the target is,
    :class:`sinks.factory.UnsupportedTargetError` for an unknown target scheme. Per-table
    problems are results, not exceptions.
    """
    cfg = config or VerifySettings()
    source = settings.source(pipeline.source)
    selected = select_tables(settings, pipeline, tables)
    topics = {t: change_topic(source, TableRef(t.schema, t.table)) for t in selected}
    with pipeline_target(pipeline, "verify", target) as tgt:
        catch = catch_up or (lambda: wait_caught_up(settings, pipeline, tgt, cfg.max_wait_s))
        started = datetime.now(UTC)
        first = catch()
        results: list[TableResult] = []
        pending: list[Pending] = []
        verification = tgt.verification(cfg.statement_timeout_s)
        try:
            with connect_source(source, "verify", cfg.statement_timeout_s) as sconn:
                for table in selected:
                    result, diffs = verify_table(sconn, verification, pipeline, table, cfg.chunk_size)
                    results.append(result)
                    pending.extend(diffs)
                last = recheck(pending, catch, cfg.recheck_attempts, first)
        finally:
            verification.close()
    settle(results, last, topics)
    return VerifyResult(pipeline.name, source.name, started, datetime.now(UTC), last, results, cfg.chunk_size)


def store_result(target: Target, result: VerifyResult) -> None:
    """Store each table's result as the last one in ``target``'s ``<control_schema>.verify_results``
    (every backend), for :class:`pipeline.control.verify.readiness.CutoverMonitor` and other processes."""
    verification = target.verification()
    try:
        verification.store_results(result.pipeline, to_records(result))
    finally:
        verification.close()
