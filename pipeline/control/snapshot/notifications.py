"""Debezium notifications applied to the queue's requests (pure): parsing the notification topic's
values, matching a notification to its request, and the request state machine, one handler per
notification type (notification shapes: ``docs/design/snapshot.md``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from connectors.debezium import TableRef, collection_id
from pipeline.control.snapshot.model import (
    BLOCKING_AGGREGATE,
    CLOCK_SKEW_MS,
    INCREMENTAL_AGGREGATE,
    Notification,
    RequestState,
    SnapshotKind,
    SnapshotRequest,
    TableProgress,
    TableState,
)

_SCAN_STATUS = {"SUCCEEDED": TableState.COMPLETED, "EMPTY": TableState.EMPTY}
"""Debezium ``TABLE_SCAN_COMPLETED`` statuses that end a table well; any other one fails it."""


def parse_notification(value: bytes | str | dict[str, Any] | None) -> Notification | None:
    """A notification from a message value of the notification topic (JSON, with or without
    the converter's ``schema``/``payload`` envelope, or the record an Avro reader decoded);
    None for tombstones and other shapes."""
    if value is None:
        return None
    if isinstance(value, dict):
        doc: Any = value
    else:
        try:
            doc = json.loads(value)
        except ValueError:
            return None
    if isinstance(doc, dict) and "payload" in doc and isinstance(doc["payload"], dict):
        doc = doc["payload"]
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("type"), str):
        return None
    raw = doc.get("additional_data") or {}
    data = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    try:
        ts = int(doc.get("timestamp") or 0)
    except (TypeError, ValueError):
        ts = 0
    return Notification(doc["id"], doc["type"], str(doc.get("aggregate_type") or ""), data, ts)


def _identifier_forms(table: str) -> set[str]:
    ref = TableRef.parse(table)
    return {f"{ref.schema}.{ref.table}", collection_id(ref), str(ref)}


def table_matcher(tables: Sequence[str]) -> Callable[[str], str | None]:
    """Maps a Debezium collection identifier (``schema.table``, quoted or not) to one of
    ``tables``, or None."""
    forms: dict[str, str] = {}
    for table in tables:
        for form in _identifier_forms(table):
            forms.setdefault(form, table)
    return forms.get


def notification_matches(request: SnapshotRequest, note: Notification) -> bool:
    """Whether ``note`` reports on ``request``: incremental snapshots by the correlation id
    (the signal id, which is the request id), blocking snapshots (random ids) by aggregate
    type and a timestamp not before the request was sent (minus :data:`CLOCK_SKEW_MS`)."""
    if request.kind is SnapshotKind.INCREMENTAL:
        return note.aggregate_type == INCREMENTAL_AGGREGATE and note.id == str(request.id)
    if note.aggregate_type != BLOCKING_AGGREGATE or request.sent_at is None:
        return False
    return note.timestamp_ms >= int(request.sent_at.timestamp() * 1000) - CLOCK_SKEW_MS


@dataclass(frozen=True, slots=True)
class RequestUpdate:
    """What :func:`apply_notification` changes in a request (the whole new state)."""

    state: RequestState
    progress: dict[str, TableProgress]
    detail: str | None
    last_notification_ms: int
    started: bool = False
    finished: bool = False
    clear_pause: bool = False


@dataclass(slots=True)
class _Draft:
    """A request's new state while one notification is applied (mutated by one handler)."""

    request: SnapshotRequest
    note: Notification
    which: Callable[[str], str | None]
    progress: dict[str, TableProgress]
    state: RequestState
    detail: str | None
    started: bool = False
    finished: bool = False
    clear_pause: bool = False


def _on_started(_draft: _Draft) -> None:
    """STARTED: nothing beyond sent -> running (done for every type but PAUSED/RESUMED)."""


def _on_in_progress(d: _Draft) -> None:
    """IN_PROGRESS: the current table running (paused while ``paused_by``) with its keys."""
    table = d.which(d.note.data.get("current_collection_in_progress", ""))
    if table is None or d.progress[table].state.terminal:
        return
    current = d.progress[table]
    d.progress[table] = replace(
        current,
        state=TableState.PAUSED if d.request.paused_by else TableState.RUNNING,
        last_key=d.note.data.get("last_processed_key", current.last_key),
        max_key=d.note.data.get("maximum_key", current.max_key),
    )


def _on_scan_completed(d: _Draft) -> None:
    """TABLE_SCAN_COMPLETED: the table completed/empty, or failed for any other scan status."""
    table = d.which(d.note.data.get("scanned_collection", ""))
    if table is None:
        return
    current = d.progress[table]
    status = d.note.data.get("status", "SUCCEEDED")
    rows = d.note.data.get("total_rows_scanned")
    d.progress[table] = replace(
        current,
        state=_SCAN_STATUS.get(status, TableState.FAILED),
        status=status,
        rows_scanned=int(rows) if rows is not None and rows.isdigit() else current.rows_scanned,
        last_key=current.max_key or current.last_key,
    )


def _swap_states(d: _Draft, old: TableState, new: TableState) -> None:
    d.progress = {t: replace(p, state=new) if p.state is old else p for t, p in d.progress.items()}


def _on_paused(d: _Draft) -> None:
    """PAUSED: running tables paused."""
    _swap_states(d, TableState.RUNNING, TableState.PAUSED)


def _on_resumed(d: _Draft) -> None:
    """RESUMED: paused tables running."""
    _swap_states(d, TableState.PAUSED, TableState.RUNNING)


def _on_aborted(d: _Draft) -> None:
    """ABORTED: the listed tables (all unfinished ones when none is listed) stopped, and the
    request stopped once nothing is left."""
    listed = [d.which(c) for c in d.note.collections("data_collections")]
    targets = [t for t in listed if t is not None] or [t for t, p in d.progress.items() if not p.state.terminal]
    for table in targets:
        if not d.progress[table].state.terminal:
            d.progress[table] = replace(d.progress[table], state=TableState.STOPPED)
    if all(p.state.terminal for p in d.progress.values()):
        d.state, d.finished, d.clear_pause = RequestState.STOPPED, True, True
        d.detail = d.detail or "stopped"


def _on_completed(d: _Draft) -> None:
    """COMPLETED: completed, or failed when a table failed (``detail`` names them), or stopped
    when a stop was requested and a table was stopped."""
    failed = {t: p.status for t, p in d.progress.items() if p.state is TableState.FAILED}
    d.progress = {
        t: (replace(p, state=TableState.COMPLETED) if not p.state.terminal else p) for t, p in d.progress.items()
    }
    if failed:
        d.state = RequestState.FAILED
        d.detail = "; ".join(f"{t}: {s}" for t, s in sorted(failed.items()))
    elif d.request.stop_requested and any(p.state is TableState.STOPPED for p in d.progress.values()):
        d.state = RequestState.STOPPED
    else:
        d.state = RequestState.COMPLETED
    d.finished, d.clear_pause = True, True


_HANDLERS: Mapping[str, Callable[[_Draft], None]] = {
    "STARTED": _on_started,
    "IN_PROGRESS": _on_in_progress,
    "TABLE_SCAN_COMPLETED": _on_scan_completed,
    "PAUSED": _on_paused,
    "RESUMED": _on_resumed,
    "ABORTED": _on_aborted,
    "COMPLETED": _on_completed,
}
"""Notification type -> its transition; other types change nothing."""


def apply_notification(request: SnapshotRequest, note: Notification) -> RequestUpdate | None:
    """The request after ``note`` (which :func:`notification_matches` it), or None when it
    changes nothing: the request is terminal, the note is older than the newest applied one
    (replays after a restart), or its type is not one that moves the state.

    Any type but PAUSED/RESUMED moves a sent request to running; then the type's handler
    (``_HANDLERS``) applies: STARTED nothing more; IN_PROGRESS -> the current table running
    (paused while ``paused_by``) with its keys; TABLE_SCAN_COMPLETED -> the table
    completed/empty, or failed for any other scan status; PAUSED/RESUMED -> running tables
    paused/running; ABORTED -> the listed tables (all unfinished ones when none is listed)
    stopped, and the request stopped once nothing is left; COMPLETED -> completed, or failed
    when a table failed (``detail`` names them). Never moves backwards.
    """
    if request.state.terminal or note.timestamp_ms < request.last_notification_ms:
        return None
    handler = _HANDLERS.get(note.type)
    if handler is None:
        return None
    draft = _Draft(
        request=request,
        note=note,
        which=table_matcher(request.tables),
        progress={t: request.table_progress(t) for t in request.tables},
        state=request.state,
        detail=request.detail,
    )
    if draft.state is RequestState.SENT and note.type not in ("PAUSED", "RESUMED"):
        draft.state, draft.started = RequestState.RUNNING, True
    handler(draft)
    return RequestUpdate(
        state=draft.state,
        progress=draft.progress,
        detail=draft.detail,
        last_notification_ms=max(note.timestamp_ms, request.last_notification_ms),
        started=draft.started,
        finished=draft.finished,
        clear_pause=draft.clear_pause,
    )
