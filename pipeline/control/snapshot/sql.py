"""SQL on the source database: the durable snapshot request queue (``<control_schema>.snapshot_requests``,
one request in flight per source, each signalled at most once) and the catalog reads the
coordinator needs (WAL a slot retains, row estimates, publication tables). The PostgreSQL facts
relied on are in ``docs/design/snapshot.md``."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from connectors.debezium import TableRef, signal_table
from connectors.source_prep import conninfo as source_conninfo
from pipeline.control.snapshot.model import (
    Condition,
    Notification,
    RequestState,
    SnapshotKind,
    SnapshotRequest,
    TableProgress,
)
from pipeline.control.snapshot.notifications import apply_notification, notification_matches
from pipeline.control.snapshot.signals import execute_snapshot_data, stop_snapshot_data
from pipeline.core import metrics
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import SourceSettings

log = get_logger(__name__)

Conn = psycopg.Connection[dict[str, Any]]
"""An autocommit dict-row connection to the source."""

REQUESTS_TABLE = "snapshot_requests"


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
