"""``target.versions: table`` on PostgreSQL: row positions in ``<control_schema>.row_versions``.

In this mode the user tables carry no ``__cdc_*`` column (a migration target keeps the schema
its own tool created); each row's source position lives in
``row_versions(table_name, row_key, commit_lsn, lsn)``, keyed like the tombstones by
:func:`pipeline.core.batch.key_text` of the key (keyless tables: one row per applied insert row
id, :func:`pipeline.core.batch.row_id` / ``read_row_id``).

Every statement stays set-based and takes the ``row_versions`` row lock BEFORE the user row, so
the guard holds under concurrency like the ``columns`` mode's in-row guard:

- upsert: ``INSERT INTO row_versions ... ON CONFLICT DO UPDATE ... WHERE stored < incoming
  RETURNING row_key`` (a waiting transaction re-checks the newest committed version, PostgreSQL
  docs "INSERT", ON CONFLICT DO UPDATE under READ COMMITTED), and in the same statement the user
  rows of the keys it returned, ``INSERT ... OVERRIDING SYSTEM VALUE ... ON CONFLICT (pk) DO
  UPDATE`` (identity columns of a pre-created table take the source's values);
- delete: the same guarded ``row_versions`` upsert at the delete's position, then ``DELETE``
  of the returned keys; the versioned tombstone is written as in ``columns`` mode;
- keyless insert: ``INSERT INTO row_versions ... ON CONFLICT DO NOTHING RETURNING`` dedups by
  row id (so a replayed insert is skipped even after its row was deleted), then the rows;
- keyless delete: the delete's marker tombstone first (once per delete event), then one row
  equal to the ``before`` image by ``ctid``;
- truncate: the rows whose ``row_versions`` entry is older than the truncate are deleted (keys
  with a newer entry were written after it and stay), and so are those entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql

from pipeline.core.batch import Delete, Upsert, key_text
from pipeline.core.events import Position, TableId
from pipeline.core.logs import get_logger
from sinks.base import KeyBound, VersionedKey
from sinks.postgres.ddl import ROW_VERSIONS, VERSION_COLUMNS, TableShape, qualified
from sinks.postgres.types import adapt_value, whole_row_match

log = get_logger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

STAGE_COLUMNS = ("__cdc_commit_lsn", "__cdc_lsn", "__cdc_key")
"""Columns added to a staging table (never to a user table): the change's position and key text."""


def row_key(keyless: bool, key_columns: tuple[str, ...], key: str, values: dict[str, Any]) -> str:
    """The ``row_versions``/tombstone key of a reduced change: its ``key`` (the key text), except
    for a keyed table whose changes were reduced without key values (a batch that began with a
    keyless truncate event): then the key text of the row's own ``key_columns`` values."""
    if keyless or key.startswith("["):  # key_text is a JSON array; row ids and markers are not
        return key
    if not all(k in values for k in key_columns):
        return key
    return key_text(values[k] for k in key_columns)


