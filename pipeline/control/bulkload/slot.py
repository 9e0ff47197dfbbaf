"""The source side of a bulk load's sessions: the replication connection that creates the slot
with an exported snapshot, the advisory lock that keeps two loads of one source apart, and the
copy sessions that import the snapshot.

``CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput (SNAPSHOT 'export')`` (PostgreSQL docs,
"Streaming Replication Protocol") returns ``slot_name, consistent_point, snapshot_name,
output_plugin``; every transaction committing after ``consistent_point`` is decoded from the
slot, and the snapshot shows exactly what committed before it. The snapshot can be imported
(``SET TRANSACTION SNAPSHOT``, first statement of a REPEATABLE READ transaction; docs
"SET TRANSACTION") until the exporting connection runs another command or disconnects, so the
exporter stays open and idle until every copy has finished. A replication connection takes
only the simple query protocol; psycopg 3 sends a statement without parameters that way.

A table-rewriting ``ALTER TABLE`` (``ALTER COLUMN TYPE``, ``VACUUM FULL``, ...) committed after
the snapshot is not MVCC-safe: an old snapshot then sees the table empty (docs, "MVCC
Caveats"). So before the slot is created a separate session takes ``ACCESS SHARE`` on every
captured table (:func:`lock_source_tables`) and holds it until the copies are done; that
session never takes a transaction id, so ``CREATE_REPLICATION_SLOT`` (which waits only for
transactions holding one) does not wait for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from connectors.source_prep import conninfo, redactor
from pipeline.control.bulkload.model import BulkLoadError, ExportedSnapshot
from pipeline.core.events import TableId, parse_lsn
from pipeline.core.settings.models import SourceSettings

Conn = psycopg.Connection[Any]

LOCK_TIMEOUT_S = 30
"""Seconds ``LOCK TABLE`` waits behind a conflicting lock (a running DDL) before the load gives up."""


def create_exported_slot(source: SourceSettings) -> tuple[Conn, ExportedSnapshot]:
    """Create ``source``'s slot (``resolved_slot_name``, pgoutput) with an exported snapshot
    over a new replication connection; ``(that connection, the snapshot)``. The caller keeps
    the connection idle until the copies are done, then closes it. Raises BulkLoadError when
    the slot exists or the role lacks REPLICATION, psycopg.OperationalError (redacted) when
    the source is unreachable."""
    slot = source.resolved_slot_name
    try:
        conn: Conn = psycopg.connect(
            conninfo(source, "cdc-pipeline bulk load exporter"), replication="database", autocommit=True
        )
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(redactor(source)(str(exc).strip())) from None
    try:
        row = conn.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(sql.Identifier(slot))
        ).fetchone()
    except psycopg.errors.DuplicateObject:
        conn.close()
        raise BulkLoadError(f"replication slot {slot} already exists on source {source.name}") from None
    except psycopg.Error as exc:
        conn.close()
        raise BulkLoadError(f"cannot create replication slot {slot}: {redactor(source)(str(exc).strip())}") from None
    assert row is not None
    return conn, ExportedSnapshot(
        slot_name=str(row[0]), consistent_lsn=parse_lsn(str(row[1])), snapshot_name=str(row[2])
    )


def lock_key(source: SourceSettings) -> str:
    """The advisory lock's text key of ``source``'s load (hashed by ``hashtextextended``)."""
    return f"cdc-bulk-load:{source.resolved_slot_name}"


def take_load_lock(source: SourceSettings) -> psycopg.Connection[dict[str, Any]]:
    """A source session holding the load's session advisory lock (released when it closes).
    Raises BulkLoadError when another ``load run`` of this source holds it."""
    conn = psycopg.connect(conninfo(source, "cdc-pipeline bulk load"), autocommit=True, row_factory=dict_row)
    row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS locked", (lock_key(source),)).fetchone()
    if not row or not row["locked"]:
        conn.close()
        raise BulkLoadError(f"another bulk load of source {source.name} is running (advisory lock {lock_key(source)})")
    return conn


COPY_SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3"
"""Startup options of the source's copy sessions (PostgreSQL "Client Connection Defaults")."""


def open_copy_session(source: SourceSettings, snapshot: ExportedSnapshot) -> Conn:
    """A source session inside ``BEGIN ISOLATION LEVEL REPEATABLE READ`` that imported
    ``snapshot`` (read only; ``TimeZone`` UTC so ``where`` literals without a zone read as UTC,
    as in :mod:`pipeline.transform.predicate`; the output styles pinned as pg_dump pins them, so
    a text COPY means the same to the target whatever the source role's or database's settings:
    ``DateStyle`` ISO, ``IntervalStyle`` postgres, ``extra_float_digits`` 3). Never committed:
    closing it ends the transaction."""
    conn: Conn = psycopg.connect(
        conninfo(source, "cdc-pipeline bulk load copy"), autocommit=True, options=COPY_SESSION_OPTIONS
    )
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot.snapshot_name)))
    except psycopg.Error:
        with contextlib.suppress(psycopg.Error):
            conn.close()
        raise
    return conn


def lock_source_tables(source: SourceSettings, tables: Sequence[TableId]) -> Conn:
    """A new source session inside ``BEGIN`` holding ``LOCK TABLE <tables> IN ACCESS SHARE MODE``
    (PostgreSQL docs, "LOCK" and "Explicit Locking"): a table-rewriting ``ALTER TABLE`` (ACCESS
    EXCLUSIVE) waits until the caller closes it. ``lock_timeout`` is :data:`LOCK_TIMEOUT_S`.
    Raises BulkLoadError when a table is missing or stays locked that long,
    psycopg.OperationalError (redacted) when the source is unreachable."""
    try:
        conn: Conn = psycopg.connect(conninfo(source, "cdc-pipeline bulk load table locks"), autocommit=True)
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(redactor(source)(str(exc).strip())) from None
    names = sql.SQL(", ").join(sql.Identifier(t.schema, t.table) for t in tables)
    try:
        conn.execute("BEGIN")
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{LOCK_TIMEOUT_S}s")))
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(names))
    except psycopg.errors.LockNotAvailable:
        conn.close()
        raise BulkLoadError(
            f"cannot lock the tables of source {source.name} within {LOCK_TIMEOUT_S} s: a DDL statement holds one"
            " of them; run the load again once it finished"
        ) from None
    except psycopg.Error as exc:
        conn.close()
        raise BulkLoadError(
            f"cannot lock the tables of source {source.name}: {redactor(source)(str(exc).strip())}"
            " (run `cdc-pipeline source check`)"
        ) from None
    return conn
