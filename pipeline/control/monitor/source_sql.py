"""What the monitors read from a PostgreSQL *source*, on read-only sessions: the WAL position, the
server's clock and the slot in one statement per poll. Targets are never read here: heartbeat lag goes
through :class:`sinks.base.Target`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from pipeline.control.monitor.slot_model import ServerSample, SlotRow
from pipeline.core import metrics
from pipeline.core.events import parse_lsn

Conn = psycopg.Connection[dict[str, Any]]
Connect = Callable[[], Conn]

READ_ONLY_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=10000"
"""Server options of every monitor connection: read-only transactions, 10 s statement limit."""

OPTIONAL_SLOT_COLUMNS = ("inactive_since", "invalidation_reason")
"""``pg_replication_slots`` columns read only where the server has them (PostgreSQL 17+)."""

SLOT_STAT_COLUMNS = tuple(metrics.SLOT_STAT_COUNTERS)
"""``pg_stat_replication_slots`` counters exported (PostgreSQL 14+)."""

_SAMPLE_QUERY = (
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text"
    " AS current_lsn, now() AS server_now,"
    " (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size') AS keep_mb,"
    " s.slot_name::text AS slot_name, s.plugin::text AS plugin, s.slot_type::text AS slot_type,"
    " s.database::text AS database, s.active, s.restart_lsn::text AS restart_lsn,"
    " s.confirmed_flush_lsn::text AS confirmed_flush_lsn, s.wal_status::text AS wal_status,"
    " s.safe_wal_size{extra}"
    " FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = %s"
)


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
    optional ones are read only when present. On a standby the position is
    ``pg_last_wal_replay_lsn()``. Raises psycopg.Error on database errors.
    """
    optional = [c for c in OPTIONAL_SLOT_COLUMNS if c in slot_columns]
    extra = sql.SQL("").join(
        sql.SQL(", s.{} AS {}").format(sql.Identifier(c), sql.Identifier(c))
        if c == "inactive_since"
        else sql.SQL(", s.{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c))
        for c in optional
    )
    row = conn.execute(sql.SQL(_SAMPLE_QUERY).format(extra=extra), (slot_name,)).fetchone()
    if row is None or row["current_lsn"] is None:
        raise psycopg.DataError("the server reported no current WAL position")
    slot = _slot_row(row) if row["slot_name"] is not None else None
    wanted = [c for c in SLOT_STAT_COLUMNS if c in stat_columns]
    stats = _slot_stats(conn, slot_name, wanted) if slot is not None and wanted else None
    return ServerSample(
        current_lsn=parse_lsn(row["current_lsn"]),
        server_now=row["server_now"],
        max_slot_wal_keep_size_mb=int(row["keep_mb"]) if row["keep_mb"] is not None else None,
        slot=slot,
        slot_stats=stats,
    )


def _optional_lsn(text: str | None) -> int | None:
    return parse_lsn(text) if text else None


def _slot_row(row: dict[str, Any]) -> SlotRow:
    return SlotRow(
        slot_name=row["slot_name"],
        plugin=row["plugin"],
        slot_type=row["slot_type"],
        database=row["database"],
        active=bool(row["active"]),
        restart_lsn=_optional_lsn(row["restart_lsn"]),
        confirmed_flush_lsn=_optional_lsn(row["confirmed_flush_lsn"]),
        wal_status=row["wal_status"],
        safe_wal_size=int(row["safe_wal_size"]) if row["safe_wal_size"] is not None else None,
        inactive_since=row.get("inactive_since"),
        invalidation_reason=row.get("invalidation_reason"),
    )


def _slot_stats(conn: Conn, slot_name: str, columns: list[str]) -> dict[str, float] | None:
    query = sql.SQL("SELECT {} FROM pg_catalog.pg_stat_replication_slots WHERE slot_name = %s").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    stat_row = conn.execute(query, (slot_name,)).fetchone()
    if stat_row is None:
        return None
    return {k: float(v) for k, v in stat_row.items() if v is not None}
