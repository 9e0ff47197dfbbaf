"""``load run``: the bulk initial load of one source, end to end.

Under a session advisory lock on the source (:func:`~pipeline.control.bulkload.slot.take_load_lock`):

1. ``source prepare`` (the publication must exist before the slot, or the slot's first
   decoding would not see it);
2. the stored states (:mod:`pipeline.control.bulkload.state`): every pipeline ``done`` -> only
   ``register`` (refused when the connector is missing and so is the slot, or it is lost); an
   interrupted load -> cleaned up first; a fresh load refuses a registered connector, stored
   consumer offsets of a pipeline's group and non-empty target tables, and clears the leftover
   tombstones, truncation watermarks and row versions of its target tables;
3. per pipeline of the source, per table: the source catalog, the transforms compiled to SQL
   (:mod:`~pipeline.control.bulkload.sqlplan`) or the rows path, ctid chunks, the target table
   created by the sink's own DDL;
4. ``ACCESS SHARE`` locks on every source table to copy, held by a session of their own until the
   copies are done (no table rewrite can empty a table under the snapshot), then the slot created
   with an exported snapshot (:mod:`~pipeline.control.bulkload.slot`);
5. a pool of ``jobs`` threads; each opens one source session that imports the snapshot
   (REPEATABLE READ) and copies chunks one after another, each chunk one target transaction;
6. the slot checked (present, WAL not lost), every pipeline's state ``done``, the exporter and
   the table locks closed, then ``register`` (the Debezium
   connector with ``snapshot.mode=no_data`` on that slot: streaming starts at the slot's
   consistent point, so nothing is missed or applied twice).

Test hook: ``CDC_BULK_PAUSE_AFTER_ROWS=<n>`` makes every copy thread sleep for an hour once
``n`` rows were copied (so a test can ``kill -9`` the loader mid-table).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors.slots import drop_slot_when_free
from connectors.source_prep import PrepareError, prepare
from pipeline.control.bulkload import state as st
from pipeline.control.bulkload.catalog import read_source_table
from pipeline.control.bulkload.chunks import plan_chunks
from pipeline.control.bulkload.model import (
    BulkLoadError,
    CopyTask,
    ExportedSnapshot,
    LoadProgress,
    LoadReport,
    SourceTable,
    TableReport,
)
from pipeline.control.bulkload.pgcopy import copy_chunk_fast
from pipeline.control.bulkload.rows import copy_chunk_rows
from pipeline.control.bulkload.slot import (
    create_exported_slot,
    lock_source_tables,
    open_copy_session,
    take_load_lock,
)
from pipeline.control.bulkload.sqlplan import FastPlan, plan_fast, use_binary
from pipeline.core.events import TableId
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from pipeline.transform.rule import TransformConfigError
from pipeline.transform.transformer import Transformer, build_transformer
from sinks.base import PreparedTable, Sink, Target, TargetBulkLoad, open_bulk_load
from sinks.factory import make_sink, make_target

log = get_logger(__name__)

PAUSE_ENV = "CDC_BULK_PAUSE_AFTER_ROWS"
PAUSE_S = 3600.0


@dataclass(slots=True)
class _Pair:
    """One (pipeline, source table) to load, and its progress."""

    pipeline: PipelineSettings
    source: SourceTable
    target: TableId
    plan: FastPlan | None  # None: the rows path
    reason: str  # why the rows path ('' on the fast path)
    chunks: int
    prepared: PreparedTable | None = None
    binary: bool = False
    rows: int = 0
    done: int = 0
    started: float | None = None
    seconds: float = 0.0


class _NullProgress:
    def planned(self, pipeline: str, table: str, estimated_rows: int) -> None:
        """Ignored."""

    def copied(self, pipeline: str, table: str, rows: int) -> None:
        """Ignored."""

    def table_done(self, pipeline: str, table: str, rows: int, seconds: float) -> None:
        """Ignored."""


@dataclass(slots=True)
class _Run:
    """What the copy threads share."""

    source: SourceSettings
    snapshot: ExportedSnapshot
    progress: LoadProgress
    pause_after: int | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    copied: int = 0
    first: float | None = None
    last: float | None = None
    failed: BaseException | None = None


def _pipelines(settings: Settings, source: SourceSettings) -> list[PipelineSettings]:
    found = [p for p in settings.pipelines if p.source == source.name]
    if not found:
        raise BulkLoadError(f"source {source.name} has no pipeline: add one to 'pipelines' first")
    return found


def _tables(source: SourceSettings, pipeline: PipelineSettings) -> list[TableId]:
    return [TableId(*name.split(".", 1)) for name in (pipeline.tables or source.tables)]


def _plan_pair(
    conn: psycopg.Connection[Any], pipeline: PipelineSettings, transformer: Transformer, table: TableId, chunk_rows: int
) -> _Pair | None:
    """The pair of ``table`` for ``pipeline`` (None when its rules keep no snapshot read)."""
    try:
        catalog = read_source_table(conn, table)
    except LookupError as exc:
        raise BulkLoadError(f"{exc} (run `cdc-pipeline source check`)") from None
    src = catalog.table
    try:
        transformer.validate_table(table, src.key_columns, src.columns)
    except TransformConfigError as exc:
        raise BulkLoadError(f"pipelines[{pipeline.name}] transforms on {table}: {exc}") from None
    plan = plan_fast(transformer, src, catalog.formatted, catalog.typnames, pipeline.target.schema_name)
    if plan is None:
        return None
    count = len(plan_chunks(src.pages, src.estimated_rows, chunk_rows))
    if isinstance(plan, FastPlan):
        return _Pair(pipeline, src, plan.target, plan, "", count)
    target = transformer.target_for(table) or TableId(pipeline.target.schema_name, table.table)
    return _Pair(pipeline, src, target, None, plan, count)


def _plan(
    settings: Settings, source: SourceSettings, conn: psycopg.Connection[Any], bulks: dict[str, TargetBulkLoad]
) -> list[_Pair]:
    pairs: list[_Pair] = []
    for pipeline in _pipelines(settings, source):
        transformer = build_transformer(pipeline.transforms, pipeline.mask_salt)
        for table in _tables(source, pipeline):
            pair = _plan_pair(conn, pipeline, transformer, table, source.bulk_load.chunk_rows)
            if pair is None:
                continue
            if pair.plan is not None and not bulks[pipeline.name].supports_copy:
                pair.plan, pair.reason = None, "the target does not take COPY"
            if pair.plan is None:
                log.info("bulk load by rows", pipeline=pipeline.name, table=str(table), reason=pair.reason)
            pairs.append(pair)
    return pairs


def _prepare_targets(pairs: list[_Pair], bulks: dict[str, TargetBulkLoad], binary: bool) -> None:
    for pair in pairs:
        if pair.plan is None:
            continue
        cols = tuple(c.column for c in pair.plan.columns)
        pair.prepared = bulks[pair.pipeline.name].prepare_table(pair.target, cols, pair.plan.key_columns)
        pair.binary = use_binary(pair.plan, pair.prepared, binary)
        log.info(
            "bulk load table planned",
            pipeline=pair.pipeline.name,
            table=str(pair.target),
            format="binary" if pair.binary else "text",
            chunks=pair.chunks,
            estimated_rows=pair.source.estimated_rows,
        )


# ---------------------------------------------------------------------------- copy threads


class _Worker:
    """One copy thread's sessions: the snapshot transaction and a target session per pipeline."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._source: psycopg.Connection[Any] | None = None
        self._bulks: dict[str, TargetBulkLoad] = {}
        self._salts: dict[str, bytes | None] = {}
        self._sinks: dict[str, tuple[Sink, Transformer]] = {}

    def source_conn(self) -> psycopg.Connection[Any]:
        if self._source is None:
            self._source = open_copy_session(self._run.source, self._run.snapshot)
        return self._source

    def bulk(self, pipeline: PipelineSettings) -> TargetBulkLoad:
        found = self._bulks.get(pipeline.name)
        if found is None:
            found = self._bulks[pipeline.name] = open_bulk_load(make_target(pipeline, purpose="bulk"))
            self._salts[pipeline.name] = build_transformer(pipeline.transforms, pipeline.mask_salt).salt
        return found

    def copy(self, pair: _Pair, task: CopyTask) -> int:
        if pair.plan is None:
            return self._copy_rows(pair, task)
        assert pair.prepared is not None
        bulk = self.bulk(pair.pipeline)
        return copy_chunk_fast(
            task, pair.plan, pair.prepared, pair.binary, self.source_conn(), bulk, self._salts[pair.pipeline.name]
        )

    def _copy_rows(self, pair: _Pair, task: CopyTask) -> int:
        name = pair.pipeline.name
        if name not in self._sinks:
            self._sinks[name] = (
                make_sink(pair.pipeline),
                build_transformer(pair.pipeline.transforms, pair.pipeline.mask_salt),
            )
        sink, transformer = self._sinks[name]
        table = str(pair.target)

        def report(rows: int) -> None:
            self._run.progress.copied(name, table, rows)

        return copy_chunk_rows(task, self.source_conn(), sink, transformer, report)

    def close(self) -> None:
        for sink, _ in self._sinks.values():
            with contextlib.suppress(Exception):
                sink.close()
        if self._source is not None:
            with contextlib.suppress(psycopg.Error):
                self._source.close()
        for bulk in self._bulks.values():
            bulk.close()


