"""Replication slots of a PostgreSQL source: their state, LSN arithmetic, and dropping a dead one.

``pg_replication_slots`` (PostgreSQL 15 "System Views"): ``restart_lsn`` is the oldest WAL the
slot still needs, ``confirmed_flush_lsn`` what its consumer confirmed; ``wal_status = 'lost'``
means PostgreSQL removed WAL the slot needs (``max_slot_wal_keep_size``), so it can never be
streamed again. Debezium's PostgreSQL connector refuses to stream when the slot is missing or
its ``restart_lsn`` is past the offset it stored (``PostgresConnection.validateLogPosition``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def create_logical_slot(conn: Conn, slot_name: str, plugin: str = "pgoutput") -> tuple[int, bool]:
    """Create the logical slot ``slot_name`` for ``plugin`` unless it exists; ``(LSN, created)``.

    ``pg_create_logical_replication_slot(slot, plugin)`` (PostgreSQL 15 "System Administration
    Functions" > "Replication Management Functions") returns once the slot has a consistent
    point: every transaction committing after the call returns is decoded from it. It waits for
    transactions running at the call to finish, and fails inside a transaction that has written
    (use an autocommit connection). An existing slot is reused when it is a logical slot of
    ``plugin`` in this connection's database (its ``confirmed_flush_lsn`` is returned: it
    captures from there); otherwise ValueError is raised.
    """
    state = slot_state(conn, slot_name)
    if state is not None:
        database = conn.info.dbname
        if state.slot_type != "logical" or state.plugin != plugin or state.database != database:
            raise ValueError(
                f"replication slot {slot_name} exists but is {state.slot_type}/{state.plugin} in database "
                f"{state.database}, not logical/{plugin} in {database}: drop it or choose another slot name"
            )
        lsn = state.confirmed_flush_lsn if state.confirmed_flush_lsn is not None else state.restart_lsn
        return (lsn or 0), False
    row = conn.execute(
        "SELECT lsn::text AS lsn FROM pg_create_logical_replication_slot(%s, %s)", (slot_name, plugin)
    ).fetchone()
    value = parse_lsn(row["lsn"] if row else None)
    if value is None:
        raise psycopg.DataError("pg_create_logical_replication_slot returned no LSN")
    log.info("replication slot created", slot=slot_name, plugin=plugin, lsn=format_lsn(value))
    return value, True


def drop_slot_when_free(
    conn: Conn, slot_name: str, timeout_s: float = 30.0, sleep: Callable[[float], None] = time.sleep
) -> bool:
    """Drop ``slot_name`` once no WAL sender streams it; True when one was dropped.

    Waits up to ``timeout_s`` seconds for the slot to turn inactive (a connector just deleted
    releases it within seconds); past that the WAL sender still holding it is terminated with
    ``pg_terminate_backend(active_pid)`` (only for this slot: the caller has already removed
    its consumer) and the drop is retried. Raises psycopg.errors.ObjectInUse when it stays busy.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        state = slot_state(conn, slot_name)
        if state is None:
            return False
        if not state.active:
            try:
                return drop_slot(conn, slot_name)
            except psycopg.errors.ObjectInUse:
                pass  # a sender took it again between the read and the drop
        elif time.monotonic() >= deadline and state.active_pid is not None:
            conn.execute("SELECT pg_terminate_backend(%s)", (state.active_pid,))
            log.warning("slot's WAL sender terminated to drop it", slot=slot_name, pid=state.active_pid)
        if time.monotonic() >= deadline + timeout_s:
            raise psycopg.errors.ObjectInUse(f"replication slot {slot_name} is still active")
        sleep(0.5)
