"""Snapshot coordinator: Debezium ad hoc snapshots through the signal table, a durable request
queue, progress from the notification topic, automatic snapshots of newly captured tables and
lag-aware throttling.

Layers (the pure ones are unit-tested without any service):

1. **Pure logic**: :func:`execute_snapshot_data` (the signal JSON), :func:`key_range_filters`
   (``additional-conditions`` filters for key ranges, split to fit the signal column),
   :func:`parse_notification`, :func:`apply_notification` (request state machine),
   :class:`Throttle` (pause/resume decisions with hysteresis), :func:`captured_by_include_list`.
2. **SQL on the source**: :class:`SnapshotQueue`, the durable queue in
   ``<control_schema>.snapshot_requests`` of the source database.
3. **Kafka**: :class:`NotificationReader` (its OWN consumer of the notification topic, never the
   pipeline's) and :class:`ConsumerLagProbe` (metadata client: high watermarks minus the offsets
   each pipeline stored in its target).
4. **The loop**: :class:`SnapshotCoordinator`, a :class:`~pipeline.control.monitor.PollingMonitor` whose
   poll acts only while it holds the source's coordinator lock (a session advisory lock), so
   any number of workers may run one and exactly one acts::

       coordinator = build_coordinator(settings, source)   # not started
       coordinator.start()          # first poll at once, then every ``interval_s``
       ...
       coordinator.stop()           # joins the thread (bounded), closes connections

Debezium facts relied on (Debezium 3.6, "Sending signals to a Debezium connector" and
"Debezium notifications"; read in ``io.debezium.pipeline.signal.actions`` and
``io.debezium.pipeline.notification`` at v3.6.1.Final, checked against 3.6.3 on the local stack):

- A signal is a row ``(id varchar(42), type varchar(32), data varchar(2048))`` inserted into the
  signal table; the source channel reads it from the WAL, so it takes effect only once the
  inserting transaction commits. Shapes used here::

      execute-snapshot  {"data-collections": ["public.items"], "type": "incremental"|"blocking",
                         "additional-conditions": [{"data-collection": "<regex>", "filter": "<SQL>"}],
                         "surrogate-key": "<column>"}
      stop-snapshot     {"type": "incremental", "data-collections": [...]}   (omit the list: all)
      pause-snapshot / resume-snapshot   data ignored

  ``data-collections`` entries are regexes expanded against the captured tables (a literal name
  is kept when nothing matches); ``additional-conditions[].data-collection`` is a
  case-insensitive regex matched against each expanded name, so :func:`table_regex` is used;
  for an *incremental* snapshot ``filter`` is a WHERE condition added to every chunk query (for
  a *blocking* one a whole SELECT). Debezium does not de-duplicate signals.
- Incremental-snapshot notifications (aggregate ``Incremental Snapshot``) carry the id of the
  signal that started the snapshot (the "correlation id") until it completes; a second
  ``execute-snapshot`` while one runs is merged into it and replaces that id, hence ONE request
  in flight per connector. Types: ``STARTED`` (``data_collections``), ``IN_PROGRESS``
  (``current_collection_in_progress``, ``last_processed_key``, ``maximum_key``),
  ``TABLE_SCAN_COMPLETED`` (``scanned_collection``, ``total_rows_scanned`` for that table,
  ``status`` SUCCEEDED|EMPTY|NO_PRIMARY_KEY|SKIPPED|SQL_EXCEPTION|UNKNOWN_SCHEMA), ``PAUSED``,
  ``RESUMED``, ``ABORTED`` (``data_collections`` stopped), ``COMPLETED``. Blocking snapshots
  report as aggregate ``Initial Snapshot`` with random ids. The sink channel writes JSON
  ``{"id", "type", "aggregate_type", "additional_data": {str: str}, "timestamp": ms}``.
  Observed on the local stack (3.6.3)::

      {"id": "c0dfd0ad-...", "type": "IN_PROGRESS", "aggregate_type": "Incremental Snapshot",
       "additional_data": {"current_collection_in_progress": "public.items",
       "connector_name": "<topic.prefix>", "maximum_key": "2200", "last_processed_key": "600",
       "data_collections": "public.items"}, "timestamp": 1795287145633}

- Incremental snapshots read chunks with ``ORDER BY <key> LIMIT incremental.snapshot.chunk.size``
  and need a primary key (or a ``surrogate-key``); tables without one end with status
  ``NO_PRIMARY_KEY``.

PostgreSQL facts: ``pg_replication_slots.restart_lsn`` is the oldest WAL a slot keeps, so
``pg_current_wal_lsn() - restart_lsn`` is the WAL it retains ("System Views" >
"pg_replication_slots"); ``pg_class.reltuples`` is the planner's row estimate, -1 before the
first ANALYZE (PostgreSQL 14+), when ``pg_stat_user_tables.n_live_tup`` is used instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, ClassVar, Protocol, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from connectors.debezium import (
    TableRef,
    collection_id,
    heartbeat_table,
    notification_topic,
    signal_table,
    table_regex,
)
from connectors.source_prep import conninfo as source_conninfo
from pipeline.control.monitor import PollingMonitor
from pipeline.core import metrics
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SnapshotConfig, SourceSettings
from pipeline.core.settings.root import Settings

log = get_logger(__name__)

Conn = psycopg.Connection[dict[str, Any]]

SIGNAL_DATA_MAX = 2048
"""Length of the signal table's ``data`` column (``varchar(2048)``, "Structure of a signaling data collection")."""

REQUESTS_TABLE = "snapshot_requests"
MARKER_ORIGINS = frozenset({"baseline", "uncaptured"})
"""Request origins that only record coverage; they are never signalled."""
INCREMENTAL_AGGREGATE = "Incremental Snapshot"
BLOCKING_AGGREGATE = "Initial Snapshot"
CLOCK_SKEW_MS = 5000
"""Tolerance between the Connect worker's clock (notification timestamps) and the source's."""


# =========================================================================== settings


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    """Coordinator settings (to become ``snapshot:`` in the YAML; defaults apply until then).

    - ``interval_s``: seconds between coordinator polls.
    - ``max_wal_retained_bytes``: pause a running incremental snapshot while the source's slot
      retains more WAL than this (bytes; None: not checked).
    - ``max_consumer_lag``: ... or while a pipeline of the source is more than this many
      messages behind (None: not checked).
    - ``resume_ratio``: resume once every reading is below ``ratio * threshold`` (hysteresis).
    - ``auto_snapshot_new_tables``: snapshot tables the connector starts capturing.
    - ``capture_settle_s``: a newly captured table must be seen captured (connector RUNNING)
      this long before its snapshot is requested (the task restarts after a config change).
    - ``signal_ack_timeout_s``: a sent request with no notification after this long is failed.
    - ``notification_lookback_s``: on taking over, notifications are re-read from this long
      before the oldest in-flight request was sent.
    """

    @classmethod
    def from_config(cls, config: SnapshotConfig) -> SnapshotSettings:
        """The coordinator settings of the configuration file's ``snapshot:`` section."""
        return cls(**config.model_dump())

    interval_s: float = 2.0
    max_wal_retained_bytes: int | None = 1 << 30
    max_consumer_lag: int | None = 100_000
    resume_ratio: float = 0.8
    auto_snapshot_new_tables: bool = True
    capture_settle_s: float = 10.0
    signal_ack_timeout_s: float = 900.0
    notification_lookback_s: float = 60.0


# =========================================================================== model


class SnapshotKind(StrEnum):
    """Debezium ad hoc snapshot types (``execute-snapshot`` ``data.type``)."""

    INCREMENTAL = "incremental"
    BLOCKING = "blocking"


class RequestState(StrEnum):
    """Life of a queued request: queued -> sent -> running -> completed | failed | stopped."""

    QUEUED = "queued"
    SENT = "sent"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        """True for completed, failed and stopped."""
        return self in (RequestState.COMPLETED, RequestState.FAILED, RequestState.STOPPED)

    @property
    def in_flight(self) -> bool:
        """True for sent and running (at most one such request per source)."""
        return self in (RequestState.SENT, RequestState.RUNNING)


class TableState(StrEnum):
    """Per-table state inside a request."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    EMPTY = "empty"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        """True once the table's scan ended (completed, empty, failed, stopped)."""
        return self in (TableState.COMPLETED, TableState.EMPTY, TableState.FAILED, TableState.STOPPED)


TABLE_STATES = tuple(TableState)

_SCAN_STATUS = {"SUCCEEDED": TableState.COMPLETED, "EMPTY": TableState.EMPTY}


@dataclass(frozen=True, slots=True)
class Condition:
    """An ``additional-conditions`` entry: ``filter`` (SQL) restricting ``table`` (``schema.table``)."""

    table: str
    filter: str