def _chunk_done(run: _Run, pair: _Pair, rows: int, started: float) -> None:
    now = time.monotonic()
    table = str(pair.target)
    with run.lock:
        pair.rows += rows
        pair.done += 1
        run.copied += rows
        run.last = now
        finished = pair.done == pair.chunks
        if finished:
            pair.seconds = now - (pair.started or started)
    if pair.plan is not None:  # the rows path reports as it reads
        run.progress.copied(pair.pipeline.name, table, rows)
    if finished:
        run.progress.table_done(pair.pipeline.name, table, pair.rows, pair.seconds)


def _maybe_pause(run: _Run) -> None:
    if run.pause_after is not None and run.copied >= run.pause_after:
        log.warning("bulk load paused by the test hook", env=PAUSE_ENV, rows=run.copied)
        time.sleep(PAUSE_S)


def _work(run: _Run, tasks: queue.Queue[tuple[_Pair, CopyTask]]) -> None:
    worker = _Worker(run)
    try:
        while run.failed is None:
            try:
                pair, task = tasks.get_nowait()
            except queue.Empty:
                return
            _maybe_pause(run)
            started = time.monotonic()
            with run.lock:
                run.first = run.first if run.first is not None else started
                pair.started = pair.started if pair.started is not None else started
            rows = worker.copy(pair, task)
            _chunk_done(run, pair, rows, started)
    except BaseException as exc:
        with run.lock:
            run.failed = run.failed or exc
    finally:
        worker.close()


