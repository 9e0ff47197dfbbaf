"""``target.versions: table`` on MariaDB/MySQL and SQLite: row positions in the control table
``row_versions`` instead of ``__cdc_*`` columns of the user tables.

``row_versions(table_name, row_hash) -> (row_key, commit_lsn, lsn)``: ``row_key`` is the key
text (:func:`pipeline.core.batch.key_text`; keyless tables: the insert's row id), keyed by its
SHA-256 like the tombstones because InnoDB keys are limited to 3072 bytes.

The sink reads the stored positions of a batch's keys inside its transaction (on MariaDB
``SELECT ... FOR UPDATE``, so a second writer of the same keys waits; SQLite's ``BEGIN
IMMEDIATE`` serialises writers anyway), drops in Python the changes that are not newer, and
writes the user rows and their ``row_versions`` rows in the same transaction. A keyless delete
removes one row equal to its ``before`` image (MariaDB ``DELETE ... LIMIT 1``; SQLite by
``rowid``); a truncate deletes the rows whose entry is older than it (keys with a newer entry
were written after it and stay) and those entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.core.batch import Upsert, key_text
from pipeline.core.events import Position, TableId
from pipeline.core.logs import get_logger
from sinks.base import KeyBound, VersionedKey
from sinks.postgres.versions import row_key
from sinks.sqlalchemy import dml
from sinks.sqlalchemy.ddl import VERSION_COLUMNS, TableShape, read_shape, row_hash
from sinks.sqlalchemy.types import MYSQL, SQLITE, adapt

log = get_logger(__name__)

_IN_CHUNK = 500
_COLUMNS = ["table_name", "row_hash", "row_key", "commit_lsn", "lsn"]


def shape_row_key(shape: TableShape, key: str, values: dict[str, Any]) -> str:
    """The ``row_versions`` key of a reduced change (see :func:`sinks.postgres.versions.row_key`)."""
    return row_key(shape.keyless, shape.key_columns, key, values)


class SaTableVersions:
    """The table-mode reads and writes of one sink on ``dialect`` (``mysql`` or ``sqlite``) over
    the control table ``rv``."""

    def __init__(self, dialect: str, rv: sa.Table) -> None:
        self._dialect = dialect
        self._rv = rv

    def stored(self, conn: Connection, table: str, keys: Sequence[str]) -> dict[str, Position]:
        """Stored positions of ``keys`` (row keys) of ``table``, locked on MariaDB."""
        rv = self._rv
        by_hash = {row_hash(k): k for k in keys}
        hashes = list(by_hash)
        found: dict[str, Position] = {}
        for i in range(0, len(hashes), _IN_CHUNK):
            query = sa.select(rv.c.row_hash, rv.c.commit_lsn, rv.c.lsn).where(
                rv.c.table_name == table, rv.c.row_hash.in_(hashes[i : i + _IN_CHUNK])
            )
            if self._dialect == MYSQL:
                query = query.with_for_update()
            for h, c, lsn in conn.execute(query).all():
                found[by_hash[str(h)]] = Position(int(c), int(lsn))
        return found

    def write(self, conn: Connection, table: str, entries: Sequence[tuple[str, Position]], *, keep: bool) -> None:
        """Store ``(row key, position)`` entries; ``keep=True`` leaves an existing entry alone
        (keyless row ids), otherwise it is overwritten (the caller checked it was older)."""
        if not entries:
            return
        stmt = (
            dml.insert_ignoring_duplicates(self._dialect, self._rv, _COLUMNS, _COLUMNS[:2])
            if keep
            else dml.replacing_upsert(self._dialect, self._rv, _COLUMNS, _COLUMNS[:2])
        )
        rows = [dml.params([table, row_hash(k), k, p.commit_lsn, p.lsn]) for k, p in entries]
        dml.executemany(conn, stmt, rows)

    def upsert_rows(self, conn: Connection, shape: TableShape, columns: list[str], ups: list[Upsert]) -> int:
        """Write ``ups`` (only ``columns``; their guard was checked) and their entries; rows written."""
        table = shape.clause(columns)
        if shape.keyless:
            stmt: sa.ClauseElement = sa.insert(table).values(
                {table.c[c]: sa.bindparam(f"p{i}") for i, c in enumerate(columns)}
            )
        elif [c for c in columns if c not in shape.key_columns]:
            stmt = dml.replacing_upsert(self._dialect, table, columns, shape.key_columns)
        else:
            stmt = dml.insert_ignoring_duplicates(self._dialect, table, columns, shape.key_columns)
        rows = [dml.params([adapt(up.row.get(c), self._dialect) for c in columns]) for up in ups]
        dml.executemany(conn, stmt, rows)
        entries = [(shape_row_key(shape, up.key, up.row), up.position) for up in ups]
        self.write(conn, str(shape.table), entries, keep=shape.keyless)
        return len(rows)

    def delete_one(self, conn: Connection, shape: TableShape, image: dict[str, Any]) -> bool:
        """Delete one row equal to ``image`` (the columns the table has); True when one was."""
        cols = [c for c in image if c in shape.columns]
        t = shape.clause(cols)
        where = [t.c[c].is_not_distinct_from(adapt(image[c], self._dialect)) for c in cols]
        if self._dialect == SQLITE:
            rowid: sa.ColumnClause[Any] = sa.column("rowid")
            inner = sa.select(rowid).select_from(t).where(*where).limit(1).scalar_subquery()
            result = conn.execute(sa.delete(t).where(rowid == inner))
        else:
            result = conn.execute(sa.delete(t).where(*where).with_dialect_options(mysql_limit=1, mariadb_limit=1))
        return int(result.rowcount or 0) > 0

    def truncate(self, conn: Connection, shape: TableShape, position: Position) -> int:
        """Delete the rows older than ``position`` and their entries; rows deleted. A keyless
        table cannot tell its rows apart: it loses them all (logged when some were newer)."""
        rv, name = self._rv, str(shape.table)
        at = sa.tuple_(sa.literal(position.commit_lsn), sa.literal(position.lsn))
        newer = [
            str(r[0])
            for r in conn.execute(
                sa.select(rv.c.row_key).where(rv.c.table_name == name, sa.tuple_(rv.c.commit_lsn, rv.c.lsn) >= at)
            ).all()
        ]
        t = shape.clause(list(shape.key_columns))
        stmt = sa.delete(t)
        if newer and shape.keyless:
            log.warning("keyless table truncated with rows inserted after the truncate", table=name, rows=len(newer))
        elif newer:
            stmt = stmt.where(sa.not_(self._member(shape, t, newer)))
        result = conn.execute(stmt)
        conn.execute(sa.delete(rv).where(rv.c.table_name == name, sa.tuple_(rv.c.commit_lsn, rv.c.lsn) < at))
        return max(int(result.rowcount or 0), 0)

    def _member(self, shape: TableShape, t: sa.TableClause, texts: list[str]) -> sa.ColumnElement[bool]:
        """``key IN (...)`` of the rows keyed by ``texts`` (key texts decoded back; bytes keys
        were written as hex)."""
        keys = list(shape.key_columns)
        binary = {k for k in keys if "blob" in shape.columns[k] or "binary" in shape.columns[k]}
        values = [
            [
                bytes.fromhex(v) if k in binary and isinstance(v, str) else v
                for k, v in zip(keys, orjson.loads(x), strict=True)
            ]
            for x in texts
        ]
        if len(keys) == 1:
            return t.c[keys[0]].in_([v[0] for v in values])
        return sa.tuple_(*(t.c[k] for k in keys)).in_([sa.tuple_(*(sa.literal(x) for x in v)) for v in values])


# -- verification (sinks.sqlalchemy.verification: versioned_keys, guarded_delete)


def row_versions_beside(results: sa.Table) -> sa.TableClause:
    """The ``row_versions`` control table next to the control table ``results`` (same MariaDB
    database; same SQLite prefix)."""
    name = results.name.removesuffix("verify_results") + "row_versions"
    cols = ("table_name", "row_hash", "row_key", "commit_lsn", "lsn")
    return sa.table(name, *(sa.column(c) for c in cols), schema=results.schema)


def has_version_columns(conn: Connection, table: TableId) -> bool:
    """True when ``table`` carries the ``columns`` mode's version columns (else: ``table`` mode)."""
    shape = read_shape(conn, table)
    return shape is not None and all(v in shape.columns for v in VERSION_COLUMNS)


