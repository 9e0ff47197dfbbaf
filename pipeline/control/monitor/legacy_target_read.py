"""Transitional: the psycopg heartbeat read on an open PostgreSQL *target* connection, kept only because
:mod:`pipeline.control.verify` still calls it while it is being split (issue 15). The monitors read the
heartbeat through :meth:`sinks.base.Target.read_heartbeat`; delete this module once verify does too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pipeline.core.events import TableId


def read_heartbeat(conn: psycopg.Connection[Any], table: TableId, source_name: str) -> datetime | None:
    """The ``ts`` of source ``source_name``'s row in the heartbeat table ``table`` of a target.

    None when the table or the row does not exist yet (no heartbeat applied). The column is
    cast to ``timestamptz`` so a target that stored it as ISO text works too. Raises
    psycopg.Error on other database errors. Needs a connection returning dict rows.
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
