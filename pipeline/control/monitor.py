"""Replication-slot lag monitor, heartbeat lag, publication health and Kafka Connect states.

The replication slot is the most dangerous part of a PostgreSQL CDC setup: a stopped or stuck
consumer makes the source keep WAL until its disk fills. This module makes that risk visible
as Prometheus metrics (all defined in :mod:`pipeline.core.metrics`), in three layers:

1. **Pure functions** (no I/O, unit-tested): :func:`parse_lsn`, :class:`WalRateWindow`,
   :func:`evaluate_slot`, :func:`seconds_until_lost`, :func:`heartbeat_age_seconds`,
   :func:`partition_lag` and :class:`RestartBackoff`.
2. **SQL readers** on a read-only connection: :func:`read_server_sample` (one statement per
   poll), :func:`read_heartbeat`, and :func:`connectors.source_prep.check_publication`.
3. **Pollers** on background threads: :class:`SlotMonitor` (one per source, with its
   :class:`HeartbeatProbe` per pipeline target) and :class:`ConnectorStateMonitor` (all
   sources' connectors, with optional auto-restart of FAILED tasks). :func:`build_monitors`
   wires them from :class:`~pipeline.core.settings.root.Settings` into a :class:`MonitorGroup`::

       group = build_monitors(settings, sources=[pipeline.source])
       group.start()          # first poll at once, then every monitor.interval_s
       ...
       group.stop()           # joins the threads (bounded) and closes connections

   A poll never raises out of its thread: failures are logged with structlog, counted in
   ``cdc_monitor_poll_errors_total`` and retried at the next interval; a dropped database
   connection is reopened at the next poll.

PostgreSQL facts relied on (PostgreSQL 15 documentation, section "pg_replication_slots" of
"System Views", unless noted):

- ``restart_lsn`` is the oldest WAL the slot's consumer may still need: the server keeps all
  WAL from there (unless ``max_slot_wal_keep_size`` says otherwise), so
  ``pg_current_wal_lsn() - restart_lsn`` is the WAL the slot retains on disk.
  ``confirmed_flush_lsn`` is what the consumer has confirmed; the distance from the current
  LSN is how far behind it is. Both are ``pg_lsn`` values: ``XXXXXXXX/YYYYYYYY`` in hex, a
  64-bit byte position ("pg_lsn Type").
- ``wal_status`` is ``reserved`` (within ``max_wal_size``), ``extended`` (beyond it but kept
  for the slot or ``wal_keep_size``), ``unreserved`` (no longer kept; removed at the next
  checkpoint; may still return to reserved) or ``lost`` (removed: the slot is unusable).
- ``safe_wal_size`` is the number of bytes that can still be written to WAL before the slot
  is in danger of becoming ``lost``; NULL for lost slots and when ``max_slot_wal_keep_size``
  is -1 ("Server Configuration" > "Replication" > "max_slot_wal_keep_size": -1, the default,
  means slots may retain an unlimited amount of WAL). It can be negative for an
  ``unreserved`` slot.
- ``inactive_since`` and ``invalidation_reason`` exist from PostgreSQL 17 only; their presence
  is detected from the view's columns.
- ``pg_stat_replication_slots`` ("Monitoring Database Activity", PostgreSQL 14+) holds
  cumulative spill/stream/total counters of logical decoding per slot.

Heartbeat lag: Debezium's ``heartbeat.action.query`` upserts ``(source, ts = now())`` into the
source's ``<control_schema>.heartbeat`` (:mod:`connectors.debezium`), and the pipeline applies
that table to its target like any other. The age of the row *in the target*, measured against
the source's ``now()`` (one clock on both sides of the subtraction), is the end-to-end lag; it
stays true on an idle database because the heartbeat keeps writing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from connectors.connect_client import (
    ConnectClient,
    ConnectError,
    ConnectorNotFoundError,
    ConnectorStatus,
    RetryPolicy,
)
from connectors.source_prep import CheckResult, check_publication
from connectors.source_prep import conninfo as source_conninfo
from pipeline.core import metrics
from pipeline.core.events import TableId
from pipeline.core.logs import get_logger
from pipeline.core.retry import exponential_cap
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from pipeline.transform.transformer import build_transformer

log = get_logger("pipeline.control.monitor")

Conn = psycopg.Connection[dict[str, Any]]
Connect = Callable[[], Conn]

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
"""Values of ``pg_replication_slots.wal_status`` (PostgreSQL 13+)."""

CONNECTOR_STATES = ("UNASSIGNED", "RUNNING", "PAUSED", "STOPPED", "FAILED", "RESTARTING", "ABSENT")
"""Connector states of the Kafka Connect REST API, plus ``ABSENT`` (HTTP 404)."""

TASK_STATES = ("UNASSIGNED", "RUNNING", "PAUSED", "FAILED", "RESTARTING")
"""Task states of the Kafka Connect REST API."""

READ_ONLY_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=10000"
"""Server options of every monitor connection: read-only transactions, 10 s statement limit."""

OPTIONAL_SLOT_COLUMNS = ("inactive_since", "invalidation_reason")
"""``pg_replication_slots`` columns read only where the server has them (PostgreSQL 17+)."""

SLOT_STAT_COLUMNS = tuple(metrics.SLOT_STAT_COUNTERS)
"""``pg_stat_replication_slots`` counters exported (PostgreSQL 14+)."""


# =========================================================================== pure layer


def parse_lsn(text: str) -> int:
    """The byte position of a ``pg_lsn`` text ``'16/B374D848'`` (two hex halves of 32 bits).

    Raises ValueError for anything else ("pg_lsn Type").
    """
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not a pg_lsn: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """The ``pg_lsn`` text of byte position ``position`` (inverse of :func:`parse_lsn`)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class WalSample:
    """One WAL position ``lsn`` (bytes) observed at monotonic time ``at_s`` (seconds)."""

    at_s: float
    lsn: int