class TableVersions:
    """The table-mode statements of one sink; ``control`` is the control schema."""

    def __init__(self, control: str) -> None:
        self._control = control

    def _ctl(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self._control), sql.Identifier(name))

    # -- staging

    def _stage(self, conn: Conn, name: str, shape: TableShape, columns: list[str]) -> sql.Identifier:
        """A temporary table with ``columns`` of the user table (types only: no identity, default
        or constraint comes along) plus :data:`STAGE_COLUMNS`."""
        stg = sql.Identifier(name)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                stg, sql.SQL(", ").join(map(sql.Identifier, columns)), qualified(shape.table)
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint, ADD COLUMN {} bigint, ADD COLUMN {} text").format(
                stg, *map(sql.Identifier, STAGE_COLUMNS)
            )
        )
        return stg

    def _guarded_versions(self, stg: sql.Identifier, table: str, where: sql.Composable) -> sql.Composed:
        """The ``row_versions`` upsert of the staged keys that only moves forward, returning the
        keys whose position it raised (or inserted)."""
        return sql.SQL(
            "INSERT INTO {rv} AS v (table_name, row_key, commit_lsn, lsn)"
            " SELECT {t}, s.__cdc_key, s.__cdc_commit_lsn, s.__cdc_lsn FROM {stg} s{w}"
            " ON CONFLICT (table_name, row_key) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, lsn = EXCLUDED.lsn"
            " WHERE (v.commit_lsn, v.lsn) < (EXCLUDED.commit_lsn, EXCLUDED.lsn) RETURNING v.row_key"
        ).format(rv=self._ctl(ROW_VERSIONS), t=sql.Literal(table), stg=stg, w=where)

    # -- upsert

    def upsert_group(
        self, conn: Conn, shape: TableShape, columns: list[str], ups: list[Upsert], conditions: list[sql.Composable]
    ) -> tuple[int, set[str]]:
        """Write one group of upserts (``columns`` only); ``conditions`` are the tombstone and
        truncate-watermark filters over the staged ``s``. Returns ``(rows written, stale keys)``."""
        stg = self._stage(conn, "cdc_stg_upsert", shape, columns)
        interval_cols = {c for c, t in shape.columns.items() if t == "interval"}
        copy_cols = sql.SQL(", ").join(map(sql.Identifier, [*columns, *STAGE_COLUMNS]))
        row_keys = [row_key(shape.keyless, shape.key_columns, up.key, up.row) for up in ups]
        by_row_key = dict(zip(row_keys, (up.key for up in ups), strict=True))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stg, copy_cols)) as copy:
            for rk, up in zip(row_keys, ups, strict=True):
                values = [adapt_value(up.row.get(c), c in interval_cols) for c in columns]
                copy.write_row([*values, up.position.commit_lsn, up.position.lsn, rk])
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        table = str(shape.table)
        cols = sql.SQL(", ").join(map(sql.Identifier, columns))
        s_cols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns)
        if shape.keyless:
            versions = sql.SQL(
                "INSERT INTO {rv} (table_name, row_key, commit_lsn, lsn)"
                " SELECT {t}, s.__cdc_key, s.__cdc_commit_lsn, s.__cdc_lsn FROM {stg} s{w}"
                " ON CONFLICT (table_name, row_key) DO NOTHING RETURNING row_key"
            ).format(rv=self._ctl(ROW_VERSIONS), t=sql.Literal(table), stg=stg, w=where)
            conflict: sql.Composable = sql.SQL("")
        else:
            versions = self._guarded_versions(stg, table, where)
            keys = list(shape.key_columns)
            updates = [c for c in columns if c not in keys] or keys[:1]
            conflict = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
                sql.SQL(", ").join(map(sql.Identifier, keys)),
                sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updates),
            )
        # Values go in as literals and the statement is sent without parameters: psycopg would
        # read a '%' inside a quoted data identifier as a placeholder.
        cur = conn.execute(
            sql.SQL(
                "WITH rv AS ({versions}), w AS (INSERT INTO {t} AS tgt ({cols}) OVERRIDING SYSTEM VALUE"
                " SELECT {s_cols} FROM {stg} s JOIN rv ON rv.row_key = s.__cdc_key{conflict})"
                " SELECT s.__cdc_key FROM {stg} s WHERE NOT EXISTS (SELECT 1 FROM rv WHERE rv.row_key = s.__cdc_key)"
            ).format(versions=versions, t=qualified(shape.table), cols=cols, s_cols=s_cols, stg=stg, conflict=conflict)
        )
        skipped = {by_row_key[str(r[0])] for r in cur.fetchall()}
        conn.execute(sql.SQL("DROP TABLE {}").format(stg))
        return len(ups) - len(skipped), skipped

    # -- delete

    def delete_keyed(self, conn: Conn, shape: TableShape, deletes: list[Delete]) -> tuple[int, set[str]]:
        """Guarded deletes of keyed rows and their versioned tombstones: ``(rows deleted, keys
        whose tombstone moved)`` (a delete whose tombstone did not move was a replay: stale)."""
        keys = list(shape.key_columns)
        by_row_key: dict[str, str] = {}
        stg = self._stage(conn, "cdc_stg_delete", shape, keys)
        copy_cols = sql.SQL(", ").join(map(sql.Identifier, [*keys, *STAGE_COLUMNS]))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stg, copy_cols)) as copy:
            for d in deletes:
                rk = row_key(shape.keyless, shape.key_columns, d.key, d.key_values)
                by_row_key[rk] = d.key
                copy.write_row([*(d.key_values[k] for k in keys), d.position.commit_lsn, d.position.lsn, rk])
        conn.execute(sql.SQL("ANALYZE {}").format(stg))
        match = sql.SQL(" AND ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(k)) for k in keys)
        row = conn.execute(
            sql.SQL(
                "WITH rv AS ({versions}), del AS (DELETE FROM {t} t USING {stg} s JOIN rv ON rv.row_key = s.__cdc_key"
                " WHERE {match} RETURNING 1) SELECT count(*) FROM del"
            ).format(
                versions=self._guarded_versions(stg, str(shape.table), sql.SQL("")),
                t=qualified(shape.table),
                stg=stg,
                match=match,
            )
        ).fetchone()
        stones = conn.execute(
            sql.SQL(
                "INSERT INTO {} AS tb (table_name, row_key, commit_lsn, lsn)"
                " SELECT {}, __cdc_key, __cdc_commit_lsn, __cdc_lsn FROM {}"
                " ON CONFLICT (table_name, row_key) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn,"
                " lsn = EXCLUDED.lsn, deleted_at = now()"
                " WHERE (tb.commit_lsn, tb.lsn) < (EXCLUDED.commit_lsn, EXCLUDED.lsn) RETURNING tb.row_key"
            ).format(self._ctl("tombstones"), sql.Literal(str(shape.table)), stg)
        ).fetchall()
        conn.execute(sql.SQL("DROP TABLE {}").format(stg))
        return (int(row[0]) if row else 0), {by_row_key[str(r[0])] for r in stones}

    def delete_keyless(self, conn: Conn, shape: TableShape, deletes: list[Delete], stale: set[str]) -> int:
        """Delete one row equal to each ``before`` image, once per delete event: its marker
        tombstone is inserted first and a marker already there makes the delete stale."""
        table = shape.table
        done = 0
        for d in sorted(deletes, key=lambda x: x.position):
            fresh = conn.execute(
                sql.SQL(
                    "INSERT INTO {} (table_name, row_key, commit_lsn, lsn) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (table_name, row_key) DO NOTHING RETURNING 1"
                ).format(self._ctl("tombstones")),
                (str(table), d.key, d.position.commit_lsn, d.position.lsn),
            ).fetchone()
            if fresh is None:
                stale.add(d.key)
                continue
            match = whole_row_match(shape.columns, d.key_values)
            row = conn.execute(
                sql.SQL("DELETE FROM {t} WHERE ctid = (SELECT ctid FROM {t} WHERE {m} LIMIT 1) RETURNING 1").format(
                    t=qualified(table), m=match
                )
            ).fetchone()
            done += 1 if row else 0
        return done

    # -- truncate

    def truncate(self, conn: Conn, shape: TableShape, position: Position) -> int:
        """Delete the table's rows older than ``position`` and their ``row_versions`` entries;
        returns rows deleted. Keys with a newer entry (written after the truncate by a change
        applied first) stay; a keyless table cannot tell its rows apart, so it loses them all
        (logged)."""
        table = str(shape.table)
        rv = self._ctl(ROW_VERSIONS)
        newer = conn.execute(
            sql.SQL("SELECT row_key FROM {} WHERE table_name = %s AND (commit_lsn, lsn) >= (%s, %s)").format(rv),
            (table, position.commit_lsn, position.lsn),
        ).fetchall()
        if not newer or shape.keyless:
            if newer:
                log.warning(
                    "keyless table truncated with rows inserted after the truncate", table=table, rows=len(newer)
                )
            cur = conn.execute(sql.SQL("DELETE FROM {}").format(qualified(shape.table)))
        else:
            cur = self._truncate_keeping(conn, shape, [str(r[0]) for r in newer])
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE table_name = %s AND (commit_lsn, lsn) < (%s, %s)").format(rv),
            (table, position.commit_lsn, position.lsn),
        )
        return max(cur.rowcount, 0)

    def _truncate_keeping(self, conn: Conn, shape: TableShape, keep: list[str]) -> psycopg.Cursor[Any]:
        """``DELETE`` every row but those keyed by ``keep`` (key texts, decoded back: COPY's text
        form parses them into the key columns' types; ``bytea`` keys were written as hex)."""
        keys = list(shape.key_columns)
        stg = sql.Identifier("cdc_stg_keep")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                stg, sql.SQL(", ").join(map(sql.Identifier, keys)), qualified(shape.table)
            )
        )
        copy_cols = sql.SQL(", ").join(map(sql.Identifier, keys))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stg, copy_cols)) as copy:
            for text in keep:
                values = orjson.loads(text)
                copy.write_row(
                    [
                        bytes.fromhex(v) if shape.columns[k] == "bytea" and isinstance(v, str) else v
                        for k, v in zip(keys, values, strict=True)
                    ]
                )
        match = sql.SQL(" AND ").join(sql.SQL("k.{c} = t.{c}").format(c=sql.Identifier(k)) for k in keys)
        cur = conn.execute(
            sql.SQL("DELETE FROM {} t WHERE NOT EXISTS (SELECT 1 FROM {} k WHERE {})").format(
                qualified(shape.table), stg, match
            )
        )
        conn.execute(sql.SQL("DROP TABLE {}").format(stg))
        return cur


