"""One verification of a pipeline: catch up, plan and compare every table, recheck what
differed row by row until it concludes, and store the result in the target
(docs/design/verify.md)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from connectors.debezium import TableRef, change_topic
from pipeline.control.verify.catchup import wait_caught_up
from pipeline.control.verify.compare import Pending, compare_keyed, compare_keyless, recount_settled, settle
from pipeline.control.verify.model import CatchUp, Status, TableResult, VerifyResult, VerifySettings, to_records
from pipeline.control.verify.plan import pipeline_tables, plan_table
from pipeline.control.verify.rounds import converge
from pipeline.control.verify.source import connect_source
from pipeline.core.events import TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import Checksum, ChecksumSide, KeyBound, KeyRange, RowImage, Target, TargetVerification
from sinks.factory import make_target


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    """Where a verification stands, for progress displays (``on_progress`` of :func:`verify_pipeline`).

    ``table`` is the table being compared; ``chunks_total`` is an estimate (the source's
    ``pg_class.reltuples`` divided by the chunk size) until each table's comparison ends, when its
    real chunk count replaces it; ``rows`` counts the source rows compared so far.
    """

    table: TableId
    tables_done: int
    tables_total: int
    chunks_done: int
    chunks_total: int
    rows: int


ProgressCallback = Callable[[VerifyProgress], None]


class _Tally:
    """Running counts behind :class:`VerifyProgress`; reports each change to ``callback``."""

    def __init__(self, callback: ProgressCallback, estimates: dict[TableId, int]) -> None:
        self.callback = callback
        self.estimates = estimates
        self.table = next(iter(estimates), TableId("", ""))
        self.tables_done = 0
        self.chunks_done = 0
        self.rows = 0

    def _emit(self) -> None:
        total = max(sum(self.estimates.values()), self.chunks_done)
        self.callback(
            VerifyProgress(self.table, self.tables_done, len(self.estimates), self.chunks_done, total, self.rows)
        )

    def start(self, table: TableId) -> None:
        self.table = table
        self._emit()

    def chunks(self, chunks: int, rows: int) -> None:
        self.chunks_done += chunks
        self.rows += rows
        self._emit()

    def finish(self, result: TableResult, counted: int) -> None:
        """``result``'s table is compared: its real chunk count replaces the estimate."""
        self.estimates[result.table] = max(result.chunks, counted)
        self.chunks_done += max(0, result.chunks - counted)
        self.tables_done += 1
        self._emit()


class _CountedSide:
    """A :class:`sinks.base.ChecksumSide` that reports each chunk (or set of buckets) it computed."""

    def __init__(self, inner: ChecksumSide, report: Callable[[int, int], None]) -> None:
        self.inner = inner
        self.report = report
        self.counted = 0

    def chunk(self, key_range: KeyRange) -> Checksum:
        checksum = self.inner.chunk(key_range)
        self.counted += 1
        self.report(1, checksum[0])
        return checksum

    def buckets(self, buckets: int) -> dict[int, Checksum]:
        found = self.inner.buckets(buckets)
        self.counted += buckets
        self.report(buckets, sum(c[0] for c in found.values()))
        return found

    def count(self) -> int:
        return self.inner.count()

    def rows(self, key_range: KeyRange, keys: Sequence[KeyBound] | None = None) -> list[RowImage]:
        return self.inner.rows(key_range, keys)

    def digests(self, key_range: KeyRange) -> list[RowImage]:
        return self.inner.digests(key_range)

    def bucket_rows(self, buckets: int, selected: Sequence[int]) -> list[RowImage]:
        return self.inner.bucket_rows(buckets, selected)