class WalRateWindow:
    """WAL generation rate, bytes/s, over a sliding window of ``window_s`` seconds.

    Samples older than the window are dropped, but the two newest are always kept so that a
    poll interval longer than the window still yields a rate. A position going backwards
    (another server behind the same address, e.g. after a failover) restarts the window.
    Raises ValueError when ``window_s`` is not positive.
    """

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._samples: deque[WalSample] = deque()

    @property
    def samples(self) -> tuple[WalSample, ...]:
        """The samples in the window, oldest first."""
        return tuple(self._samples)

    def add(self, at_s: float, lsn: int) -> None:
        """Record position ``lsn`` (bytes) at monotonic time ``at_s`` (seconds)."""
        if self._samples:
            last = self._samples[-1]
            if lsn < last.lsn or at_s < last.at_s:
                self._samples.clear()
            elif at_s == last.at_s:
                self._samples.pop()
        self._samples.append(WalSample(at_s, lsn))
        while len(self._samples) > 2 and self._samples[0].at_s < at_s - self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Bytes/s between the oldest and newest sample; None with fewer than two samples."""
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        elapsed = last.at_s - first.at_s
        if elapsed <= 0:
            return None
        return (last.lsn - first.lsn) / elapsed


@dataclass(frozen=True, slots=True)
class SlotRow:
    """One row of ``pg_replication_slots``; LSNs as byte positions (None where NULL)."""

    slot_name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None
    safe_wal_size: int | None
    inactive_since: datetime | None = None
    invalidation_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ServerSample:
    """What one poll reads from the source server.

    ``current_lsn`` is ``pg_current_wal_lsn()`` (bytes); ``server_now`` the server's ``now()``;
    ``max_slot_wal_keep_size_mb`` the setting in MB (-1: unlimited; None before PostgreSQL 13,
    which had no limit); ``slot`` None when the slot does not exist; ``slot_stats`` the
    ``pg_stat_replication_slots`` counters (None where unavailable).
    """

    current_lsn: int
    server_now: datetime
    max_slot_wal_keep_size_mb: int | None
    slot: SlotRow | None
    slot_stats: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class SlotReport:
    """The evaluated state of one slot.

    Sizes in bytes, rate in bytes/s, times in seconds. ``safe_wal_size_bytes`` is +inf when
    retention is unlimited, 0 once lost, None when unknown (no slot, or never reserved WAL).
    ``seconds_until_lost`` is +inf when unlimited or when no WAL is being written, 0 once
    lost, NaN when unknown (no rate yet, or no slot).
    """

    slot_name: str
    exists: bool
    active: bool
    wal_status: str | None
    retained_bytes: int | None
    behind_bytes: int | None
    safe_wal_size_bytes: float | None
    wal_rate_bytes_per_s: float | None
    seconds_until_lost: float
    unlimited: bool
    current_lsn: int
    inactive_since: datetime | None = None
    invalidation_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: +inf as the string ``"inf"``, NaN as None, times in ISO 8601."""
        out: dict[str, Any] = {key: _json_value(value) for key, value in asdict(self).items()}
        out["current_lsn"] = format_lsn(self.current_lsn)
        return out


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def seconds_until_lost(
    safe_wal_size: float | None, wal_rate: float | None, *, unlimited: bool, wal_status: str | None
) -> float:
    """Estimated seconds until the slot is lost: ``safe_wal_size`` (bytes) / ``wal_rate`` (bytes/s).

    0 when ``wal_status`` is ``lost`` or nothing is safe any more (``safe_wal_size <= 0``,
    possible for an ``unreserved`` slot); +inf when ``unlimited`` (``max_slot_wal_keep_size =
    -1``) or when no WAL is being generated (rate <= 0); NaN when unknown (no safe size, or
    no rate yet).
    """
    if wal_status == "lost":
        return 0.0
    if unlimited:
        return math.inf
    if safe_wal_size is None:
        return math.nan
    if safe_wal_size <= 0:
        return 0.0
    if math.isinf(safe_wal_size):
        return math.inf
    if wal_rate is None:
        return math.nan
    if wal_rate <= 0:
        return math.inf
    return safe_wal_size / wal_rate