# -- verification (sinks.postgres.verification: versioned_keys, guarded_delete)

VConn = psycopg.Connection[dict[str, Any]]


def has_version_columns(conn: VConn, table: TableId) -> bool:
    """True when ``table`` carries the ``columns`` mode's version columns (else: ``table`` mode)."""
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
        " AND a.attname = ANY(%s) AND NOT a.attisdropped",
        (table.schema, table.table, list(VERSION_COLUMNS)),
    ).fetchone()
    return bool(row and int(row["n"]) == len(VERSION_COLUMNS))


def stored_versions(conn: VConn, control: str, table: TableId, keys: Sequence[KeyBound]) -> list[VersionedKey]:
    """``keys`` (target key values, the plan's key order) with their ``row_versions`` position,
    ``(None, None)`` for a row the pipeline has not written."""
    texts = [key_text(k) for k in keys]
    rows = conn.execute(
        sql.SQL("SELECT row_key, commit_lsn, lsn FROM {}.{} WHERE table_name = %s AND row_key = ANY(%s)").format(
            sql.Identifier(control), sql.Identifier(ROW_VERSIONS)
        ),
        (str(table), texts),
    ).fetchall()
    found = {str(r["row_key"]): (int(r["commit_lsn"]), int(r["lsn"])) for r in rows}
    return [VersionedKey(tuple(k), found.get(t, (None, None))) for k, t in zip(keys, texts, strict=True)]