@dataclass(frozen=True, slots=True)
class TableProgress:
    """Progress of one table of a request, from notifications.

    ``last_key``/``max_key`` are Debezium's text forms (key columns joined by ``,``);
    ``rows_scanned`` is Debezium's ``total_rows_scanned`` once the table's scan completed;
    ``status`` the scan status (SUCCEEDED, EMPTY, NO_PRIMARY_KEY...).
    """

    state: TableState = TableState.QUEUED
    last_key: str | None = None
    max_key: str | None = None
    rows_scanned: int | None = None
    status: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form stored in the ``progress`` column."""
        return {
            "state": self.state.value,
            "last_key": self.last_key,
            "max_key": self.max_key,
            "rows_scanned": self.rows_scanned,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableProgress:
        """Inverse of :meth:`to_json` (unknown states read as queued)."""
        try:
            state = TableState(data.get("state", "queued"))
        except ValueError:
            state = TableState.QUEUED
        rows = data.get("rows_scanned")
        return cls(
            state,
            data.get("last_key"),
            data.get("max_key"),
            int(rows) if rows is not None else None,
            data.get("status"),
        )


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """One row of the queue.

    ``tables`` are ``schema.table`` names as in the settings; ``origin`` is ``cli``, ``auto``
    (newly captured table), ``repair`` (verifier), or a coverage marker that is never sent:
    ``baseline`` (the tables captured when the coordinator first ran, covered by the
    connector's initial snapshot) or ``uncaptured`` (tables the connector stopped capturing);
    ``paused_by`` is ``user`` or ``throttle`` while a pause signal is in effect.
    ``last_notification_ms`` is the timestamp of the newest notification applied.
    """

    id: uuid.UUID
    source: str
    seq: int
    kind: SnapshotKind
    origin: str
    tables: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    surrogate_key: str | None = None
    state: RequestState = RequestState.QUEUED
    paused_by: str | None = None
    stop_requested: bool = False
    progress: dict[str, TableProgress] = field(default_factory=dict)
    detail: str | None = None
    last_notification_ms: int = 0
    created_at: datetime | None = None
    sent_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def table_progress(self, table: str) -> TableProgress:
        """The progress of ``table`` (queued when nothing was reported)."""
        return self.progress.get(table, TableProgress())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``snapshot status --json``)."""
        return {
            "id": str(self.id),
            "source": self.source,
            "seq": self.seq,
            "kind": self.kind.value,
            "origin": self.origin,
            "tables": list(self.tables),
            "conditions": [{"table": c.table, "filter": c.filter} for c in self.conditions],
            "surrogate_key": self.surrogate_key,
            "state": self.state.value,
            "paused_by": self.paused_by,
            "stop_requested": self.stop_requested,
            "progress": {t: p.to_json() for t, p in self.progress.items()},
            "detail": self.detail,
            "created_at": _iso(self.created_at),
            "sent_at": _iso(self.sent_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Notification:
    """A Debezium notification (sink channel JSON; see the module docstring).

    ``data`` is ``additional_data`` (all values strings); ``timestamp_ms`` is the Connect
    worker's clock in milliseconds since the epoch.
    """

    id: str
    type: str
    aggregate_type: str
    data: dict[str, str]
    timestamp_ms: int

    def collections(self, key: str) -> list[str]:
        """The comma-separated collection list under ``key`` (empty when absent or blank)."""
        value = self.data.get(key, "")
        return [v.strip() for v in value.split(",") if v.strip()]


# =========================================================================== pure logic


def execute_snapshot_data(
    tables: Sequence[str],
    kind: SnapshotKind = SnapshotKind.INCREMENTAL,
    conditions: Sequence[Condition] = (),
    surrogate_key: str | None = None,
) -> str:
    """The ``data`` JSON of an ``execute-snapshot`` signal (compact, at most 2048 characters).

    ``tables`` are ``schema.table`` names; each becomes :func:`connectors.debezium.collection_id`
    in ``data-collections`` and each condition's table the exact-match regex
    :func:`connectors.debezium.table_regex` in ``additional-conditions``. Raises ValueError for
    no tables, a condition on a table not requested, or a result longer than the signal table's
    ``data`` column.
    """
    if not tables:
        raise ValueError("a snapshot needs at least one table")
    unknown = sorted({c.table for c in conditions} - set(tables))
    if unknown:
        raise ValueError(f"conditions name tables that are not requested: {', '.join(unknown)}")
    data: dict[str, Any] = {
        "data-collections": [collection_id(TableRef.parse(t)) for t in tables],
        "type": kind.value,
    }
    if conditions:
        data["additional-conditions"] = [
            {"data-collection": table_regex(TableRef.parse(c.table)), "filter": c.filter} for c in conditions
        ]
    if surrogate_key:
        data["surrogate-key"] = surrogate_key
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if len(text) > SIGNAL_DATA_MAX:
        raise ValueError(
            f"the signal data is {len(text)} characters, the signal table takes {SIGNAL_DATA_MAX}: "
            "request fewer tables or simpler conditions"
        )
    return text


def stop_snapshot_data(kind: SnapshotKind, tables: Sequence[str] | None = None) -> str:
    """``stop-snapshot`` data: ``{"type": kind}`` plus ``data-collections`` when ``tables`` is given."""
    data: dict[str, Any] = {"type": kind.value}
    if tables:
        data["data-collections"] = [collection_id(TableRef.parse(t)) for t in tables]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


KeyTuple = tuple[Any, ...]
KeyRange = tuple[KeyTuple | None, KeyTuple | None]
"""``(low, high)``: rows with ``low < key <= high``; None is unbounded on that side."""


def merge_ranges(ranges: Sequence[KeyRange]) -> list[KeyRange]:
    """Join ranges where one's ``high`` equals the next one's ``low`` (adjacent chunks), in order."""
    merged: list[KeyRange] = []
    for low, high in ranges:
        if merged and merged[-1][1] is not None and merged[-1][1] == low:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def range_predicate(
    columns: Sequence[str], key_range: KeyRange, ident: Callable[[str], str], literal: Callable[[Any], str]
) -> str | None:
    """SQL text ``(k1, k2) > (v1, v2) AND (k1, k2) <= (w1, w2)`` for ``key_range`` (row-value
    comparison, PostgreSQL "Row Constructor Comparison"); None when unbounded on both sides.

    ``ident`` quotes an identifier and ``literal`` renders a value (e.g. through
    :class:`psycopg.sql.Identifier` / :class:`psycopg.sql.Literal`).
    """
    cols = "(" + ", ".join(ident(c) for c in columns) + ")"
    parts: list[str] = []
    low, high = key_range
    if low is not None:
        parts.append(f"{cols} > (" + ", ".join(literal(v) for v in low) + ")")
    if high is not None:
        parts.append(f"{cols} <= (" + ", ".join(literal(v) for v in high) + ")")
    return " AND ".join(parts) if parts else None


def key_range_filters(
    columns: Sequence[str],
    ranges: Sequence[KeyRange],
    ident: Callable[[str], str],
    literal: Callable[[Any], str],
    max_length: int = 1500,
) -> list[str | None]:
    """``additional-conditions`` filters covering ``ranges`` of the key ``columns``.

    Adjacent ranges are merged; the rest are OR-ed into filters of at most ``max_length``
    characters (one request each, so every signal fits :data:`SIGNAL_DATA_MAX` with room for
    the table names). A None in the result means "the whole table" (a range unbounded on both
    sides). Raises ValueError when a single range alone is longer than ``max_length``.
    """
    filters: list[str | None] = []
    current: list[str] = []
    for key_range in merge_ranges(ranges):
        predicate = range_predicate(columns, key_range, ident, literal)
        if predicate is None:
            return [None]
        if len(predicate) + 2 > max_length:
            raise ValueError(f"the key range filter {predicate[:80]}... is longer than {max_length} characters")
        candidate = [*current, predicate]
        if len(" OR ".join(f"({p})" for p in candidate)) > max_length:
            filters.append(" OR ".join(f"({p})" for p in current))
            current = [predicate]
        else:
            current = candidate
    if current:
        filters.append(" OR ".join(f"({p})" for p in current))
    return filters


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


_NOTIFICATION_TYPES = frozenset(
    {"STARTED", "IN_PROGRESS", "TABLE_SCAN_COMPLETED", "PAUSED", "RESUMED", "ABORTED", "COMPLETED"}
)


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


def apply_notification(request: SnapshotRequest, note: Notification) -> RequestUpdate | None:
    """The request after ``note`` (which :func:`notification_matches` it), or None when it
    changes nothing: the request is terminal, the note is older than the newest applied one
    (replays after a restart), or its type is not one that moves the state.

    Transitions: STARTED -> running; IN_PROGRESS -> the current table running (paused while
    ``paused_by``) with its keys; TABLE_SCAN_COMPLETED -> the table completed/empty, or failed
    for any other scan status; PAUSED/RESUMED -> running tables paused/running; ABORTED -> the
    listed tables (all unfinished ones when none is listed) stopped, and the request stopped
    once nothing is left; COMPLETED -> completed, or failed when a table failed (``detail``
    names them). Never moves backwards.
    """
    if request.state.terminal or note.timestamp_ms < request.last_notification_ms:
        return None
    which = table_matcher(request.tables)
    progress = {t: request.table_progress(t) for t in request.tables}
    state = request.state
    detail = request.detail
    started = finished = clear_pause = False
    kind = note.type
    if kind not in _NOTIFICATION_TYPES:
        return None
    if state is RequestState.SENT and kind not in ("PAUSED", "RESUMED"):
        state, started = RequestState.RUNNING, True
    if kind == "IN_PROGRESS":
        table = which(note.data.get("current_collection_in_progress", ""))
        if table is not None and not progress[table].state.terminal:
            running = TableState.PAUSED if request.paused_by else TableState.RUNNING
            progress[table] = replace(
                progress[table],
                state=running,
                last_key=note.data.get("last_processed_key", progress[table].last_key),
                max_key=note.data.get("maximum_key", progress[table].max_key),
            )
    elif kind == "TABLE_SCAN_COMPLETED":
        table = which(note.data.get("scanned_collection", ""))
        if table is not None:
            status = note.data.get("status", "SUCCEEDED")
            rows = note.data.get("total_rows_scanned")
            progress[table] = replace(
                progress[table],
                state=_SCAN_STATUS.get(status, TableState.FAILED),
                status=status,
                rows_scanned=int(rows) if rows is not None and rows.isdigit() else progress[table].rows_scanned,
                last_key=progress[table].max_key or progress[table].last_key,
            )
    elif kind in ("PAUSED", "RESUMED"):
        new, old = (
            (TableState.PAUSED, TableState.RUNNING) if kind == "PAUSED" else (TableState.RUNNING, TableState.PAUSED)
        )
        progress = {t: replace(p, state=new) if p.state is old else p for t, p in progress.items()}
    elif kind == "ABORTED":
        listed = [which(c) for c in note.collections("data_collections")]
        targets = [t for t in listed if t is not None] or [t for t, p in progress.items() if not p.state.terminal]
        for table in targets:
            if not progress[table].state.terminal:
                progress[table] = replace(progress[table], state=TableState.STOPPED)
        if all(p.state.terminal for p in progress.values()):
            state, finished, clear_pause = RequestState.STOPPED, True, True
            detail = detail or "stopped"
    elif kind == "COMPLETED":
        failed = {t: p.status for t, p in progress.items() if p.state is TableState.FAILED}
        progress = {
            t: (replace(p, state=TableState.COMPLETED) if not p.state.terminal else p) for t, p in progress.items()
        }
        if failed:
            state = RequestState.FAILED
            detail = "; ".join(f"{t}: {s}" for t, s in sorted(failed.items()))
        elif request.stop_requested and any(p.state is TableState.STOPPED for p in progress.values()):
            state = RequestState.STOPPED
        else:
            state = RequestState.COMPLETED
        finished, clear_pause = True, True
    return RequestUpdate(
        state=state,
        progress=progress,
        detail=detail,
        last_notification_ms=max(note.timestamp_ms, request.last_notification_ms),
        started=started,
        finished=finished,
        clear_pause=clear_pause,
    )


class ThrottleAction(Enum):
    """What :meth:`Throttle.decide` asks for."""

    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class LagReading:
    """Lag inputs of the throttle: WAL the slot retains (bytes) and the worst pipeline's
    consumer lag (messages); None when not measured (or not measurable this time)."""

    wal_retained_bytes: int | None = None
    consumer_lag: int | None = None


class Throttle:
    """Pause/resume decisions for a running incremental snapshot, with hysteresis.

    PAUSE when not paused and any measured reading is above its threshold; RESUME when paused
    by the throttle and every threshold's reading is known and below ``resume_ratio`` of it;
    otherwise NONE (an unknown reading never resumes). A None threshold is not checked.
    """

    def __init__(
        self, max_wal_retained_bytes: int | None, max_consumer_lag: int | None, resume_ratio: float = 0.8
    ) -> None:
        if not 0 < resume_ratio <= 1:
            raise ValueError(f"resume_ratio must be in (0, 1], got {resume_ratio}")
        self.max_wal = max_wal_retained_bytes
        self.max_lag = max_consumer_lag
        self.resume_ratio = resume_ratio

    def _checks(self, reading: LagReading) -> list[tuple[str, int | None, int]]:
        checks: list[tuple[str, int | None, int]] = []
        if self.max_wal is not None:
            checks.append(("wal_retained", reading.wal_retained_bytes, self.max_wal))
        if self.max_lag is not None:
            checks.append(("consumer_lag", reading.consumer_lag, self.max_lag))
        return checks

    def reasons(self, reading: LagReading) -> list[str]:
        """Names of the readings above their thresholds (``wal_retained``, ``consumer_lag``)."""
        return [name for name, value, limit in self._checks(reading) if value is not None and value > limit]

    def decide(self, reading: LagReading, paused_by_throttle: bool, paused_by_user: bool = False) -> ThrottleAction:
        """The action for ``reading`` given the current pause state (a user's pause is left alone)."""
        checks = self._checks(reading)
        if not paused_by_throttle:
            if not paused_by_user and self.reasons(reading):
                return ThrottleAction.PAUSE
            return ThrottleAction.NONE
        if all(value is not None and value < limit * self.resume_ratio for _, value, limit in checks):
            return ThrottleAction.RESUME
        return ThrottleAction.NONE


_LIST_SPLIT = re.compile(r"(?<!\\),")


def split_include_list(value: str) -> list[str]:
    """Entries of a Debezium ``*.include.list`` (split at unescaped commas, trimmed)."""
    return [part.strip() for part in _LIST_SPLIT.split(value) if part.strip()]


def captured_by_include_list(include_list: str, tables: Iterable[str]) -> set[str]:
    """Which ``tables`` (``schema.table``) the connector's ``table.include.list`` captures.

    An entry equal to :func:`connectors.debezium.table_regex` of the table matches (what
    :func:`connectors.debezium.build_connector_config` writes); other entries are tried as
    anchored regexes, case-insensitive unless they start with ``(?-i)`` (Debezium matches
    ``<schema>.<table>`` with ``Pattern.CASE_INSENSITIVE``). An entry that is not a valid
    Python regex is ignored.
    """
    entries = split_include_list(include_list)
    found: set[str] = set()
    compiled: list[re.Pattern[str]] = []
    for entry in entries:
        flags = re.IGNORECASE
        pattern = entry
        if pattern.startswith("(?-i)"):
            pattern, flags = pattern[5:], re.RegexFlag(0)
        with contextlib.suppress(re.error):
            compiled.append(re.compile(pattern.replace("\\,", ","), flags))
    for table in tables:
        ref = TableRef.parse(table)
        if table_regex(ref) in entries or any(p.fullmatch(f"{ref.schema}.{ref.table}") for p in compiled):
            found.add(table)
    return found


# =========================================================================== the queue (source SQL)


def _ident(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


_SELECT_COLUMNS = sql.SQL(
    "id, seq, source, kind, origin, tables, conditions, surrogate_key, state, paused_by, stop_requested,"
    " progress, detail, last_notification_ms, created_at, sent_at, started_at, finished_at"
)


def _request_from_row(row: Mapping[str, Any]) -> SnapshotRequest:
    conditions = tuple(Condition(str(c["table"]), str(c["filter"])) for c in (row["conditions"] or []))
    progress = {str(t): TableProgress.from_json(p) for t, p in (row["progress"] or {}).items()}
    return SnapshotRequest(
        id=row["id"],
        source=row["source"],
        seq=int(row["seq"]),
        kind=SnapshotKind(row["kind"]),
        origin=row["origin"],
        tables=tuple(row["tables"]),
        conditions=conditions,
        surrogate_key=row["surrogate_key"],
        state=RequestState(row["state"]),
        paused_by=row["paused_by"],
        stop_requested=bool(row["stop_requested"]),
        progress=progress,
        detail=row["detail"],
        last_notification_ms=int(row["last_notification_ms"]),
        created_at=row["created_at"],
        sent_at=row["sent_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class NothingToSignalError(Exception):
    """A pause/resume/stop was asked for but no request is in a state that allows it."""


class SnapshotQueue:
    """The durable queue of snapshot requests of one source, in the SOURCE database table
    ``<control_schema>.snapshot_requests`` (created on first use; the source's user needs
    CREATE on the control schema, which ``source prepare`` gives).

    Guarantees:

    - one request in flight (sent or running) per source: a partial unique index on
      ``(source) WHERE state IN ('sent', 'running')`` plus a per-source transaction advisory lock;
    - a request is signalled at most once: the signal row's ``id`` IS the request id (the
      signal table's primary key), inserted in the same transaction that marks the request
      sent (:meth:`send_next`), so a crash either sends and marks, or neither.

    ``connect`` returns a new autocommit dict-row connection to the source. Methods raise
    psycopg.Error on database errors.
    """

    def __init__(self, source: SourceSettings, connect: Callable[[], Conn] | None = None) -> None:
        self.source = source
        self._connect = connect or (
            lambda: psycopg.connect(
                source_conninfo(source, f"cdc-pipeline snapshot {source.name}"),
                autocommit=True,
                row_factory=dict_row,
            )
        )
        self._conn: Conn | None = None
        self._ready = False
        self.table = _ident(source.control_schema, REQUESTS_TABLE)
        self.signals = signal_table(source)

    # -- connection

    def connection(self) -> Conn:
        """The queue's connection (opened, or reopened after a failure)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect()
            self._ready = False
        if not self._ready:
            self._ensure(self._conn)
            self._ready = True
        return self._conn

    def close(self) -> None:
        """Close the connection; idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _ensure(self, conn: Conn) -> None:
        cs = sql.Identifier(self.source.control_schema)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdc-snapshot-ddl', 0))")
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(cs))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {t} ("
                    " id uuid PRIMARY KEY, seq bigint GENERATED ALWAYS AS IDENTITY, source text NOT NULL,"
                    " kind text NOT NULL, origin text NOT NULL, tables text[] NOT NULL,"
                    " conditions jsonb NOT NULL DEFAULT '[]'::jsonb, surrogate_key text, state text NOT NULL,"
                    " paused_by text, stop_requested boolean NOT NULL DEFAULT false,"
                    " progress jsonb NOT NULL DEFAULT '{{}}'::jsonb, detail text,"
                    " last_notification_ms bigint NOT NULL DEFAULT 0,"
                    " created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz, started_at timestamptz,"
                    " finished_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(t=self.table)
            )
            conn.execute(
                sql.SQL(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {i} ON {t} (source) WHERE state IN ('sent', 'running')"
                ).format(i=sql.Identifier("snapshot_requests_one_in_flight"), t=self.table)
            )

    def _lock(self, conn: Conn) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"cdc-snapshot:{self.source.name}",))

    # -- reads

    def recent(self, limit: int = 50, include_markers: bool = False) -> list[SnapshotRequest]:
        """The newest ``limit`` requests of this source, oldest first (coverage markers -
        ``baseline``/``uncaptured`` - only with ``include_markers``)."""
        query = sql.SQL(
            "SELECT * FROM (SELECT {c} FROM {t} WHERE source = %s{b} ORDER BY seq DESC LIMIT %s) r ORDER BY seq"
        ).format(
            c=_SELECT_COLUMNS,
            t=self.table,
            b=sql.SQL("") if include_markers else sql.SQL(" AND origin NOT IN ('baseline', 'uncaptured')"),
        )
        rows = self.connection().execute(query, (self.source.name, limit)).fetchall()
        return [_request_from_row(r) for r in rows]

    def get(self, request_id: uuid.UUID) -> SnapshotRequest | None:
        """The request ``request_id`` (of any source), or None."""
        row = (
            self.connection()
            .execute(
                sql.SQL("SELECT {c} FROM {t} WHERE id = %s").format(c=_SELECT_COLUMNS, t=self.table), (request_id,)
            )
            .fetchone()
        )
        return _request_from_row(row) if row is not None else None

    def in_flight(self) -> SnapshotRequest | None:
        """The sent or running request of this source, or None."""
        row = (
            self.connection()
            .execute(
                sql.SQL("SELECT {c} FROM {t} WHERE source = %s AND state IN ('sent', 'running')").format(
                    c=_SELECT_COLUMNS, t=self.table
                ),
                (self.source.name,),
            )
            .fetchone()
        )
        return _request_from_row(row) if row is not None else None

    def covered_tables(self) -> set[str]:
        """Tables whose newest request (baseline included, whatever its state) is not an
        ``uncaptured`` marker: snapshotted, being snapshotted, or deliberately not."""
        rows = (
            self.connection()
            .execute(
                sql.SQL(
                    "SELECT t FROM (SELECT DISTINCT ON (t) t, origin FROM {tbl}, unnest(tables) AS t"
                    " WHERE source = %s ORDER BY t, seq DESC) latest WHERE origin <> 'uncaptured'"
                ).format(tbl=self.table),
                (self.source.name,),
            )
            .fetchall()
        )
        return {str(r["t"]) for r in rows}

    def record_uncaptured(self, tables: Sequence[str]) -> None:
        """Mark ``tables`` as no longer captured, so that capturing them again snapshots them
        again (changes made meanwhile were never streamed)."""
        self.connection().execute(
            sql.SQL(
                "INSERT INTO {t} (id, source, kind, origin, tables, state, detail, finished_at)"
                " VALUES (%s, %s, 'incremental', 'uncaptured', %s, 'completed', 'no longer captured', now())"
            ).format(t=self.table),
            (uuid.uuid4(), self.source.name, sorted(tables)),
        )
        log.info("tables no longer captured", source=self.source.name, tables=sorted(tables))

    def has_baseline(self) -> bool:
        """Whether the baseline (tables captured when coordination began) was recorded."""
        row = (
            self.connection()
            .execute(
                sql.SQL("SELECT 1 AS one FROM {t} WHERE source = %s AND origin = 'baseline' LIMIT 1").format(
                    t=self.table
                ),
                (self.source.name,),
            )
            .fetchone()
        )
        return row is not None

    # -- writes

    def enqueue(
        self,
        tables: Sequence[str],
        kind: SnapshotKind = SnapshotKind.INCREMENTAL,
        conditions: Sequence[Condition] = (),
        surrogate_key: str | None = None,
        origin: str = "cli",
    ) -> SnapshotRequest:
        """Queue a snapshot of ``tables``; returns the new request (state queued).

        Raises ValueError when the signal it will become is invalid (see
        :func:`execute_snapshot_data`).
        """
        execute_snapshot_data(tables, kind, conditions, surrogate_key)  # validate now, not when sending
        request_id = uuid.uuid4()
        row = (
            self.connection()
            .execute(
                sql.SQL(
                    "INSERT INTO {t} (id, source, kind, origin, tables, conditions, surrogate_key, state)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, 'queued') RETURNING {c}"
                ).format(t=self.table, c=_SELECT_COLUMNS),
                (
                    request_id,
                    self.source.name,
                    kind.value,
                    origin,
                    list(tables),
                    Jsonb([{"table": c.table, "filter": c.filter} for c in conditions]),
                    surrogate_key,
                ),
            )
            .fetchone()
        )
        assert row is not None
        request = _request_from_row(row)
        log.info(
            "snapshot requested",
            source=self.source.name,
            request=str(request_id),
            tables=list(tables),
            kind=kind.value,
            origin=origin,
        )
        return request

    def record_baseline(self, tables: Sequence[str]) -> bool:
        """Record ``tables`` as covered by the connector's own snapshot, once per source.

        Returns True when this call recorded it (False: a baseline existed).
        """
        conn = self.connection()
        with conn.transaction():
            self._lock(conn)
            if self.has_baseline():
                return False
            conn.execute(
                sql.SQL(
                    "INSERT INTO {t} (id, source, kind, origin, tables, state, detail, finished_at)"
                    " VALUES (%s, %s, 'incremental', 'baseline', %s, 'completed',"
                    " 'captured when snapshot coordination began (initial snapshot)', now())"
                ).format(t=self.table),
                (uuid.uuid4(), self.source.name, sorted(tables)),
            )
        log.info("snapshot baseline recorded", source=self.source.name, tables=sorted(tables))
        return True

    def _insert_signal(self, conn: Conn, signal_id: str, signal_type: str, data: str | None) -> None:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, %s, %s)").format(self.signals.identifier()),
            (signal_id, signal_type, data),
        )
        metrics.SNAPSHOT_SIGNALS.labels(self.source.name, signal_type).inc()

    def send_next(self) -> SnapshotRequest | None:
        """Signal the oldest queued request when none is in flight; returns it (state sent) or None.

        One transaction: per-source advisory lock, in-flight check, ``FOR UPDATE SKIP LOCKED``
        pick, signal row insert (id = request id), state -> sent.
        """
        conn = self.connection()
        with conn.transaction():
            self._lock(conn)
            busy = conn.execute(
                sql.SQL("SELECT 1 AS one FROM {t} WHERE source = %s AND state IN ('sent', 'running')").format(
                    t=self.table
                ),
                (self.source.name,),
            ).fetchone()
            if busy is not None:
                return None
            row = conn.execute(
                sql.SQL(
                    "SELECT {c} FROM {t} WHERE source = %s AND state = 'queued' ORDER BY seq LIMIT 1"
                    " FOR UPDATE SKIP LOCKED"
                ).format(c=_SELECT_COLUMNS, t=self.table),
                (self.source.name,),
            ).fetchone()
            if row is None:
                return None
            request = _request_from_row(row)
            data = execute_snapshot_data(request.tables, request.kind, request.conditions, request.surrogate_key)
            self._insert_signal(conn, str(request.id), "execute-snapshot", data)
            sent = conn.execute(
                sql.SQL(
                    "UPDATE {t} SET state = 'sent', sent_at = now(), updated_at = now(),"
                    " progress = %s WHERE id = %s RETURNING {c}"
                ).format(t=self.table, c=_SELECT_COLUMNS),
                (Jsonb({t: TableProgress().to_json() for t in request.tables}), request.id),
            ).fetchone()
        assert sent is not None
        log.info(
            "snapshot signal sent",
            source=self.source.name,
            request=str(request.id),
            tables=list(request.tables),
            kind=request.kind.value,
            data=data,
        )
        return _request_from_row(sent)

    def apply(self, note: Notification) -> SnapshotRequest | None:
        """Apply ``note`` to the in-flight request it reports on; returns the updated request
        (None when it matched nothing or changed nothing)."""
        conn = self.connection()
        with conn.transaction():
            row = conn.execute(
                sql.SQL("SELECT {c} FROM {t} WHERE source = %s AND state IN ('sent', 'running') FOR UPDATE").format(
                    c=_SELECT_COLUMNS, t=self.table
                ),
                (self.source.name,),
            ).fetchone()
            if row is None:
                return None
            request = _request_from_row(row)
            if not notification_matches(request, note):
                return None
            update = apply_notification(request, note)
            if update is None:
                return None
            updated = conn.execute(
                sql.SQL(
                    "UPDATE {t} SET state = %s, progress = %s, detail = %s, last_notification_ms = %s,"
                    " started_at = CASE WHEN %s THEN coalesce(started_at, now()) ELSE started_at END,"
                    " finished_at = CASE WHEN %s THEN now() ELSE finished_at END,"
                    " paused_by = CASE WHEN %s THEN NULL ELSE paused_by END, updated_at = now()"
                    " WHERE id = %s RETURNING {c}"
                ).format(t=self.table, c=_SELECT_COLUMNS),
                (
                    update.state.value,
                    Jsonb({t: p.to_json() for t, p in update.progress.items()}),
                    update.detail,
                    update.last_notification_ms,
                    update.started,
                    update.finished,
                    update.clear_pause,
                    request.id,
                ),
            ).fetchone()
        assert updated is not None
        result = _request_from_row(updated)
        if result.state is not request.state:
            log.info(
                "snapshot request state",
                source=self.source.name,
                request=str(request.id),
                state=result.state.value,
                notification=note.type,
                detail=result.detail,
            )
        return result

    def fail(self, request_id: uuid.UUID, detail: str) -> bool:
        """Mark an in-flight request failed (e.g. no notification in time); True when it was."""
        cur = self.connection().execute(
            sql.SQL(
                "UPDATE {t} SET state = 'failed', detail = %s, finished_at = now(), updated_at = now()"
                " WHERE id = %s AND state IN ('sent', 'running')"
            ).format(t=self.table),
            (detail, request_id),
        )
        return cur.rowcount == 1

    def pause(self, by: str = "user") -> SnapshotRequest:
        """Send ``pause-snapshot`` for the running incremental request and record who paused it.

        Raises NothingToSignalError when no incremental request runs or it is already paused.
        """
        return self._pause_resume(pause=True, by=by)

    def resume(self, by: str | None = None) -> SnapshotRequest:
        """Send ``resume-snapshot`` for the paused request. ``by`` (``throttle``) resumes only a
        pause made by that party. Raises NothingToSignalError when nothing is paused (by it)."""
        return self._pause_resume(pause=False, by=by)

    def _pause_resume(self, pause: bool, by: str | None) -> SnapshotRequest:
        conn = self.connection()
        with conn.transaction():
            self._lock(conn)
            row = conn.execute(
                sql.SQL("SELECT {c} FROM {t} WHERE source = %s AND state IN ('sent', 'running') FOR UPDATE").format(
                    c=_SELECT_COLUMNS, t=self.table
                ),
                (self.source.name,),
            ).fetchone()
            request = _request_from_row(row) if row is not None else None
            if request is None or request.kind is not SnapshotKind.INCREMENTAL:
                raise NothingToSignalError("no incremental snapshot is in flight")
            if pause and request.paused_by is not None:
                raise NothingToSignalError(f"the snapshot is already paused (by {request.paused_by})")
            if not pause and (request.paused_by is None or (by is not None and request.paused_by != by)):
                raise NothingToSignalError("the snapshot is not paused" + (f" by {by}" if by else ""))
            signal = "pause-snapshot" if pause else "resume-snapshot"
            self._insert_signal(conn, str(uuid.uuid4()), signal, None)
            updated = conn.execute(
                sql.SQL("UPDATE {t} SET paused_by = %s, updated_at = now() WHERE id = %s RETURNING {c}").format(
                    t=self.table, c=_SELECT_COLUMNS
                ),
                (by if pause else None, request.id),
            ).fetchone()
        assert updated is not None
        log.info(
            "snapshot " + ("paused" if pause else "resumed"),
            source=self.source.name,
            request=str(request.id),
            by=by or "user",
        )
        return _request_from_row(updated)

    def stop(self, request_id: uuid.UUID | None = None) -> list[SnapshotRequest]:
        """Stop ``request_id`` (default: the in-flight request and every queued one).

        A queued request is marked stopped at once; an in-flight incremental one gets a
        ``stop-snapshot`` signal and is stopped when Debezium reports ABORTED. Blocking
        snapshots cannot be stopped (Debezium ignores the signal for them). Returns the
        requests acted on.
        """
        conn = self.connection()
        acted: list[SnapshotRequest] = []
        with conn.transaction():
            self._lock(conn)
            where: sql.Composable = sql.SQL("source = %s AND state IN ('queued', 'sent', 'running')")
            params: list[Any] = [self.source.name]
            if request_id is not None:
                where = sql.SQL("{} AND id = %s").format(where)
                params.append(request_id)
            rows = conn.execute(
                sql.SQL("SELECT {c} FROM {t} WHERE {w} ORDER BY seq FOR UPDATE").format(
                    c=_SELECT_COLUMNS, t=self.table, w=where
                ),
                params,
            ).fetchall()
            for row in rows:
                request = _request_from_row(row)
                if request.state is RequestState.QUEUED:
                    updated = conn.execute(
                        sql.SQL(
                            "UPDATE {t} SET state = 'stopped', detail = 'stopped before it was sent',"
                            " finished_at = now(), updated_at = now() WHERE id = %s RETURNING {c}"
                        ).format(t=self.table, c=_SELECT_COLUMNS),
                        (request.id,),
                    ).fetchone()
                elif request.kind is SnapshotKind.INCREMENTAL and not request.stop_requested:
                    self._insert_signal(conn, str(uuid.uuid4()), "stop-snapshot", stop_snapshot_data(request.kind))
                    updated = conn.execute(
                        sql.SQL(
                            "UPDATE {t} SET stop_requested = true, updated_at = now() WHERE id = %s RETURNING {c}"
                        ).format(t=self.table, c=_SELECT_COLUMNS),
                        (request.id,),
                    ).fetchone()
                else:
                    continue
                assert updated is not None
                acted.append(_request_from_row(updated))
        for request in acted:
            log.info(
                "snapshot stop requested", source=self.source.name, request=str(request.id), state=request.state.value
            )
        return acted


# =========================================================================== Kafka


class KafkaConsumerLike(Protocol):
    """The part of ``confluent_kafka.Consumer`` used here."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...
    def get_watermark_offsets(self, partition: Any, timeout: float | None = None, cached: bool = False) -> Any: ...
    def offsets_for_times(self, partitions: list[Any], timeout: float | None = None) -> list[Any]: ...
    def assign(self, partitions: list[Any]) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]: ...
    def close(self) -> None: ...


def _new_consumer(config: dict[str, Any]) -> KafkaConsumerLike:
    from confluent_kafka import Consumer  # noqa: PLC0415 - keep Kafka out of import time for pure users

    return cast(KafkaConsumerLike, Consumer(config))


class NotificationReader:
    """The coordinator's own consumer of a source's notification topic (no group
    subscription: partitions are assigned by hand, nothing is committed).

    :meth:`seek` sets where reading (re)starts (epoch ms, resolved with ``offsets_for_times``;
    the end of the topic when nothing is that new); :meth:`read` returns the notifications
    available within ``timeout_s``. The topic is created by Connect with the first
    notification, so a missing topic is retried at the next read.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, str],
        topic: str,
        client_id: str,
        factory: Callable[[dict[str, Any]], KafkaConsumerLike] = _new_consumer,
        avro_reader: Callable[[bytes], dict[str, Any]] | None = None,
    ) -> None:
        self.topic = topic
        self._avro = avro_reader
        self._config: dict[str, Any] = {
            **kafka_config,
            "group.id": f"{client_id}-notifications",
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
        }
        self._factory = factory
        self._consumer: KafkaConsumerLike | None = None
        self._since_ms: int | None = None
        self._assigned = False

    def seek(self, since_ms: int) -> None:
        """Restart reading at the first notification at or after ``since_ms`` (next :meth:`read`)."""
        self._since_ms = since_ms
        self._assigned = False

    def _assign(self) -> bool:
        from confluent_kafka import OFFSET_END, TopicPartition  # noqa: PLC0415

        if self._consumer is None:
            self._consumer = self._factory(self._config)
        meta = self._consumer.list_topics(self.topic, timeout=10)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        since = self._since_ms if self._since_ms is not None else int(time.time() * 1000)
        wanted = [TopicPartition(self.topic, p, since) for p in sorted(topic.partitions)]
        found = self._consumer.offsets_for_times(wanted, timeout=10)
        for tp in found:
            if tp.offset < 0:
                tp.offset = OFFSET_END
        self._consumer.assign(found)
        self._assigned = True
        return True

    def read(self, max_messages: int = 500, timeout_s: float = 0.5) -> list[Notification]:
        """Notifications available now (bounded by ``timeout_s``), in topic order."""
        if not self._assigned and not self._assign():
            return []
        assert self._consumer is not None
        out: list[Notification] = []
        for msg in self._consumer.consume(max_messages, timeout_s):
            if msg.error() is not None:
                log.debug("notification consumer error", error=str(msg.error()))
                continue
            note = parse_notification(self._value(msg.value()))
            if note is not None:
                out.append(note)
        return out

    def _value(self, raw: bytes | None) -> bytes | dict[str, Any] | None:
        """``raw``, or the record decoded from it when it is Confluent-wire-format Avro (an Avro
        source's connector writes its notifications with its value converter). A notification
        that cannot be decoded (registry unreachable, unknown schema) is logged and skipped:
        notifications are progress reports; requests time out without them."""
        if self._avro is None or not raw or raw[:1] != b"\x00":
            return raw
        try:
            return self._avro(raw)
        except Exception as exc:  # any decoding failure: skip this notification
            log.warning("undecodable Avro notification skipped", topic=self.topic, error=str(exc)[:300])
            return None

    def close(self) -> None:
        """Close the consumer; idempotent."""
        consumer, self._consumer = self._consumer, None
        self._assigned = False
        if consumer is not None:
            consumer.close()