def evaluate_slot(slot_name: str, sample: ServerSample, wal_rate: float | None) -> SlotReport:
    """Turn one :class:`ServerSample` and the current WAL rate (bytes/s) into a :class:`SlotReport`.

    Retained = current - ``restart_lsn``; behind = current - ``confirmed_flush_lsn`` (both
    clamped at 0, None where the LSN is NULL, e.g. a lost slot).
    """
    unlimited = sample.max_slot_wal_keep_size_mb is None or sample.max_slot_wal_keep_size_mb < 0
    row = sample.slot
    if row is None:
        return SlotReport(
            slot_name=slot_name,
            exists=False,
            active=False,
            wal_status=None,
            retained_bytes=None,
            behind_bytes=None,
            safe_wal_size_bytes=None,
            wal_rate_bytes_per_s=wal_rate,
            seconds_until_lost=math.nan,
            unlimited=unlimited,
            current_lsn=sample.current_lsn,
        )
    retained = None if row.restart_lsn is None else max(0, sample.current_lsn - row.restart_lsn)
    behind = None if row.confirmed_flush_lsn is None else max(0, sample.current_lsn - row.confirmed_flush_lsn)
    safe: float | None
    if row.wal_status == "lost":
        safe = 0.0
    elif unlimited:
        safe = math.inf
    elif row.safe_wal_size is None:
        safe = None
    else:
        safe = float(row.safe_wal_size)
    return SlotReport(
        slot_name=slot_name,
        exists=True,
        active=row.active,
        wal_status=row.wal_status,
        retained_bytes=retained,
        behind_bytes=behind,
        safe_wal_size_bytes=safe,
        wal_rate_bytes_per_s=wal_rate,
        seconds_until_lost=seconds_until_lost(safe, wal_rate, unlimited=unlimited, wal_status=row.wal_status),
        unlimited=unlimited,
        current_lsn=sample.current_lsn,
        inactive_since=row.inactive_since,
        invalidation_reason=row.invalidation_reason,
    )


def heartbeat_age_seconds(heartbeat_ts: datetime, now: datetime) -> float:
    """Seconds from ``heartbeat_ts`` (the heartbeat row's ``ts``, as applied in the target) to
    ``now`` (the source's ``now()``), never negative.

    Both must be timezone-aware; raises TypeError otherwise (Python refuses to subtract).
    """
    if heartbeat_ts.tzinfo is None or now.tzinfo is None:
        raise TypeError("heartbeat_age_seconds needs timezone-aware datetimes")
    return max(0.0, (now - heartbeat_ts).total_seconds())


class RestartBackoff:
    """Exponential backoff between automatic restarts of one connector's FAILED tasks.

    The first restart is allowed at once; restart ``n`` (1-based) is followed by a pause of
    ``min(max_s, initial_s * 2**(n-1))`` seconds. After the connector has been healthy for
    ``reset_after_s`` seconds the sequence starts over. Times are monotonic seconds.
    """

    def __init__(self, initial_s: float = 30.0, max_s: float = 1800.0, reset_after_s: float = 600.0) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.attempts = 0
        self._next_at = -math.inf
        self._healthy_since: float | None = None

    def ready(self, now: float) -> bool:
        """True when a restart is allowed at ``now``."""
        return now >= self._next_at

    def seconds_left(self, now: float) -> float:
        """Seconds until the next restart is allowed (0 when it is)."""
        return max(0.0, self._next_at - now)

    def record_restart(self, now: float) -> float:
        """Count a restart made at ``now``; returns the pause (seconds) before the next one."""
        self.attempts += 1
        delay = exponential_cap(self.initial_s, self.max_s, self.attempts - 1)
        self._next_at = now + delay
        self._healthy_since = None
        return delay

    def record_healthy(self, now: float) -> None:
        """The connector is healthy at ``now``; resets the sequence once healthy long enough."""
        if self._healthy_since is None:
            self._healthy_since = now
        if now - self._healthy_since >= self.reset_after_s:
            self.attempts = 0
            self._next_at = -math.inf


# =========================================================================== SQL layer


def read_only_conninfo(base: str) -> str:
    """``base`` (a libpq conninfo or URL) with :data:`READ_ONLY_OPTIONS` added."""
    return make_conninfo(base, options=READ_ONLY_OPTIONS)


def connect_read_only(conninfo: str) -> Conn:
    """An autocommit, read-only connection returning dict rows.

    Raises psycopg.OperationalError when it cannot connect (the message may quote the host,
    never the password).
    """
    return psycopg.connect(read_only_conninfo(conninfo), autocommit=True, row_factory=dict_row)


def view_columns(conn: Conn, view: str) -> frozenset[str]:
    """Column names of catalog view ``pg_catalog.<view>`` (empty when the view does not exist)."""
    rows = conn.execute(
        "SELECT a.attname::text AS name FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (f"pg_catalog.{view}",),
    ).fetchall()
    return frozenset(r["name"] for r in rows)


