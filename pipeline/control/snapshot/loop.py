"""The snapshot coordinator's loop: a :class:`~pipeline.control.polling.PollingMonitor` that drives
one source's queue (notifications, acknowledgement timeouts, automatic snapshots of newly captured
tables, lag throttling, the next request). It acts only while it holds the source's coordinator
lock, a session advisory lock, so a coordinator in the active control replica and one started by hand
(`snapshot coordinate`) never act at once (``docs/design/snapshot.md``)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol

import psycopg
from psycopg.rows import dict_row

from connectors.debezium import heartbeat_table, signal_table
from connectors.source_prep import conninfo as source_conninfo
from pipeline.control.polling import PollingMonitor
from pipeline.control.snapshot.kafka import NotificationReader
from pipeline.control.snapshot.lag import LagReading, LagSource, Throttle, ThrottleAction
from pipeline.control.snapshot.model import RequestState, SnapshotKind, SnapshotRequest, SnapshotSettings
from pipeline.control.snapshot.progress import export_snapshot_metrics
from pipeline.control.snapshot.signals import captured_by_include_list
from pipeline.control.snapshot.sql import (
    Conn,
    NothingToSignalError,
    SnapshotQueue,
    estimated_rows,
    publication_tables,
)
from pipeline.core import metrics
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import SourceSettings

log = get_logger(__name__)


class ConnectorInfo(Protocol):
    """The part of :class:`connectors.connect_client.ConnectClient` the coordinator reads."""

    def get_config(self, name: str) -> dict[str, str] | None: ...
    def status(self, name: str) -> Any: ...


class SnapshotCoordinator(PollingMonitor):
    """Drives the snapshot queue of one source (``docs/design/snapshot.md``).

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
        self.lag_unknown: tuple[str, ...] = ()
        """Throttle readings unknown at the last throttle step (``wal_retained``, ``consumer_lag``)."""

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
        unknown = self.throttle.unknown(reading)
        self.lag_unknown = tuple(unknown)
        for check in unknown:  # an unknown reading is a failed check, never a zero
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, self.name, check).inc()
        paused_by_throttle = inflight.paused_by == "throttle"
        action = self.throttle.decide(reading, paused_by_throttle, inflight.paused_by == "user")
        try:
            if action is ThrottleAction.PAUSE:
                self._pause_for_lag(inflight, reading)
            elif action is ThrottleAction.RESUME:
                self._resume(inflight, reading)
            elif paused_by_throttle and unknown:
                log.warning(
                    "snapshot stays paused, lag unknown",
                    source=self.source.name,
                    request=str(inflight.id),
                    unknown=unknown,
                    unmeasured=list(reading.unmeasured),
                )
        except NothingToSignalError as exc:
            log.debug("throttle signal skipped", source=self.source.name, reason=str(exc))

    def _pause_for_lag(self, inflight: SnapshotRequest, reading: LagReading) -> None:
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
            unmeasured=list(reading.unmeasured),
        )

    def _resume(self, inflight: SnapshotRequest, reading: LagReading) -> None:
        self.queue.resume(by="throttle")
        log.info(
            "snapshot resumed, lag below thresholds",
            source=self.source.name,
            request=str(inflight.id),
            wal_retained_bytes=reading.wal_retained_bytes,
            consumer_lag=reading.consumer_lag,
        )

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