@dataclass(frozen=True, slots=True)
class PipelineOffsets:
    """Where one pipeline stores its offsets: consumer group, target conninfo, control schema."""

    pipeline: str
    group: str
    conninfo: str
    control_schema: str


def read_stored_offsets(conn: psycopg.Connection[Any], control_schema: str, group: str) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> next offset`` stored by ``group`` in a PostgreSQL target's
    ``<control_schema>.offsets`` (empty when the table does not exist yet)."""
    try:
        rows = conn.execute(
            sql.SQL("SELECT topic, kafka_partition, next_offset FROM {} WHERE consumer_group = %s").format(
                _ident(control_schema, "offsets")
            ),
            (group,),
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    out: dict[tuple[str, int], int] = {}
    for row in rows:
        values = list(row.values()) if isinstance(row, dict) else list(row)
        out[(str(values[0]), int(values[1]))] = int(values[2])
    return out


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """Messages behind per ``(topic, partition)`` for one pipeline, and their ``total``."""

    pipeline: str
    partitions: dict[tuple[str, int], int]

    @property
    def total(self) -> int:
        """Sum over partitions."""
        return sum(self.partitions.values())

    def by_topic(self) -> dict[str, int]:
        """Sum per topic."""
        out: dict[str, int] = {}
        for (topic, _), lag in self.partitions.items():
            out[topic] = out.get(topic, 0) + lag
        return out


class ConsumerLagProbe:
    """Consumer lag of pipelines, measured from outside the runner: for every partition of
    the topics matching ``topic_regex`` (the pipeline's subscription), the high watermark minus
    the next offset the pipeline stored in its target (the source of truth, design invariant 1;
    a partition without a stored offset counts from its low watermark).

    Uses its own metadata client (never subscribes). Raises KafkaException/psycopg.Error on
    failures.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, str],
        topic_regex: str,
        targets: Sequence[PipelineOffsets],
        factory: Callable[[dict[str, Any]], KafkaConsumerLike] = _new_consumer,
    ) -> None:
        self._regex = re.compile(topic_regex)
        self._targets = list(targets)
        self._config: dict[str, Any] = {
            **kafka_config,
            "group.id": f"cdc-lag-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
        self._factory = factory
        self._consumer: KafkaConsumerLike | None = None

    def watermarks(self, timeout_s: float = 10.0) -> dict[tuple[str, int], tuple[int, int]]:
        """``(topic, partition) -> (low, high)`` for every matching topic."""
        from confluent_kafka import TopicPartition  # noqa: PLC0415

        if self._consumer is None:
            self._consumer = self._factory(self._config)
        meta = self._consumer.list_topics(timeout=timeout_s)
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for name, topic in meta.topics.items():
            if not self._regex.match(name) or topic.error is not None:
                continue
            for p in topic.partitions:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(name, p), timeout=timeout_s, cached=False
                )
                out[(name, p)] = (int(low), int(high))
        return out

    def read(self) -> list[ConsumerLag]:
        """The lag of every pipeline (one :class:`ConsumerLag` each)."""
        marks = self.watermarks()
        lags: list[ConsumerLag] = []
        for target in self._targets:
            with psycopg.connect(target.conninfo, autocommit=True, connect_timeout=10) as conn:
                stored = read_stored_offsets(conn, target.control_schema, target.group)
            lags.append(ConsumerLag(target.pipeline, lag_per_partition(marks, stored)))
        return lags

    def close(self) -> None:
        """Close the metadata client; idempotent."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def lag_per_partition(
    watermarks: Mapping[tuple[str, int], tuple[int, int]], stored: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """``high - max(stored, low)`` per partition, never negative (pure)."""
    return {tp: max(0, high - max(stored.get(tp, low), low)) for tp, (low, high) in watermarks.items()}


def read_wal_retained(conn: psycopg.Connection[Any], slot_name: str) -> int | None:
    """``pg_current_wal_lsn() - restart_lsn`` of ``slot_name`` in bytes (None: no such slot)."""
    row = conn.execute(
        "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s",
        (slot_name,),
    ).fetchone()
    if row is None:
        return None
    value = next(iter(row.values())) if isinstance(row, dict) else row[0]
    return int(value) if value is not None else None


def estimated_rows(conn: psycopg.Connection[Any], table: str) -> float | None:
    """Row estimate of ``schema.table``: ``pg_class.reltuples``, or ``n_live_tup`` before the
    first ANALYZE; None when the table does not exist."""
    ref = TableRef.parse(table)
    row = conn.execute(
        "SELECT c.reltuples::float8, s.n_live_tup::float8 FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (ref.schema, ref.table),
    ).fetchone()
    if row is None:
        return None
    values = list(row.values()) if isinstance(row, dict) else list(row)
    reltuples, live = values[0], values[1]
    if reltuples is not None and reltuples >= 0:
        return float(reltuples)
    return float(live) if live is not None else None


def publication_tables(conn: psycopg.Connection[Any], publication: str) -> set[str]:
    """``schema.table`` of every table in ``publication`` (``pg_publication_tables``)."""
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    ).fetchall()
    out: set[str] = set()
    for row in rows:
        values = list(row.values()) if isinstance(row, dict) else list(row)
        out.add(f"{values[0]}.{values[1]}")
    return out


# =========================================================================== the coordinator


class ConnectorInfo(Protocol):
    """The part of :class:`connectors.connect_client.ConnectClient` the coordinator reads."""

    def get_config(self, name: str) -> dict[str, str] | None: ...
    def status(self, name: str) -> Any: ...


class LagSource(Protocol):
    """Where throttling reads lag from (tests pass a fake)."""

    def __call__(self) -> LagReading: ...


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
    counts = dict.fromkeys((s.value for s in RequestState), 0)
    latest: dict[str, SnapshotRequest] = {}
    for request in requests:
        if request.origin in MARKER_ORIGINS:
            continue
        counts[request.state.value] += 1
        for table in request.tables:
            latest[table] = request
    for state, count in counts.items():
        metrics.SNAPSHOT_REQUESTS.labels(source, state).set(count)
    metrics.SNAPSHOT_THROTTLED.labels(source).set(1 if throttled else 0)
    for table, request in latest.items():
        progress = request.table_progress(table)
        if request.state is RequestState.QUEUED:
            state = TableState.QUEUED
        elif request.state.terminal and not progress.state.terminal:
            state = TableState.FAILED if request.state is RequestState.FAILED else TableState.STOPPED
        else:
            state = progress.state
        for candidate in TABLE_STATES:
            metrics.SNAPSHOT_TABLE_STATE.labels(source, table, candidate.value).set(1 if candidate is state else 0)
        rows = progress.rows_scanned if progress.rows_scanned is not None else rows_applied.get(table)
        if rows is not None:
            metrics.SNAPSHOT_ROWS.labels(source, table).set(rows)
        estimate = estimates.get(table)
        if state in (TableState.COMPLETED, TableState.EMPTY):
            metrics.SNAPSHOT_PROGRESS.labels(source, table).set(1.0)
        elif state is TableState.QUEUED:
            metrics.SNAPSHOT_PROGRESS.labels(source, table).set(0.0)
        elif rows is not None and estimate:
            metrics.SNAPSHOT_PROGRESS.labels(source, table).set(min(0.99, rows / estimate))
        if request.started_at is not None:
            end = request.finished_at or now
            metrics.SNAPSHOT_DURATION.labels(source, table).set(max(0.0, (end - request.started_at).total_seconds()))


class SnapshotCoordinator(PollingMonitor):
    """Drives the snapshot queue of one source (see the module docstring).

    Each poll (only while holding the source's coordinator lock, a session advisory lock on
    the source; otherwise it only exports metrics):

    1. take over: seek the notification reader to the oldest in-flight request's ``sent_at``
       minus ``notification_lookback_s`` (replays are idempotent, :func:`apply_notification`);
    2. apply notifications to the in-flight request;
    3. fail a request sent more than ``signal_ack_timeout_s`` ago with no notification;
    4. auto-snapshot: record the baseline once, then queue tables the connector captures
       (connector RUNNING, ``table.include.list`` and publication) for ``capture_settle_s``
       that no request covers yet (:meth:`SnapshotQueue.covered_tables`), and mark tables it
       stopped capturing for as long, so that capturing them again snapshots them again;
    5. throttle a running incremental snapshot (:class:`Throttle`);
    6. signal the next queued request when none is in flight.

    ``connect`` (Kafka Connect REST) is needed for auto-snapshots; ``lag`` for throttling
    (default: none); ``reader`` reads notifications; ``rows_applied`` maps a source table to
    the snapshot reads this process applied (for progress); all optional for tests.
    """

    kind: ClassVar[str] = "snapshot"

    def __init__(
        self,
        source: SourceSettings,
        queue: SnapshotQueue,
        reader: NotificationReader | None,
        *,
        config: SnapshotSettings | None = None,
        connect: ConnectorInfo | None = None,
        lag: LagSource | None = None,
        rows_applied: Callable[[str], float | None] | None = None,
        close_hooks: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.config = config or SnapshotSettings()
        super().__init__(source.name, self.config.interval_s)
        self.source = source
        self.queue = queue
        self.reader = reader
        self.connect = connect
        self.lag = lag
        self.rows_applied = rows_applied
        self.throttle = Throttle(
            self.config.max_wal_retained_bytes, self.config.max_consumer_lag, self.config.resume_ratio
        )
        self._close_hooks = list(close_hooks)
        self._lock_conn: Conn | None = None
        self._leader = False
        self._needs_seek = True
        self._first_captured: dict[str, float] = {}
        self._first_uncaptured: dict[str, float] = {}
        self._applied_base: dict[tuple[uuid.UUID, str], float] = {}
        self._poll_lock = threading.Lock()
        self.last_lag: LagReading | None = None

    # -- leadership

    def _lock_key(self) -> str:
        return f"cdc-snapshot-coordinator:{self.source.name}"

    def is_leader(self) -> bool:
        """Take (or keep) the source's coordinator lock; False when another process holds it."""
        conn = self._lock_conn
        if conn is not None and (conn.closed or conn.broken):
            self._drop_lock_conn()
            conn = None
        if conn is None:
            conn = psycopg.connect(
                source_conninfo(self.source, f"cdc-pipeline snapshot coordinator {self.source.name}"),
                autocommit=True,
                row_factory=dict_row,
            )
            self._lock_conn = conn
            self._leader = False
        if self._leader:
            try:
                conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                self._drop_lock_conn()
                return False
        row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS ok", (self._lock_key(),)).fetchone()
        self._leader = bool(row and row["ok"])
        if self._leader:
            log.info("snapshot coordinator took over", source=self.source.name)
            self._needs_seek = True
        return self._leader

    def _drop_lock_conn(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self._leader = False
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _seek_reader(self) -> None:
        if self.reader is None:
            return
        inflight = self.queue.in_flight()
        since = time.time()
        if inflight is not None and inflight.sent_at is not None:
            since = min(since, inflight.sent_at.timestamp())
        self.reader.seek(int((since - self.config.notification_lookback_s) * 1000))
        self._needs_seek = False

    # -- lifecycle

    def close(self) -> None:
        """Release the lock connection, the queue connection, the Kafka clients."""
        self._drop_lock_conn()
        self.queue.close()
        if self.reader is not None:
            self.reader.close()
        for hook in self._close_hooks:
            with contextlib.suppress(Exception):
                hook()

    # -- the poll

    def poll_once(self) -> None:
        """One coordination step (see the class docstring). Each step's failure is logged and
        counted in ``cdc_monitor_poll_errors_total{monitor="snapshot",check=<step>}`` and the
        other steps still run (a Kafka Connect outage must not stop throttling); raises when
        the source cannot be reached for the lock (the polling loop logs and counts it)."""
        with self._poll_lock:
            failed = False
            if self.is_leader():
                steps: list[tuple[str, Callable[[], object]]] = [
                    ("notifications", self._drain_notifications),
                    ("ack_timeout", self._check_ack_timeout),
                    ("throttle", self._throttle_step),
                    ("send", self.queue.send_next),
                ]
                if self.config.auto_snapshot_new_tables:
                    steps.insert(2, ("auto_snapshot", self._auto_snapshot))
                for name, step in steps:
                    failed |= not self._guarded(name, step)
            failed |= not self._guarded("export", self._export)
            self.healthy = not failed

    def _guarded(self, name: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except Exception as exc:  # one step's failure must not stop the others
            self.last_error = f"{name}: {type(exc).__name__}: {exc}"[:500]
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, self.name, name).inc()
            log.warning(
                "snapshot coordination step failed",
                source=self.source.name,
                step=name,
                error=f"{type(exc).__name__}: {str(exc)[:300]}",
            )
            if isinstance(exc, psycopg.OperationalError):
                self.queue.close()
            return False
        return True

    def _drain_notifications(self) -> None:
        if self.reader is None:
            return
        if self._needs_seek:
            self._seek_reader()
        for _ in range(20):  # bounded: at most 20 x 500 notifications per poll
            notes = self.reader.read()
            for note in notes:
                updated = self.queue.apply(note)
                if updated is not None and note.type == "STARTED":
                    self._remember_applied_base(updated)
            if len(notes) < 500:
                return

    def _check_ack_timeout(self) -> None:
        inflight = self.queue.in_flight()
        if inflight is None or inflight.state is not RequestState.SENT or inflight.sent_at is None:
            return
        waited = time.time() - inflight.sent_at.timestamp()
        if waited > self.config.signal_ack_timeout_s:
            detail = (
                f"no notification {waited:.0f} s after the signal (is connector {self.source.resolved_connector_name} "
                "running, with notification.enabled.channels=sink?)"
            )
            if self.queue.fail(inflight.id, detail):
                log.warning("snapshot request failed", source=self.source.name, request=str(inflight.id), detail=detail)

    def captured_tables(self) -> set[str] | None:
        """Tables the connector captures now: in its ``table.include.list`` while it RUNS, and in
        the publication (heartbeat and signal tables excluded); None without Connect access."""
        if self.connect is None:
            return None
        name = self.source.resolved_connector_name
        config = self.connect.get_config(name)
        if config is None:
            return None
        status = self.connect.status(name)
        if not getattr(status, "healthy", False):
            return None
        conn = self.queue.connection()
        published = publication_tables(conn, self.source.resolved_publication_name)
        published -= {str(heartbeat_table(self.source)), str(signal_table(self.source))}
        return captured_by_include_list(config.get("table.include.list", ""), published)

    def _auto_snapshot(self) -> None:
        captured = self.captured_tables()
        if captured is None:
            return
        if not self.queue.has_baseline():
            self.queue.record_baseline(sorted(captured))
            return
        now = time.monotonic()
        settle = self.config.capture_settle_s
        self._first_captured = {t: at for t, at in self._first_captured.items() if t in captured}
        self._first_uncaptured = {t: at for t, at in self._first_uncaptured.items() if t not in captured}
        covered = self.queue.covered_tables()
        for table in captured:
            self._first_captured.setdefault(table, now)
        for table in covered - captured:
            self._first_uncaptured.setdefault(table, now)
        gone = sorted(t for t in covered - captured if now - self._first_uncaptured[t] >= settle)
        if gone:
            self.queue.record_uncaptured(gone)
        new = sorted(t for t in captured - covered if now - self._first_captured[t] >= settle)
        if new:
            self.queue.enqueue(new, SnapshotKind.INCREMENTAL, origin="auto")

    def read_lag(self) -> LagReading:
        """The current throttle inputs (``LagReading()`` when no lag source is configured)."""
        return self.lag() if self.lag is not None else LagReading()

    def _throttle_step(self) -> None:
        inflight = self.queue.in_flight()
        if (
            inflight is None
            or inflight.state is not RequestState.RUNNING
            or inflight.kind is not SnapshotKind.INCREMENTAL
            or inflight.stop_requested
        ):
            return
        reading = self.read_lag()
        self.last_lag = reading
        action = self.throttle.decide(reading, inflight.paused_by == "throttle", inflight.paused_by == "user")
        try:
            if action is ThrottleAction.PAUSE:
                reasons = self.throttle.reasons(reading)
                self.queue.pause(by="throttle")
                for reason in reasons:
                    metrics.SNAPSHOT_THROTTLE_PAUSES.labels(self.source.name, reason).inc()
                log.warning(
                    "snapshot paused for lag",
                    source=self.source.name,
                    request=str(inflight.id),
                    reasons=reasons,
                    wal_retained_bytes=reading.wal_retained_bytes,
                    consumer_lag=reading.consumer_lag,
                )
            elif action is ThrottleAction.RESUME:
                self.queue.resume(by="throttle")
                log.info(
                    "snapshot resumed, lag below thresholds",
                    source=self.source.name,
                    request=str(inflight.id),
                    wal_retained_bytes=reading.wal_retained_bytes,
                    consumer_lag=reading.consumer_lag,
                )
        except NothingToSignalError as exc:
            log.debug("throttle signal skipped", source=self.source.name, reason=str(exc))

    def _remember_applied_base(self, request: SnapshotRequest) -> None:
        if self.rows_applied is None:
            return
        for table in request.tables:
            value = self.rows_applied(table)
            if value is not None:
                self._applied_base[(request.id, table)] = value

    def _export(self) -> None:
        requests = self.queue.recent(limit=200)
        conn = self.queue.connection()
        estimates: dict[str, float | None] = {}
        applied: dict[str, float] = {}
        latest: dict[str, SnapshotRequest] = {r_table: r for r in requests for r_table in r.tables}
        for table, request in latest.items():
            if request.state.in_flight:
                estimates[table] = estimated_rows(conn, table)
                if self.rows_applied is not None:
                    value = self.rows_applied(table)
                    base = self._applied_base.get((request.id, table))
                    if value is not None and base is not None:
                        applied[table] = max(0.0, value - base)
        inflight = next((r for r in requests if r.state.in_flight), None)
        throttled = inflight is not None and inflight.paused_by == "throttle"
        export_snapshot_metrics(self.source.name, requests, estimates, applied, datetime.now().astimezone(), throttled)

    # -- waiting

    def wait_for(
        self,
        request_ids: Sequence[uuid.UUID],
        timeout_s: float,
        on_poll: Callable[[list[SnapshotRequest]], None] | None = None,
    ) -> list[SnapshotRequest]:
        """Poll (acting when leader) until every request is terminal or ``timeout_s`` passed;
        returns their last states (a request not found is left out)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.poll_once()
            except (psycopg.Error, OSError) as exc:
                log.warning("snapshot coordination step failed", source=self.source.name, error=str(exc)[:300])
            found = [r for r in (self.queue.get(i) for i in request_ids) if r is not None]
            if on_poll is not None:
                on_poll(found)
            if all(r.state.terminal for r in found) or time.monotonic() >= deadline:
                return found
            time.sleep(min(self.config.interval_s, max(0.0, deadline - time.monotonic())))


# =========================================================================== wiring


def pipelines_of(settings: Settings, source: SourceSettings) -> list[PipelineSettings]:
    """The pipelines reading ``source``."""
    return [p for p in settings.pipelines if p.source == source.name]


def pipeline_offsets(settings: Settings, source: SourceSettings) -> list[PipelineOffsets]:
    """Offset locations of the PostgreSQL-target pipelines of ``source`` (others are skipped)."""
    from sinks.factory import UnsupportedTargetError, target_conninfo  # noqa: PLC0415 - app imports the runner

    out: list[PipelineOffsets] = []
    for pipe in pipelines_of(settings, source):
        try:
            info = target_conninfo(pipe.target)
        except UnsupportedTargetError:
            continue
        out.append(PipelineOffsets(pipe.name, pipe.resolved_consumer_group, info, pipe.target.control_schema))
    return out


def lag_reader(settings: Settings, source: SourceSettings, probe: ConsumerLagProbe | None) -> LagSource:
    """A :class:`LagSource`: the slot's retained WAL (one query on the source) and the worst
    pipeline's consumer lag (``probe``); a reading that fails is None (logged)."""

    def read() -> LagReading:
        wal: int | None = None
        lag: int | None = None
        try:
            with psycopg.connect(source_conninfo(source, "cdc-pipeline snapshot throttle"), autocommit=True) as conn:
                wal = read_wal_retained(conn, source.resolved_slot_name)
        except psycopg.Error as exc:
            log.warning("slot WAL not measured", source=source.name, error=str(exc)[:300])
        if probe is not None:
            try:
                lags = probe.read()
                lag = max((x.total for x in lags), default=0)
            except Exception as exc:  # Kafka or target failures: the reading is unknown, never "zero"
                log.warning("consumer lag not measured", source=source.name, error=str(exc)[:300])
        return LagReading(wal, lag)

    return read


def topic_regex(source: SourceSettings) -> str:
    """The change-topic regex of the pipelines' subscription (``^<prefix>\\..+``)."""
    from connectors.debezium import topic_pattern  # noqa: PLC0415 - app imports the runner

    return topic_pattern(source)


def applied_reads(settings: Settings, source: SourceSettings) -> Callable[[str], float | None]:
    """Snapshot reads (op ``r``) this process applied per source table, from
    ``cdc_events_applied_total`` of the first pipeline of ``source`` (routed target table)."""
    from pipeline.core.events import TableId  # noqa: PLC0415
    from pipeline.transform.transformer import build_transformer  # noqa: PLC0415

    pipes = pipelines_of(settings, source)
    if not pipes:
        return lambda _table: None
    pipe = pipes[0]
    try:
        transformer = build_transformer(pipe.transforms, pipe.mask_salt)
    except ValueError:
        return lambda _table: None

    def read(table: str) -> float | None:
        ref = TableRef.parse(table)
        tid = TableId(ref.schema, ref.table)
        target = transformer.target_for(tid) or TableId(pipe.target.schema_name, ref.table)
        return metrics.REGISTRY.get_sample_value(
            "cdc_events_applied_total", {"pipeline": pipe.name, "table": str(target), "op": "r"}
        )

    return read


def _notification_avro(source: SourceSettings) -> Callable[[bytes], dict[str, Any]] | None:
    """For an Avro source (``format: avro``): a reader of its Avro notification records through
    its schema registry; None for JSON sources."""
    if source.format != "avro" or source.schema_registry is None:
        return None
    from pipeline.decode.avro import AvroReader  # noqa: PLC0415 - only Avro sources need it
    from pipeline.decode.registry import SchemaRegistryClient  # noqa: PLC0415

    reader = AvroReader(SchemaRegistryClient(source.schema_registry, retry_budget_s=5.0).schema)

    def read(raw: bytes) -> dict[str, Any]:
        _, _, value = reader.read(raw)
        if not isinstance(value, dict):
            raise ValueError("an Avro notification is not a record")
        return value

    return read


def build_coordinator(
    settings: Settings,
    source: SourceSettings,
    config: SnapshotSettings | None = None,
    *,
    connect: ConnectorInfo | None = None,
    with_lag: bool = True,
) -> SnapshotCoordinator:
    """A coordinator for ``source`` wired from ``settings`` (not started): its queue, a
    notification reader on :func:`connectors.debezium.notification_topic`, a lag source
    (slot WAL + pipelines' consumer lag) when ``with_lag``, and ``connect`` (a Kafka Connect
    client; default: a new :class:`connectors.connect_client.ConnectClient`, closed with the
    coordinator) for auto-snapshots."""
    from connectors.connect_client import ConnectClient, RetryPolicy  # noqa: PLC0415

    cfg = config or SnapshotSettings()
    hooks: list[Callable[[], None]] = []
    client_id = f"cdc-snapshot-{source.name}-{uuid.uuid4().hex[:6]}"
    reader = NotificationReader(
        settings.kafka.client_config(), notification_topic(source), client_id, avro_reader=_notification_avro(source)
    )
    if connect is None:
        own = ConnectClient(settings.connect, retry=RetryPolicy(max_attempts=2, max_elapsed_s=5.0))
        hooks.append(own.close)
        connect = own
    lag: LagSource | None = None
    if with_lag and (cfg.max_consumer_lag is not None or cfg.max_wal_retained_bytes is not None):
        probe = (
            ConsumerLagProbe(settings.kafka.client_config(), topic_regex(source), pipeline_offsets(settings, source))
            if cfg.max_consumer_lag is not None
            else None
        )
        if probe is not None:
            hooks.append(probe.close)
        lag = lag_reader(settings, source, probe)
    return SnapshotCoordinator(
        source,
        SnapshotQueue(source),
        reader,
        config=cfg,
        connect=connect,
        lag=lag,
        rows_applied=applied_reads(settings, source),
        close_hooks=hooks,
    )