def stored_versions(
    conn: Connection, rv: sa.TableClause, table: TableId, keys: Sequence[KeyBound]
) -> list[VersionedKey]:
    """``keys`` (the plan's key order) with their ``row_versions`` position, ``(None, None)``
    for a row the pipeline has not written."""
    texts = [key_text(k) for k in keys]
    hashes = [row_hash(t) for t in texts]
    found: dict[str, tuple[int, int]] = {}
    for i in range(0, len(hashes), _IN_CHUNK):
        query = sa.select(rv.c.row_hash, rv.c.commit_lsn, rv.c.lsn).where(
            rv.c.table_name == str(table), rv.c.row_hash.in_(hashes[i : i + _IN_CHUNK])
        )
        found.update({str(h): (int(c), int(lsn)) for h, c, lsn in conn.execute(query).all()})
    return [VersionedKey(tuple(k), found.get(h, (None, None))) for k, h in zip(keys, hashes, strict=True)]


def guarded_delete_rows(
    conn: Connection, dialect: str, rv: sa.TableClause, t: sa.TableClause, plan_key: Sequence[str], table: TableId,
    rows: Sequence[VersionedKey],
) -> int:  # fmt: skip
    """Delete each of ``rows`` only while its ``row_versions`` position equals the one read (in
    the caller's transaction); rows deleted. MariaDB locks the version row first (the sink's
    order), an absent one by a placeholder at ``(0, 0)`` removed again; SQLite's ``BEGIN
    IMMEDIATE`` already excludes the sink."""
    deleted = 0
    for row in rows:
        text = key_text(row.key)
        h = row_hash(text)
        where = (rv.c.table_name == str(table), rv.c.row_hash == h)
        match = [t.c[n] == adapt(v, dialect) for n, v in zip(plan_key, row.key, strict=True)]
        query = sa.select(rv.c.commit_lsn, rv.c.lsn).where(*where)
        now = conn.execute(query.with_for_update() if dialect == MYSQL else query).first()
        placeholder = False
        if now is None and row.versions == (None, None):
            stmt = dml.insert_ignoring_duplicates(dialect, rv, _COLUMNS, _COLUMNS[:2])
            conn.execute(stmt, dml.params([str(table), h, text, 0, 0]))
            placed = conn.execute(query).first()  # the affected-rows figure cannot tell (FOUND_ROWS)
            if placed is None or (int(placed[0]), int(placed[1])) != (0, 0):
                continue  # written meanwhile
            placeholder = True
        elif now is None or (int(now[0]), int(now[1])) != tuple(row.versions):
            continue
        deleted += int(conn.execute(sa.delete(t).where(*match)).rowcount or 0)
        if placeholder:
            conn.execute(sa.delete(rv).where(*where))
    return deleted