def read_server_sample(
    conn: Conn, slot_name: str, slot_columns: frozenset[str], stat_columns: frozenset[str]
) -> ServerSample:
    """Read the current WAL position, ``now()``, ``max_slot_wal_keep_size`` and the slot in
    one statement (one snapshot), then the slot's ``pg_stat_replication_slots`` counters.

    ``slot_columns``/``stat_columns`` are the columns of the two views (:func:`view_columns`):
    optional ones are read only when present. Raises psycopg.Error on database errors.
    """
    optional = [c for c in OPTIONAL_SLOT_COLUMNS if c in slot_columns]
    extra = sql.SQL("").join(
        sql.SQL(", s.{} AS {}").format(sql.Identifier(c), sql.Identifier(c))
        if c == "inactive_since"
        else sql.SQL(", s.{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c))
        for c in optional
    )
    query = sql.SQL(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text"
        " AS current_lsn, now() AS server_now,"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size') AS keep_mb,"
        " s.slot_name::text AS slot_name, s.plugin::text AS plugin, s.slot_type::text AS slot_type,"
        " s.database::text AS database, s.active, s.restart_lsn::text AS restart_lsn,"
        " s.confirmed_flush_lsn::text AS confirmed_flush_lsn, s.wal_status::text AS wal_status,"
        " s.safe_wal_size{extra}"
        " FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = %s"
    ).format(extra=extra)
    row = conn.execute(query, (slot_name,)).fetchone()
    if row is None or row["current_lsn"] is None:
        raise psycopg.DataError("the server reported no current WAL position")
    slot: SlotRow | None = None
    if row["slot_name"] is not None:
        slot = SlotRow(
            slot_name=row["slot_name"],
            plugin=row["plugin"],
            slot_type=row["slot_type"],
            database=row["database"],
            active=bool(row["active"]),
            restart_lsn=parse_lsn(row["restart_lsn"]) if row["restart_lsn"] else None,
            confirmed_flush_lsn=parse_lsn(row["confirmed_flush_lsn"]) if row["confirmed_flush_lsn"] else None,
            wal_status=row["wal_status"],
            safe_wal_size=int(row["safe_wal_size"]) if row["safe_wal_size"] is not None else None,
            inactive_since=row.get("inactive_since"),
            invalidation_reason=row.get("invalidation_reason"),
        )
    stats: dict[str, float] | None = None
    wanted = [c for c in SLOT_STAT_COLUMNS if c in stat_columns]
    if slot is not None and wanted:
        stat_row = conn.execute(
            sql.SQL("SELECT {} FROM pg_catalog.pg_stat_replication_slots WHERE slot_name = %s").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in wanted)
            ),
            (slot_name,),
        ).fetchone()
        if stat_row is not None:
            stats = {k: float(v) for k, v in stat_row.items() if v is not None}
    return ServerSample(
        current_lsn=parse_lsn(row["current_lsn"]),
        server_now=row["server_now"],
        max_slot_wal_keep_size_mb=int(row["keep_mb"]) if row["keep_mb"] is not None else None,
        slot=slot,
        slot_stats=stats,
    )


