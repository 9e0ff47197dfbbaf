"""The verifier's reads and writes on the PostgreSQL source: its connection, the heartbeat it
writes before a catch-up, key-ordered chunk bounds, the keys of a range (for repair) and the
short row locks that let a recheck of rows that keep changing conclude."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from connectors.debezium import heartbeat_table
from connectors.source_prep import conninfo as source_conninfo
from pipeline.core.settings.models import SourceSettings
from sinks.base import ChecksumPlan, KeyBound, KeyRange
from sinks.pg_canonical import key_idents, pin_session, qualified, range_where, values

Conn = psycopg.Connection[dict[str, Any]]


def connect_source(source: SourceSettings, purpose: str, statement_timeout_s: float = 600.0) -> Conn:
    """An autocommit dict-row connection to ``source`` with the canonical session settings and
    ``statement_timeout`` (seconds). Raises psycopg.Error."""
    conn = psycopg.connect(source_conninfo(source, f"cdc-pipeline {purpose}"), autocommit=True, row_factory=dict_row)
    pin_session(conn, statement_timeout_s)
    return conn


def write_heartbeat(conn: psycopg.Connection[Any], source: SourceSettings) -> datetime:
    """Upsert the source's heartbeat row with ``clock_timestamp()``; returns the value written."""
    hb = heartbeat_table(source)
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {t} (source, ts) VALUES (%s, clock_timestamp())"
            " ON CONFLICT (source) DO UPDATE SET ts = EXCLUDED.ts RETURNING ts"
        ).format(t=hb.identifier()),
        (source.name,),
    ).fetchone()
    value = values(row)[0]
    assert isinstance(value, datetime)
    return value


def chunk_bounds(conn: psycopg.Connection[Any], plan: ChecksumPlan, chunk_size: int) -> list[KeyRange]:
    """Key ranges of about ``chunk_size`` source rows each, by keyset pagination on the source
    (``ORDER BY key OFFSET chunk_size - 1 LIMIT 1`` from the previous bound).

    The first range is open below, the last open above (an empty table gives one unbounded
    range). Raises ValueError for a keyless plan or ``chunk_size < 1``.
    """
    if plan.keyless:
        raise ValueError(f"{plan.table} has no key: use buckets")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    order = sql.SQL(", ").join(key_idents(plan, "source"))
    columns = sql.SQL(", ").join(sql.Identifier(c.source) for c in plan.key)
    bounds: list[KeyBound] = []
    last: KeyBound | None = None
    while True:
        where, params = range_where(plan, "source", (last, None))
        row = conn.execute(
            sql.SQL("SELECT {cols} FROM {t}{w} ORDER BY {o} OFFSET %s LIMIT 1").format(
                cols=columns, t=qualified(plan.table), w=where, o=order
            ),
            [*params, chunk_size - 1],
        ).fetchone()
        if row is None:
            break
        last = tuple(values(row))
        bounds.append(last)
    ranges: list[KeyRange] = []
    low: KeyBound | None = None
    for bound in bounds:
        ranges.append((low, bound))
        low = bound
    ranges.append((low, None))
    return ranges


def source_keys(conn: psycopg.Connection[Any], plan: ChecksumPlan, key_range: KeyRange) -> set[KeyBound]:
    """The keys of the source rows in ``key_range`` (source key column order)."""
    keys = sql.SQL(", ").join(sql.Identifier(c.source) for c in plan.key)
    where, params = range_where(plan, "source", key_range)
    rows = conn.execute(sql.SQL("SELECT {k} FROM {t}{w}").format(k=keys, t=qualified(plan.table), w=where), params)
    return {tuple(values(r)) for r in rows.fetchall()}


def lock_rows(
    conn: psycopg.Connection[Any], plan: ChecksumPlan, keys: Sequence[KeyBound], lock_timeout_s: float = 1.0
) -> int:
    """``SELECT ... FOR SHARE`` the source rows of ``keys`` (key order), inside the transaction the
    caller opened on ``conn``, with ``SET LOCAL lock_timeout``: writers of those rows wait until
    the transaction ends (PostgreSQL "Row-Level Locks"). Returns the rows locked (absent keys lock
    nothing). Raises psycopg.errors.LockNotAvailable when a row stays locked by a writer longer
    than ``lock_timeout_s``."""
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",))
    idents = sql.SQL(", ").join(sql.Identifier(c.source) for c in plan.key)
    order = sql.SQL(", ").join(key_idents(plan, "source"))
    one = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in plan.key))
    locked = 0
    wanted = list(dict.fromkeys(tuple(k) for k in keys))
    for i in range(0, len(wanted), 500):
        batch = wanted[i : i + 500]
        statement = sql.SQL("SELECT 1 FROM {t} WHERE ROW({k}) IN ({vals}) ORDER BY {o} FOR SHARE").format(
            t=qualified(plan.table), k=idents, vals=sql.SQL(", ").join([one] * len(batch)), o=order
        )
        locked += len(conn.execute(statement, [v for k in batch for v in k]).fetchall())
    return locked
