"""The slot monitor of one source: the replication slot is the riskiest part of PostgreSQL CDC (a stalled
consumer makes the source keep WAL until its disk fills), so each poll turns the slot, the WAL rate, the
publication and the pipelines' heartbeat lag into gauges and logs the transitions that need a human.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import ClassVar

import httpx
import psycopg

from connectors.connect_client import ConnectClient, ConnectError
from connectors.source_prep import CheckResult, check_publication
from connectors.source_prep import conninfo as source_conninfo
from pipeline.control.monitor.export import export_heartbeat_age, export_slot_report
from pipeline.control.monitor.heartbeat import HeartbeatProbe
from pipeline.control.monitor.slot_model import (
    ServerSample,
    SlotReport,
    WalRateWindow,
    evaluate_slot,
    heartbeat_age_seconds,
)
from pipeline.control.monitor.source_sql import (
    OPTIONAL_SLOT_COLUMNS,
    Conn,
    Connect,
    connect_read_only,
    read_server_sample,
    view_columns,
)
from pipeline.control.polling import PollingMonitor
from pipeline.core import metrics
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import SourceSettings

log = get_logger("pipeline.control.monitor.slot")


class LiveIncludeList:
    """Reads ``table.include.list`` from the connector's live configuration (Connect REST
    ``GET /connectors/{name}/config``) through a client opened by ``factory`` on first use.

    Calling it returns the value, or the last value read when Connect does not answer (None
    before any answer, or when the connector does not exist): the publication check then falls
    back to the process's YAML. Never raises for Connect errors. Thread-safe enough for one
    monitor thread; :meth:`close` drops the client (reopened on the next call).
    """

    def __init__(self, factory: Callable[[], ConnectClient], connector: str) -> None:
        self._factory = factory
        self._connector = connector
        self._client: ConnectClient | None = None
        self._last: str | None = None

    def __call__(self) -> str | None:
        try:
            if self._client is None:
                self._client = self._factory()
            config = self._client.get_config(self._connector)
        except (ConnectError, httpx.HTTPError) as exc:
            log.warning("connector config not readable", connector=self._connector, error=str(exc)[:300])
            return self._last
        self._last = config.get("table.include.list") if config is not None else None
        return self._last

    def close(self) -> None:
        """Close the client, if one is open."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


class SlotMonitor(PollingMonitor):
    """Polls one source's slot, WAL rate, publication and its pipelines' heartbeat lag.

    ``connect`` opens the read-only source connection (default: :func:`connect_read_only`
    with the source's settings). Per poll (each step's failure logged and counted under its
    ``check`` label, the others still run):

    1. ``slot``: :func:`read_server_sample` -> :class:`WalRateWindow` -> :func:`evaluate_slot`
       -> gauges; ``cdc_monitor_up{monitor="slot"}`` follows this step, and the other two
       steps are skipped when it fails (they need the source);
    2. ``publication``: :func:`connectors.source_prep.check_publication` -> ``cdc_publication_healthy``;
    3. ``heartbeat``: each probe's ``ts`` (read through the pipeline's Target) against the
       source's ``now()`` -> ``cdc_heartbeat_age_seconds`` (seconds).

    ``clock`` is a monotonic clock (seconds) for the WAL rate. ``live_include`` reads the
    connector's live ``table.include.list`` so the publication check accepts tables captured
    since this process loaded its YAML (see :func:`connectors.source_prep.check_publication`).
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
        live_include: LiveIncludeList | None = None,
    ) -> None:
        super().__init__(source.name, interval_s)
        self.source = source
        self.slot_name = source.resolved_slot_name
        self.heartbeats = list(heartbeats)
        self._connect = connect or (
            lambda: connect_read_only(source_conninfo(source, f"cdc-pipeline monitor {source.name}"))
        )
        self._clock = clock
        self._live_include = live_include
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
        """Close the source connection and the targets' sessions (all reopen at the next poll)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            for probe in self.heartbeats:
                probe.close()
            if self._live_include is not None:
                self._live_include.close()

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
        self._log_transitions(report)
        self.last_sample, self.last_report = sample, report
        self.healthy = True
        self.last_error = None
        metrics.MONITOR_UP.labels(self.kind, self.source.name).set(1)
        return sample

    def _log_transitions(self, report: SlotReport) -> None:
        """Log unlimited retention and an at-risk ``wal_status`` once, when they appear."""
        last = self.last_report
        if report.unlimited and (last is None or not last.unlimited):
            log.warning(
                "max_slot_wal_keep_size is -1: a stalled slot retains WAL without limit",
                source=self.source.name,
                slot=self.slot_name,
            )
        if report.wal_status in ("unreserved", "lost") and (last is None or last.wal_status != report.wal_status):
            log.error(
                "replication slot at risk", source=self.source.name, slot=self.slot_name, wal_status=report.wal_status
            )

    def _poll_publication(self) -> None:
        try:
            live = self._live_include() if self._live_include is not None else None
            result = check_publication(self.source, self._connection(), live)
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
            except Exception as exc:  # one target's failure (any backend) must not hide the others' lag
                self._failed("heartbeat", exc)
                continue
            age = None if ts is None else heartbeat_age_seconds(ts, server_now)
            self.heartbeat_ages[probe.pipeline] = age
            export_heartbeat_age(probe.pipeline, probe.source, age)