def read_heartbeat(conn: Conn, table: TableId, source_name: str) -> datetime | None:
    """The ``ts`` of source ``source_name``'s row in the heartbeat table ``table`` of a target.

    None when the table or the row does not exist yet (no heartbeat applied). The column is
    cast to ``timestamptz`` so a target that stored it as ISO text works too. Raises
    psycopg.Error on other database errors.
    """
    query = sql.SQL("SELECT ({ts})::timestamptz AS ts FROM {table} WHERE {src} = %s").format(
        ts=sql.Identifier("ts"),
        table=sql.Identifier(table.schema, table.table),
        src=sql.Identifier("source"),
    )
    try:
        row = conn.execute(query, (source_name,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    if row is None or row["ts"] is None:
        return None
    ts = row["ts"]
    return ts if isinstance(ts, datetime) else None


# =========================================================================== metric export


def _remove(gauge: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


_SLOT_GAUGES = (
    metrics.SLOT_ACTIVE,
    metrics.SLOT_WAL_RETAINED,
    metrics.SLOT_BYTES_BEHIND,
    metrics.SLOT_SAFE_WAL_SIZE,
    metrics.SLOT_SECONDS_UNTIL_LOST,
    metrics.SLOT_INACTIVE_SINCE,
)


def export_slot_report(source: str, report: SlotReport, previous: SlotReport | None = None) -> None:
    """Set the slot gauges of ``source`` from ``report``; a missing slot's series are removed
    (only ``cdc_replication_slot_exists`` = 0 stays) so that no stale value lingers.
    ``previous`` (the last report) lets an invalidation reason that no longer holds be removed."""
    slot = report.slot_name
    if (
        previous is not None
        and previous.invalidation_reason
        and previous.invalidation_reason != report.invalidation_reason
    ):
        _remove(metrics.SLOT_INVALIDATED, source, previous.slot_name, previous.invalidation_reason)
    metrics.SOURCE_WAL_POSITION.labels(source).set(report.current_lsn)
    metrics.SLOT_UNLIMITED_RETENTION.labels(source).set(1 if report.unlimited else 0)
    if report.wal_rate_bytes_per_s is not None:
        metrics.SOURCE_WAL_RATE.labels(source).set(report.wal_rate_bytes_per_s)
    metrics.SLOT_EXISTS.labels(source, slot).set(1 if report.exists else 0)
    if not report.exists:
        for gauge in _SLOT_GAUGES:
            _remove(gauge, source, slot)
        for status in WAL_STATUSES:
            _remove(metrics.SLOT_WAL_STATUS, source, slot, status)
        metrics.SLOT_STATS.forget(source, slot)
        return
    metrics.SLOT_ACTIVE.labels(source, slot).set(1 if report.active else 0)
    _set_or_remove(metrics.SLOT_WAL_RETAINED, (source, slot), report.retained_bytes)
    _set_or_remove(metrics.SLOT_BYTES_BEHIND, (source, slot), report.behind_bytes)
    _set_or_remove(metrics.SLOT_SAFE_WAL_SIZE, (source, slot), report.safe_wal_size_bytes)
    metrics.SLOT_SECONDS_UNTIL_LOST.labels(source, slot).set(report.seconds_until_lost)
    for status in WAL_STATUSES:
        metrics.SLOT_WAL_STATUS.labels(source, slot, status).set(1 if report.wal_status == status else 0)
    if report.inactive_since is not None and not report.active:
        metrics.SLOT_INACTIVE_SINCE.labels(source, slot).set(report.inactive_since.timestamp())
    else:
        _remove(metrics.SLOT_INACTIVE_SINCE, source, slot)
    if report.invalidation_reason:
        metrics.SLOT_INVALIDATED.labels(source, slot, report.invalidation_reason).set(1)


def _set_or_remove(gauge: Any, labels: tuple[str, ...], value: float | None) -> None:
    if value is None:
        _remove(gauge, *labels)
    else:
        gauge.labels(*labels).set(value)


def export_connector_status(source: str, status: ConnectorStatus | None, connector: str) -> set[str]:
    """Set the state gauges of ``connector`` (``status`` None: ABSENT); returns the task ids exported."""
    state = "ABSENT" if status is None else status.state
    for known in CONNECTOR_STATES:
        metrics.CONNECTOR_STATE.labels(source, connector, known).set(1 if known == state else 0)
    if state not in CONNECTOR_STATES:
        metrics.CONNECTOR_STATE.labels(source, connector, state).set(1)
    tasks: set[str] = set()
    for task in status.tasks if status is not None else ():
        tid = str(task.id)
        tasks.add(tid)
        for known in TASK_STATES:
            metrics.CONNECTOR_TASK_STATE.labels(source, connector, tid, known).set(1 if task.state == known else 0)
    return tasks


def clear_connector_status(source: str, connector: str, tasks: set[str]) -> None:
    """Zero the connector's state gauges and drop the series of ``tasks`` (state unknown)."""
    for known in CONNECTOR_STATES:
        metrics.CONNECTOR_STATE.labels(source, connector, known).set(0)
    for tid in tasks:
        for known in TASK_STATES:
            _remove(metrics.CONNECTOR_TASK_STATE, source, connector, tid, known)


# =========================================================================== pollers


class PollingMonitor:
    """Base of the pollers: :meth:`poll_once` on a daemon thread, at once and then every
    ``interval_s`` seconds, until :meth:`stop`.

    ``poll_once`` may raise; the loop logs the exception, counts it in
    ``cdc_monitor_poll_errors_total{check="poll"}`` and carries on: nothing escapes the
    thread. :meth:`close` releases resources and runs on the thread when it ends (or in
    :meth:`stop` when never started).
    """

    kind: ClassVar[str] = "monitor"

    def __init__(self, name: str, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.name = name
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.healthy = False
        self.last_error: str | None = None

    def poll_once(self) -> None:
        """One poll; sets :attr:`healthy`. Subclasses implement it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; idempotent."""

    def start(self) -> None:
        """Start the polling thread (a no-op when it already runs)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{self.kind}-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop after the poll in flight, without waiting (signal-safe)."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait up to ``timeout_s`` seconds for it (a poll in flight
        finishes first; database statements are bounded by ``statement_timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            self.close()
            return
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("monitor thread still busy at stop", monitor=self.kind, name=self.name)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._guarded_poll()
                if self._stop.wait(self.interval_s):
                    break
        finally:
            self.close()

    def _guarded_poll(self) -> None:
        try:
            self.poll_once()
        except Exception as exc:  # the thread must survive anything a poll throws
            self.healthy = False
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, self.name, "poll").inc()
            log.exception("monitor poll failed", monitor=self.kind, name=self.name)
        finally:
            self.polls += 1


@dataclass
class HeartbeatProbe:
    """Reads the heartbeat of source ``source`` in the target of pipeline ``pipeline``.

    ``table`` is where the pipeline writes the source's heartbeat table (see
    :func:`heartbeat_target_table`); ``connect`` opens a read-only connection to the target.
    Keeps its connection between reads and reopens it after a failure.
    """

    pipeline: str
    source: str
    table: TableId
    connect: Connect
    _conn: Conn | None = field(default=None, repr=False)

    def read(self) -> datetime | None:
        """The heartbeat ``ts`` in the target (None: not applied yet). Raises psycopg.Error."""
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        try:
            return read_heartbeat(self._conn, self.table, self.source)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self.close()
            raise

    def close(self) -> None:
        """Close the target connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class SlotMonitor(PollingMonitor):
    """Polls one source's slot, WAL rate, publication and its pipelines' heartbeat lag.

    ``connect`` opens the read-only source connection (default: :func:`connect_read_only`
    with the source's settings). Per poll (each step's failure logged and counted under its
    ``check`` label, the others still run):

    1. ``slot``: :func:`read_server_sample` -> :class:`WalRateWindow` -> :func:`evaluate_slot`
       -> gauges; ``cdc_monitor_up{monitor="slot"}`` follows this step;
    2. ``publication``: :func:`connectors.source_prep.check_publication` -> ``cdc_publication_healthy``;
    3. ``heartbeat``: each probe's ``ts`` against the source's ``now()`` -> ``cdc_heartbeat_age_seconds``.

    ``clock`` is a monotonic clock (seconds) for the WAL rate.
    """

    kind: ClassVar[str] = "slot"

    def __init__(
        self,
        source: SourceSettings,
        *,
        interval_s: float = 15.0,
        wal_rate_window_s: float = 300.0,
        heartbeats: Sequence[HeartbeatProbe] = (),
        connect: Connect | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source.name, interval_s)
        self.source = source
        self.slot_name = source.resolved_slot_name
        self.heartbeats = list(heartbeats)
        self._connect = connect or (
            lambda: connect_read_only(source_conninfo(source, f"cdc-pipeline monitor {source.name}"))
        )
        self._clock = clock
        self.window = WalRateWindow(wal_rate_window_s)
        self._conn: Conn | None = None
        self._slot_columns: frozenset[str] = frozenset()
        self._stat_columns: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self.last_report: SlotReport | None = None
        self.last_sample: ServerSample | None = None
        self.publication: CheckResult | None = None
        self.heartbeat_ages: dict[str, float | None] = {}

    # ------------------------------------------------------------ connection

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            self._slot_columns = view_columns(conn, "pg_replication_slots")
            self._stat_columns = view_columns(conn, "pg_stat_replication_slots")
            self._conn = conn
            log.info(
                "monitor connected",
                source=self.source.name,
                server_version=conn.info.server_version,
                optional_slot_columns=sorted(set(OPTIONAL_SLOT_COLUMNS) & self._slot_columns),
            )
        return self._conn

    def close(self) -> None:
        """Close the source and target connections."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            for probe in self.heartbeats:
                probe.close()

    def _failed(self, check: str, exc: Exception) -> None:
        metrics.MONITOR_POLL_ERRORS.labels(self.kind, self.source.name, check).inc()
        self.last_error = f"{check}: {type(exc).__name__}: {str(exc).strip()}"[:500]
        log.warning(
            "monitor check failed",
            source=self.source.name,
            check=check,
            error=self.last_error,
            error_class=type(exc).__name__,
        )
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and check != "heartbeat":
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    # ------------------------------------------------------------ poll

    def poll_once(self) -> None:
        """One poll of slot, publication and heartbeats (see the class doc); never raises
        for database errors."""
        with self._lock:
            sample = self._poll_slot()
            if sample is not None:
                self._poll_publication()
                self._poll_heartbeats(sample.server_now)

    def _poll_slot(self) -> ServerSample | None:
        try:
            conn = self._connection()
            sample = read_server_sample(conn, self.slot_name, self._slot_columns, self._stat_columns)
        except psycopg.Error as exc:
            self.healthy = False
            metrics.MONITOR_UP.labels(self.kind, self.source.name).set(0)
            self._failed("slot", exc)
            return None
        self.window.add(self._clock(), sample.current_lsn)
        report = evaluate_slot(self.slot_name, sample, self.window.rate())
        export_slot_report(self.source.name, report, self.last_report)
        if sample.slot_stats is not None:
            metrics.SLOT_STATS.update(self.source.name, self.slot_name, sample.slot_stats)
        if report.unlimited and (self.last_report is None or not self.last_report.unlimited):
            log.warning(
                "max_slot_wal_keep_size is -1: a stalled slot retains WAL without limit",
                source=self.source.name,
                slot=self.slot_name,
            )
        if report.wal_status in ("unreserved", "lost") and (
            self.last_report is None or self.last_report.wal_status != report.wal_status
        ):
            log.error(
                "replication slot at risk", source=self.source.name, slot=self.slot_name, wal_status=report.wal_status
            )
        self.last_sample, self.last_report = sample, report
        self.healthy = True
        self.last_error = None
        metrics.MONITOR_UP.labels(self.kind, self.source.name).set(1)
        return sample

    def _poll_publication(self) -> None:
        try:
            result = check_publication(self.source, self._connection())
        except psycopg.Error as exc:
            self._failed("publication", exc)
            return
        metrics.PUBLICATION_HEALTHY.labels(self.source.name, self.source.resolved_publication_name).set(
            1 if result.ok else 0
        )
        if not result.ok and (self.publication is None or self.publication.detail != result.detail):
            log.error("publication unhealthy", source=self.source.name, detail=result.detail, fix=result.fix)
        self.publication = result

    def _poll_heartbeats(self, server_now: datetime) -> None:
        for probe in self.heartbeats:
            try:
                ts = probe.read()
            except psycopg.Error as exc:
                self._failed("heartbeat", exc)
                continue
            if ts is None:
                self.heartbeat_ages[probe.pipeline] = None
                _remove(metrics.HEARTBEAT_AGE, probe.pipeline, probe.source)
                continue
            age = heartbeat_age_seconds(ts, server_now)
            self.heartbeat_ages[probe.pipeline] = age
            metrics.HEARTBEAT_AGE.labels(probe.pipeline, probe.source).set(age)


class ConnectStatusClient(Protocol):
    """The part of :class:`connectors.connect_client.ConnectClient` the connector monitor uses."""

    def status(self, name: str) -> ConnectorStatus:
        """Connector and task states; raises ConnectorNotFoundError / ConnectError."""
        ...

    def restart(self, name: str, *, include_tasks: bool = True, only_failed: bool = True) -> ConnectorStatus | None:
        """Restart the connector's failed instance and tasks."""
        ...


class ConnectorStateMonitor(PollingMonitor):
    """Exports the connector and task states of ``sources`` read from the Connect REST API.

    With ``auto_restart``, a connector that is FAILED or has FAILED tasks is restarted with
    ``POST /connectors/{name}/restart?includeTasks=true&onlyFailed=true`` (KIP-745), paced per
    connector by a :class:`RestartBackoff` built by ``backoff``; each restart adds the number
    of failed tasks (1 when only the connector failed) to
    ``cdc_connector_task_restarts_total`` and is logged with the first line of the (redacted)
    trace. ``cdc_monitor_up{monitor="connect"}`` is 1 when Connect answered for that source.
    ``close_client`` is called on :meth:`close` (e.g. the ConnectClient's ``close``).
    """

    kind: ClassVar[str] = "connect"

    def __init__(
        self,
        sources: Sequence[SourceSettings],
        client: ConnectStatusClient,
        *,
        interval_s: float = 15.0,
        auto_restart: bool = True,
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
        clock: Callable[[], float] = time.monotonic,
        close_client: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("connectors", interval_s)
        self.sources = list(sources)
        self.client = client
        self.auto_restart = auto_restart
        self._backoff_factory = backoff
        self._clock = clock
        self._close_client = close_client
        self.backoffs: dict[str, RestartBackoff] = {}
        self.statuses: dict[str, ConnectorStatus | None] = {}
        self._tasks: dict[str, set[str]] = {}

    def close(self) -> None:
        """Close the REST client (when a closer was given)."""
        closer, self._close_client = self._close_client, None
        if closer is not None:
            closer()

    def poll_once(self) -> None:
        """Read every connector's status, export it, restart failed tasks when enabled."""
        ok = True
        for source in self.sources:
            ok = self._poll_source(source) and ok
        self.healthy = ok

    def _poll_source(self, source: SourceSettings) -> bool:
        name = source.resolved_connector_name
        status: ConnectorStatus | None
        try:
            status = self.client.status(name)
        except ConnectorNotFoundError:
            status = None
        except ConnectError as exc:
            metrics.MONITOR_UP.labels(self.kind, source.name).set(0)
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, source.name, "status").inc()
            clear_connector_status(source.name, name, self._tasks.pop(name, set()))
            self.statuses.pop(name, None)
            self.last_error = str(exc)[:500]
            log.warning("connector status unavailable", source=source.name, connector=name, error=self.last_error)
            return False
        metrics.MONITOR_UP.labels(self.kind, source.name).set(1)
        tasks = export_connector_status(source.name, status, name)
        for gone in self._tasks.get(name, set()) - tasks:
            for known in TASK_STATES:
                _remove(metrics.CONNECTOR_TASK_STATE, source.name, name, gone, known)
        self._tasks[name] = tasks
        self.statuses[name] = status
        if status is not None and self.auto_restart:
            self._maybe_restart(source, status)
        return True

    def _maybe_restart(self, source: SourceSettings, status: ConnectorStatus) -> None:
        name = status.name
        backoff = self.backoffs.setdefault(name, self._backoff_factory())
        now = self._clock()
        if status.healthy:
            backoff.record_healthy(now)
            return
        if not status.failed:
            return
        failed = [t for t in status.tasks if t.state == "FAILED"]
        if not backoff.ready(now):
            log.info(
                "connector restart deferred by backoff",
                source=source.name,
                connector=name,
                seconds_left=round(backoff.seconds_left(now), 1),
            )
            return
        traces = [t.trace for t in failed if t.trace] + ([status.trace] if status.trace else [])
        first_line = traces[0].strip().splitlines()[0][:300] if traces else None
        try:
            self.client.restart(name, include_tasks=True, only_failed=True)
        except ConnectError as exc:
            delay = backoff.record_restart(now)
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, source.name, "restart").inc()
            log.warning(
                "connector restart failed", source=source.name, connector=name, error=str(exc)[:300], retry_in_s=delay
            )
            return
        delay = backoff.record_restart(now)
        metrics.CONNECTOR_TASK_RESTARTS.labels(source.name, name).inc(max(1, len(failed)))
        log.warning(
            "connector restarted after failure",
            source=source.name,
            connector=name,
            connector_state=status.state,
            failed_tasks=[t.id for t in failed],
            attempt=backoff.attempts,
            next_restart_not_before_s=delay,
            trace=first_line,
        )


# =========================================================================== wiring


class MonitorGroup:
    """The monitors of one process, started and stopped together; a context manager."""

    def __init__(self, monitors: Sequence[PollingMonitor] = ()) -> None:
        self.monitors = list(monitors)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def slot_monitors(self) -> list[SlotMonitor]:
        """The slot monitors, one per source."""
        return [m for m in self.monitors if isinstance(m, SlotMonitor)]

    def start(self) -> None:
        """Start every monitor's thread."""
        for monitor in self.monitors:
            monitor.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every monitor (each joined for up to ``timeout_s`` seconds) and close connections."""
        for monitor in self.monitors:
            monitor.request_stop()
        for monitor in self.monitors:
            monitor.stop(timeout_s)

    def ready(self) -> tuple[bool, dict[str, object]]:
        """For ``/readyz``: ready when every monitor has polled and its last poll succeeded."""
        detail = {
            f"{m.kind}:{m.name}": ("ok" if m.healthy else (m.last_error or "not polled yet")) for m in self.monitors
        }
        ok = bool(self.monitors) and all(m.polls > 0 and m.healthy for m in self.monitors)
        return ok, {"monitors": detail}


def heartbeat_target_table(source: SourceSettings, pipeline: PipelineSettings) -> TableId:
    """Where ``pipeline`` writes ``source``'s heartbeat table ``<control_schema>.heartbeat``:
    the last matching transform ``route``, else ``<target.schema>.heartbeat`` (the sink puts
    un-routed tables in the target's default schema, :func:`pipeline.dataplane.reduce.reduce_events`)."""
    heartbeat = TableId(source.control_schema, "heartbeat")
    try:
        routed = build_transformer(pipeline.transforms, pipeline.mask_salt).target_for(heartbeat)
    except (ValueError, ImportError) as exc:  # invalid rules stop the worker elsewhere; measure the default
        log.warning("transforms not usable for the heartbeat route", pipeline=pipeline.name, error=str(exc)[:300])
        routed = None
    return routed or TableId(pipeline.target.schema_name, "heartbeat")


def heartbeat_probes(settings: Settings, source: SourceSettings) -> list[HeartbeatProbe]:
    """One probe per pipeline of ``source`` whose target is PostgreSQL (others are skipped, logged)."""
    from sinks.factory import UnsupportedTargetError, target_conninfo  # noqa: PLC0415 - app imports this module

    probes: list[HeartbeatProbe] = []
    for pipe in settings.pipelines:
        if pipe.source != source.name:
            continue
        try:
            info = make_conninfo(target_conninfo(pipe.target), application_name=f"cdc-pipeline monitor {pipe.name}")
        except UnsupportedTargetError as exc:
            log.warning("heartbeat lag not measured for this target", pipeline=pipe.name, reason=str(exc))
            continue
        probes.append(
            HeartbeatProbe(
                pipeline=pipe.name,
                source=source.name,
                table=heartbeat_target_table(source, pipe),
                connect=functools.partial(connect_read_only, info),
            )
        )
    return probes


def monitor_retry_policy(interval_s: float) -> RetryPolicy:
    """Connect REST retries short enough for a poll loop: 2 attempts within min(5, interval) seconds."""
    return RetryPolicy(max_attempts=2, initial_backoff_s=0.2, max_backoff_s=1.0, max_elapsed_s=min(5.0, interval_s))


def build_monitors(
    settings: Settings,
    *,
    sources: Sequence[str] | None = None,
    connect_client: ConnectStatusClient | None = None,
    connectors: bool = True,
) -> MonitorGroup:
    """The monitors for ``sources`` (names; all sources when None), not yet started.

    One :class:`SlotMonitor` per source (with heartbeat probes for its pipelines' PostgreSQL
    targets) and, when ``connectors``, one :class:`ConnectorStateMonitor` for their
    connectors (``connect_client`` defaults to a :class:`ConnectClient` of
    ``settings.connect``, closed with the group). An empty group when ``monitor.enabled`` is
    false. Raises KeyError for an unknown source name.
    """
    cfg = settings.monitor
    if not cfg.enabled:
        return MonitorGroup()
    chosen = [settings.source(n) for n in sources] if sources is not None else list(settings.sources)
    monitors: list[PollingMonitor] = [
        SlotMonitor(
            src,
            interval_s=cfg.interval_s,
            wal_rate_window_s=cfg.wal_rate_window_s,
            heartbeats=heartbeat_probes(settings, src),
        )
        for src in chosen
    ]
    if connectors and chosen:
        closer: Callable[[], None] | None = None
        client = connect_client
        if client is None:
            own = ConnectClient(settings.connect, retry=monitor_retry_policy(cfg.interval_s))
            client, closer = own, own.close
        monitors.append(
            ConnectorStateMonitor(
                chosen,
                client,
                interval_s=cfg.interval_s,
                auto_restart=cfg.connector_auto_restart,
                close_client=closer,
            )
        )
    return MonitorGroup(monitors)
