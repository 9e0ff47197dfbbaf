"""Snapshot progress as Prometheus gauges (``cdc_snapshot_*``): per source, request counts by
state, and per table the state, rows, progress ratio and duration of its newest request. No I/O
besides setting gauges; the coordinator gathers the inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pipeline.control.snapshot.model import (
    MARKER_ORIGINS,
    TABLE_STATES,
    RequestState,
    SnapshotRequest,
    TableState,
)
from pipeline.core import metrics


def _latest_per_table(requests: Sequence[SnapshotRequest]) -> tuple[dict[str, int], dict[str, SnapshotRequest]]:
    """``(request count per state, newest request per table)``, coverage markers left out."""
    counts = dict.fromkeys((s.value for s in RequestState), 0)
    latest: dict[str, SnapshotRequest] = {}
    for request in requests:
        if request.origin in MARKER_ORIGINS:
            continue
        counts[request.state.value] += 1
        for table in request.tables:
            latest[table] = request
    return counts, latest


def table_state(request: SnapshotRequest, table: str) -> TableState:
    """The state shown for ``table`` of ``request``: queued while the request is, failed/stopped
    when the request ended before the table's scan did, else the table's own state."""
    progress = request.table_progress(table)
    if request.state is RequestState.QUEUED:
        return TableState.QUEUED
    if request.state.terminal and not progress.state.terminal:
        return TableState.FAILED if request.state is RequestState.FAILED else TableState.STOPPED
    return progress.state


def _progress_ratio(state: TableState, rows: float | None, estimate: float | None) -> float | None:
    if state in (TableState.COMPLETED, TableState.EMPTY):
        return 1.0
    if state is TableState.QUEUED:
        return 0.0
    if rows is not None and estimate:
        return min(0.99, rows / estimate)
    return None


def _export_table(
    source: str, table: str, request: SnapshotRequest, estimate: float | None, applied: float | None, now: datetime
) -> None:
    state = table_state(request, table)
    for candidate in TABLE_STATES:
        metrics.SNAPSHOT_TABLE_STATE.labels(source, table, candidate.value).set(1 if candidate is state else 0)
    scanned = request.table_progress(table).rows_scanned
    rows = scanned if scanned is not None else applied
    if rows is not None:
        metrics.SNAPSHOT_ROWS.labels(source, table).set(rows)
    ratio = _progress_ratio(state, rows, estimate)
    if ratio is not None:
        metrics.SNAPSHOT_PROGRESS.labels(source, table).set(ratio)
    if request.started_at is not None:
        end = request.finished_at or now
        metrics.SNAPSHOT_DURATION.labels(source, table).set(max(0.0, (end - request.started_at).total_seconds()))


def export_snapshot_metrics(
    source: str,
    requests: Sequence[SnapshotRequest],
    estimates: Mapping[str, float | None],
    rows_applied: Mapping[str, float],
    now: datetime,
    throttled: bool,
) -> None:
    """Set the ``cdc_snapshot_*`` gauges of ``source`` from its requests (oldest first).

    Per table, the newest non-baseline request naming it decides: its table state, rows
    (Debezium's ``total_rows_scanned`` once scanned, else ``rows_applied`` - snapshot reads this
    process applied since the request started), progress ratio (1 once scanned, else rows /
    ``estimates`` capped at 0.99, absent without an estimate) and duration (started -> finished
    or ``now``, seconds).
    """
    counts, latest = _latest_per_table(requests)
    for state, count in counts.items():
        metrics.SNAPSHOT_REQUESTS.labels(source, state).set(count)
    metrics.SNAPSHOT_THROTTLED.labels(source).set(1 if throttled else 0)
    for table, request in latest.items():
        _export_table(source, table, request, estimates.get(table), rows_applied.get(table), now)


@dataclass(frozen=True, slots=True)
class RequestProgress:
    """How far one request has come, for progress displays: estimated rows done and in total
    (None when no table's size is known) and their ratio (None when it cannot be told)."""

    rows_done: float
    rows_total: float | None
    ratio: float | None


def _key_ratio(last_key: str | None, max_key: str | None) -> float | None:
    """``last/max`` for single-column numeric keys (Debezium's ``last_processed_key`` and
    ``maximum_key`` notification fields, in text form); None otherwise."""
    try:
        last, top = float(last_key or ""), float(max_key or "")
    except ValueError:
        return None
    return min(1.0, max(0.0, last / top)) if top > 0 else None


def request_progress(request: SnapshotRequest, estimates: Mapping[str, float | None]) -> RequestProgress:
    """Rows done out of ``estimates`` (``schema.table`` -> estimated rows) for ``request``: a
    table whose scan ended counts its scanned rows (or its estimate); a running one counts its
    estimate times the key ratio of its last notification (numeric keys only)."""
    done = 0.0
    total = 0.0
    known = False
    for table in request.tables:
        estimate = estimates.get(table)
        progress = request.table_progress(table)
        state = table_state(request, table)
        if estimate is not None:
            total += estimate
            known = True
        if state.terminal:
            done += progress.rows_scanned if progress.rows_scanned is not None else (estimate or 0.0)
        elif estimate is not None and (ratio := _key_ratio(progress.last_key, progress.max_key)) is not None:
            done += estimate * ratio
    if request.state.terminal and known:
        done = max(done, total)
    rows_total = total if known else None
    return RequestProgress(done, rows_total, min(1.0, done / total) if known and total > 0 else None)