def guarded_delete_rows(
    conn: VConn, control: str, table: TableId, key: Sequence[str], rows: Sequence[VersionedKey]
) -> int:
    """Delete each of ``rows`` (``key``: the target key column names) only while its
    ``row_versions`` position still equals the one read, in one transaction; rows deleted.

    The ``row_versions`` row is locked first (the sink's order: version row, then user row): an
    existing one ``FOR UPDATE``; an absent one by inserting a placeholder at ``(0, 0)`` that
    is removed again (a sink transaction writing that key meanwhile makes the insert a no-op:
    the row was rewritten, it stays)."""
    rv = sql.SQL("{}.{}").format(sql.Identifier(control), sql.Identifier(ROW_VERSIONS))
    match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key)
    delete = sql.SQL("DELETE FROM {} WHERE {}").format(qualified(table), match)
    deleted = 0
    with conn.transaction():
        for row in rows:
            text = key_text(row.key)
            if row.versions == (None, None):
                placed = conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (table_name, row_key, commit_lsn, lsn) VALUES (%s, %s, 0, 0)"
                        " ON CONFLICT (table_name, row_key) DO NOTHING RETURNING 1"
                    ).format(rv),
                    (str(table), text),
                ).fetchone()
                if placed is None:
                    continue
                deleted += conn.execute(delete, list(row.key)).rowcount
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE table_name = %s AND row_key = %s").format(rv), (str(table), text)
                )
                continue
            now = conn.execute(
                sql.SQL("SELECT commit_lsn, lsn FROM {} WHERE table_name = %s AND row_key = %s FOR UPDATE").format(rv),
                (str(table), text),
            ).fetchone()
            if now is not None and (now["commit_lsn"], now["lsn"]) == tuple(row.versions):
                deleted += conn.execute(delete, list(row.key)).rowcount
    return deleted
