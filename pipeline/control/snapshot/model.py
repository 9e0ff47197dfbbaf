"""The snapshot coordinator's data model (pure): its settings, request and table states, a queued
request and a Debezium notification. Debezium's notification shapes are described in
``docs/design/snapshot.md``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipeline.core.settings.models import SnapshotConfig

MARKER_ORIGINS = frozenset({"baseline", "uncaptured"})
"""Request origins that only record coverage; they are never signalled."""
INCREMENTAL_AGGREGATE = "Incremental Snapshot"
BLOCKING_AGGREGATE = "Initial Snapshot"
CLOCK_SKEW_MS = 5000
"""Tolerance between the Connect worker's clock (notification timestamps) and the source's."""


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
    """A Debezium notification (sink channel JSON; ``docs/design/snapshot.md``, "Debezium notifications").

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
