"""Replication slots of a PostgreSQL source: their state, LSN arithmetic, and dropping a dead one.

``pg_replication_slots`` (PostgreSQL 15 "System Views"): ``restart_lsn`` is the oldest WAL the
slot still needs, ``confirmed_flush_lsn`` what its consumer confirmed; ``wal_status = 'lost'``
means PostgreSQL removed WAL the slot needs (``max_slot_wal_keep_size``), so it can never be
streamed again. Debezium's PostgreSQL connector refuses to stream when the slot is missing or
its ``restart_lsn`` is past the offset it stored (``PostgresConnection.validateLogPosition``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.core.logs import get_logger

log = get_logger("connectors.slots")

Conn = psycopg.Connection[dict[str, Any]]


def _server_version(conn: Conn) -> int:
    return int(conn.info.server_version)


@dataclass(frozen=True, slots=True)
class SlotState:
    """A row of ``pg_replication_slots`` (PostgreSQL 15 "System Views" > ``pg_replication_slots``).

    ``restart_lsn``/``confirmed_flush_lsn`` are LSNs as integers (None when NULL);
    ``wal_status`` is reserved, extended, unreserved or lost (PostgreSQL 13+; None before).
    """

    slot_name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    wal_status: str | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None

    @property
    def lost(self) -> bool:
        """True when PostgreSQL removed WAL the slot needs: it can never be streamed again."""
        return self.wal_status == "lost"


def parse_lsn(text: str | None) -> int | None:
    """``'16/B374D848'`` -> its 64-bit integer (PostgreSQL ``pg_lsn`` text form); None for None."""
    if text is None:
        return None
    high, _, low = str(text).partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    """Inverse of :func:`parse_lsn`."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def slot_state(conn: Conn, slot_name: str) -> SlotState | None:
    """The slot named ``slot_name``, or None when it does not exist."""
    version = _server_version(conn)
    wal_status = "wal_status" if version >= 130000 else "NULL::text"
    row = conn.execute(
        sql.SQL(
            "SELECT slot_name::text AS slot_name, plugin::text AS plugin, slot_type, database::text AS database, "
            "active, active_pid, {} AS wal_status, restart_lsn::text AS restart_lsn, "
            "confirmed_flush_lsn::text AS confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s"
        ).format(sql.SQL(wal_status)),
        (slot_name,),
    ).fetchone()
    if row is None:
        return None
    return SlotState(
        slot_name=row["slot_name"],
        plugin=row["plugin"],
        slot_type=row["slot_type"],
        database=row["database"],
        active=bool(row["active"]),
        active_pid=row["active_pid"],
        wal_status=row["wal_status"],
        restart_lsn=parse_lsn(row["restart_lsn"]),
        confirmed_flush_lsn=parse_lsn(row["confirmed_flush_lsn"]),
    )


def current_wal_lsn(conn: Conn) -> int:
    """``pg_current_wal_lsn()`` of the server, as an integer."""
    row = conn.execute("SELECT pg_current_wal_lsn()::text AS lsn").fetchone()
    value = parse_lsn(row["lsn"] if row else None)
    if value is None:
        raise psycopg.DataError("pg_current_wal_lsn() returned NULL")
    return value


def drop_slot(conn: Conn, slot_name: str) -> bool:
    """Drop the replication slot ``slot_name`` if it exists; True when one was dropped.

    Raises psycopg.errors.ObjectInUse while a WAL sender streams it (stop the connector first).
    """
    if slot_state(conn, slot_name) is None:
        return False
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
    log.info("replication slot dropped", slot=slot_name)
    return True