def _copy_all(run: _Run, pairs: list[_Pair], jobs: int) -> None:
    """Copy every chunk of ``pairs`` with ``jobs`` threads, the largest tables first; re-raises
    the first failure after every thread stopped."""
    tasks: queue.Queue[tuple[_Pair, CopyTask]] = queue.Queue()
    for pair in sorted(pairs, key=lambda p: -p.source.estimated_rows):
        for chunk in plan_chunks(pair.source.pages, pair.source.estimated_rows, run.source.bulk_load.chunk_rows):
            tasks.put((pair, CopyTask(pair.pipeline, pair.source, chunk, run.snapshot)))
        run.progress.planned(pair.pipeline.name, str(pair.target), pair.source.estimated_rows)
    threads = [
        threading.Thread(target=_work, args=(run, tasks), name=f"bulk-copy-{i}", daemon=True)
        for i in range(max(1, min(jobs, tasks.qsize())))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if run.failed is not None:
        raise run.failed


# ---------------------------------------------------------------------------- the load


@dataclass(slots=True)
class _Targets:
    """Per pipeline name: its target and the bulk-load session on it."""

    targets: dict[str, Target] = field(default_factory=dict)
    bulks: dict[str, TargetBulkLoad] = field(default_factory=dict)


@contextmanager
def _bulk_sessions(settings: Settings, source: SourceSettings) -> Iterator[_Targets]:
    opened = _Targets()
    try:
        for pipeline in _pipelines(settings, source):
            target = opened.targets[pipeline.name] = make_target(pipeline, purpose="bulk")
            opened.bulks[pipeline.name] = open_bulk_load(target)
        yield opened
    finally:
        for bulk in opened.bulks.values():
            bulk.close()
        for target in opened.targets.values():
            with contextlib.suppress(Exception):
                target.close()


def _report(source: SourceSettings, run: _Run | None, pairs: list[_Pair], recovered: bool, done: bool) -> LoadReport:
    seconds = (run.last - run.first) if run and run.first is not None and run.last is not None else 0.0
    rows = sum(p.rows for p in pairs)
    return LoadReport(
        source=source.name,
        slot_name=source.resolved_slot_name,
        consistent_lsn=run.snapshot.consistent_lsn if run else 0,
        tables=tuple(
            TableReport(p.pipeline.name, str(p.target), p.rows, p.seconds, "copy" if p.plan else "rows") for p in pairs
        ),
        rows=rows,
        copy_seconds=seconds,
        rows_per_s=rows / seconds if seconds > 0 else 0.0,
        recovered=recovered,
        already_loaded=done,
    )


def _pause_after() -> int | None:
    raw = os.environ.get(PAUSE_ENV, "").strip()
    return int(raw) if raw else None


def _fresh_pairs(
    settings: Settings, source: SourceSettings, lock_conn: psycopg.Connection[dict[str, Any]], opened: _Targets
) -> tuple[list[_Pair], dict[str, list[_Pair]], bool]:
    """The refusals and clean-up before a copy; ``(pairs, pairs by pipeline, recovered)``."""
    bulks = opened.bulks
    states = {name: bulk.load_state(name) for name, bulk in bulks.items()}
    st.refuse_existing_connector(settings, source)
    for pipeline in _pipelines(settings, source):
        st.refuse_stored_offsets(opened.targets[pipeline.name], pipeline)
    recovered = st.recover(source, lock_conn, states, bulks)
    pairs = _plan(settings, source, lock_conn, bulks)
    by_pipeline: dict[str, list[_Pair]] = {name: [] for name in bulks}
    for pair in pairs:
        by_pipeline[pair.pipeline.name].append(pair)
    for name, own in by_pipeline.items():
        tables = [p.target for p in own]
        st.refuse_non_empty(bulks[name], tables)
        st.clear_bookkeeping(bulks[name], tables)
    return pairs, by_pipeline, recovered


def _source_tables(pairs: list[_Pair]) -> list[TableId]:
    return sorted({p.source.table for p in pairs}, key=str)


def _load(
    settings: Settings,
    source: SourceSettings,
    lock_conn: psycopg.Connection[dict[str, Any]],
    opened: _Targets,
    jobs: int,
    progress: LoadProgress,
) -> tuple[_Run, list[_Pair], bool]:
    bulks = opened.bulks
    pairs, by_pipeline, recovered = _fresh_pairs(settings, source, lock_conn, opened)
    _prepare_targets(pairs, bulks, source.bulk_load.binary)
    slot = source.resolved_slot_name
    for name, own in by_pipeline.items():
        bulks[name].save_state(name, st.copying_state(slot, [p.target for p in own], None))
    tables = _source_tables(pairs)
    table_locks = lock_source_tables(source, tables) if tables else None
    try:
        exporter, snapshot = create_exported_slot(source)
        run = _Run(source, snapshot, progress, _pause_after())
        try:
            _copy_and_finish(run, lock_conn, bulks, by_pipeline, jobs)
        except BaseException:
            exporter.close()
            with contextlib.suppress(psycopg.Error, BulkLoadError):
                drop_slot_when_free(lock_conn, slot, timeout_s=5)
            raise
        exporter.close()
    finally:
        if table_locks is not None:
            with contextlib.suppress(psycopg.Error):
                table_locks.close()
    return run, pairs, recovered


def _copy_and_finish(
    run: _Run,
    lock_conn: psycopg.Connection[dict[str, Any]],
    bulks: dict[str, TargetBulkLoad],
    by_pipeline: dict[str, list[_Pair]],
    jobs: int,
) -> None:
    """States ``copying`` with the consistent point, every copy, the slot check, states ``done``."""
    source, slot = run.source, run.source.resolved_slot_name
    copying = {
        name: st.copying_state(slot, [p.target for p in own], run.snapshot.consistent_lsn)
        for name, own in by_pipeline.items()
    }
    for name, doc in copying.items():
        bulks[name].save_state(name, doc)
    pairs = [p for own in by_pipeline.values() for p in own]
    log.info("bulk load copying", source=source.name, slot=slot, tables=len(pairs), jobs=jobs)
    _copy_all(run, pairs, jobs)
    st.check_slot_before_done(lock_conn, source)
    for name, own in by_pipeline.items():
        seconds = max((p.seconds for p in own), default=0.0)
        bulks[name].save_state(name, st.done_state(copying[name], {str(p.target): p.rows for p in own}, seconds))


def run_bulk_load(
    settings: Settings,
    source: SourceSettings,
    *,
    jobs: int | None = None,
    progress: LoadProgress | None = None,
    register: Callable[[], None],
) -> LoadReport:
    """Bulk-load every captured table of ``source`` into each of its pipelines' targets, then
    call ``register`` (see the module docstring); ``jobs`` overrides ``bulk_load.jobs``.

    Returns the :class:`LoadReport`. Raises BulkLoadError for refusals (another load running,
    a registered connector, stored offsets of a pipeline's group, non-empty target tables, a
    slot of someone else, transforms that do not fit the table, source tables locked by a DDL,
    the slot missing or lost after the copy or before registering a finished load),
    TransientSinkError/psycopg.OperationalError when a database is
    unreachable. A load that fails leaves its states ``copying``: the next run cleans it up.
    """
    _pipelines(settings, source)  # refuses a source without pipelines before touching anything
    try:
        prepare(source)
    except PrepareError as exc:
        raise BulkLoadError(f"source {source.name}: {exc}") from None
    lock_conn = take_load_lock(source)
    try:
        with _bulk_sessions(settings, source) as opened:
            states = {name: bulk.load_state(name) for name, bulk in opened.bulks.items()}
            if st.all_done(states):
                st.refuse_lost_handover_slot(settings, source, lock_conn)
                register()
                return _report(source, None, [], False, True)
            run, pairs, recovered = _load(
                settings, source, lock_conn, opened, jobs or source.bulk_load.jobs, progress or _NullProgress()
            )
        register()
        return _report(source, run, pairs, recovered, False)
    finally:
        lock_conn.close()