def _estimated_chunks(sconn: psycopg.Connection[Any], table: TableId, chunk_size: int) -> int:
    """``ceil(reltuples / chunk_size)``, at least 1 (0 rows known before the first ANALYZE)."""
    row = sconn.execute(
        "SELECT greatest(c.reltuples, 0)::float8 AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (table.schema, table.table),
    ).fetchone()
    rows = float(row["n"]) if row else 0.0  # connect_source returns dict rows
    return max(1, math.ceil(rows / max(1, chunk_size)))


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
    on_chunks: Callable[[int, int], None] | None = None,
    numeric_text_exact: bool = False,
) -> tuple[TableResult, list[Pending]]:
    """Plan and compare one table; its result and the chunks that differed (to recheck).

    ``on_chunks(chunks, rows)`` is called as chunks are compared (``rows``: source rows in them).
    ``numeric_text_exact``: numeric columns compare by text (display scale), not by value.
    """
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
    if numeric_text_exact:
        plan = replace(plan, checks=replace(plan.checks, numeric_text_exact=True))
    src, tgt = verification.sides(sconn, plan.checks)
    counted: ChecksumSide = src if on_chunks is None else _CountedSide(src, on_chunks)
    if plan.keyless:
        diffs = compare_keyless(counted, tgt, chunk_size, result)
    else:
        diffs = compare_keyed(sconn, counted, tgt, plan, chunk_size, result)
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
    on_progress: ProgressCallback | None = None,
) -> VerifyResult:
    """Verify ``pipeline`` (all its tables, or ``tables`` given as ``schema.table``).

    ``target`` defaults to one built for the pipeline (closed afterwards). ``catch_up`` replaces
    :func:`pipeline.control.verify.catchup.wait_caught_up` (tests; return ``CatchUp(True, True, 0)``
    to skip waiting). Raises KeyError for a table the pipeline does not apply, psycopg.Error
    when the source is unreachable, TransientSinkError (or a driver error) when the target is,
    :class:`sinks.factory.UnsupportedTargetError` for an unknown target scheme. Per-table
    problems are results, not exceptions. ``on_progress`` receives a :class:`VerifyProgress`
    before each table and after each compared chunk (rechecks are not counted).
    """
    cfg = config or VerifySettings()
    source = settings.source(pipeline.source)
    selected = select_tables(settings, pipeline, tables)
    topics = {t: change_topic(source, TableRef(t.schema, t.table)) for t in selected}
    with pipeline_target(pipeline, "verify", target) as tgt:

        def catch(max_wait_s: float) -> CatchUp:
            if catch_up is not None:
                return catch_up()
            return wait_caught_up(settings, pipeline, tgt, max_wait_s)

        started = datetime.now(UTC)
        first = catch(cfg.max_wait_s)
        results: list[TableResult] = []
        pending: list[Pending] = []
        verification = tgt.verification(cfg.statement_timeout_s)
        try:
            with connect_source(source, "verify", cfg.statement_timeout_s) as sconn:
                tally = None
                if on_progress is not None:
                    tally = _Tally(on_progress, {t: _estimated_chunks(sconn, t, cfg.chunk_size) for t in selected})
                for table in selected:
                    if tally is None:
                        result, diffs = verify_table(
                            sconn, verification, pipeline, table, cfg.chunk_size, None, cfg.numeric_text_exact
                        )
                    else:
                        result, diffs = _verify_counted(
                            sconn, verification, pipeline, table, cfg.chunk_size, tally, cfg.numeric_text_exact
                        )
                    results.append(result)
                    pending.extend(diffs)
                last = converge(pending, catch, cfg, first, sconn)
                recount_settled(pending)
        finally:
            verification.close()
    settle(results, last, topics)
    return VerifyResult(pipeline.name, source.name, started, datetime.now(UTC), last, results, cfg.chunk_size)


def _verify_counted(
    sconn: psycopg.Connection[Any],
    verification: TargetVerification,
    pipeline: PipelineSettings,
    table: TableId,
    chunk_size: int,
    tally: _Tally,
    numeric_text_exact: bool = False,
) -> tuple[TableResult, list[Pending]]:
    counted = 0

    def on_chunks(chunks: int, rows: int) -> None:
        nonlocal counted
        counted += chunks
        tally.chunks(chunks, rows)

    tally.start(table)
    result, diffs = verify_table(sconn, verification, pipeline, table, chunk_size, on_chunks, numeric_text_exact)
    tally.finish(result, counted)
    return result, diffs


def store_result(target: Target, result: VerifyResult) -> None:
    """Store each table's result as the last one in ``target``'s ``<control_schema>.verify_results``
    (every backend), for :class:`pipeline.control.verify.readiness.CutoverMonitor` and other processes."""
    verification = target.verification()
    try:
        verification.store_results(result.pipeline, to_records(result))
    finally:
        verification.close()
