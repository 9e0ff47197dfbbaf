"""Verification against a PostgreSQL target (:class:`sinks.base.TargetVerification`): both sides
compute checksums server-side over the same canonical SQL (:mod:`sinks.pg_canonical`), results
live in ``<control_schema>.verify_results``, guarded deletes check the version columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from pipeline.core.events import TableId
from sinks.base import (
    CatalogColumn,
    ChecksumPlan,
    ChecksumSide,
    KeyBound,
    KeyRange,
    RowImage,
    TransientSinkError,
    VerificationRecord,
    VersionedKey,
    key_text,
)
from sinks.pg_canonical import (
    PgSide,
    canonical_expr,
    canonical_kind,
    pin_session,
    qualified,
    range_where,
    read_columns,
    row_text,
    side_table,
    values,
)
from sinks.postgres import versions as table_mode
from sinks.postgres.ddl import VERSION_COLUMNS

RESULTS_TABLE = "verify_results"

Conn = psycopg.Connection[dict[str, Any]]

_UPSERT = (
    "INSERT INTO {} (pipeline, table_name, target_table, status, ok, rows_source, rows_target, chunks,"
    " mismatched_chunks, result, verified_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (pipeline, table_name) DO UPDATE SET target_table = EXCLUDED.target_table,"
    " status = EXCLUDED.status, ok = EXCLUDED.ok, rows_source = EXCLUDED.rows_source,"
    " rows_target = EXCLUDED.rows_target, chunks = EXCLUDED.chunks,"
    " mismatched_chunks = EXCLUDED.mismatched_chunks, result = EXCLUDED.result,"
    " verified_at = EXCLUDED.verified_at"
)


KEYS_PER_STATEMENT = 500


class PgRowSide(PgSide):
    """A :class:`sinks.pg_canonical.PgSide` that also reads row images (key-level comparison):
    each compared column's canonical text, and on the source the row's ``xmin``."""

    def _column_texts(self) -> list[sql.Composable]:
        """Each compared column's canonical text, aliased ``c0..cn`` (the rows are dicts: an
        unaliased text of a key column would take the key column's name)."""
        return [
            sql.SQL("{} AS {}").format(
                canonical_expr(
                    sql.Identifier(c.source if self.side == "source" else c.target),
                    canonical_kind(c.typname),
                    native=(self.side == "source" or c.same_type),
                    exact=self.plan.numeric_text_exact,
                ),
                sql.Identifier(f"c{i}"),
            )
            for i, c in enumerate(self.plan.columns)
        ]

    def _version(self) -> sql.Composable:
        return sql.SQL("xmin::text") if self.side == "source" else sql.SQL("NULL::text")

    def _key_positions(self) -> list[int]:
        names = [c.source for c in self.plan.columns]
        return [names.index(k.source) for k in self.plan.key]

    def rows(self, key_range: KeyRange, keys: Sequence[KeyBound] | None = None) -> list[RowImage]:
        """See :meth:`sinks.base.ChecksumSide.rows` (``keys`` in statements of at most
        :data:`KEYS_PER_STATEMENT`)."""
        if self.side == "target" and not self.plan.target_exists:
            return []
        if keys is None:
            return self._rows(key_range, None)
        wanted = list(dict.fromkeys(tuple(k) for k in keys))
        out: list[RowImage] = []
        for i in range(0, len(wanted), KEYS_PER_STATEMENT):
            out.extend(self._rows(key_range, wanted[i : i + KEYS_PER_STATEMENT]))
        return out

    def _rows(self, key_range: KeyRange, keys: Sequence[KeyBound] | None) -> list[RowImage]:
        if keys is not None and not keys:
            return []
        idents = [sql.Identifier(c.source if self.side == "source" else c.target) for c in self.plan.key]
        where, params = range_where(self.plan, self.side, key_range)
        if keys is not None:
            one = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in self.plan.key))
            cond = sql.SQL("ROW({}) IN ({})").format(sql.SQL(", ").join(idents), sql.SQL(", ").join([one] * len(keys)))
            where = (where + sql.SQL(" AND ") if params else sql.SQL(" WHERE ")) + cond
            params = [*params, *(v for k in keys for v in k)]
        statement = sql.SQL("SELECT {k}, {v} AS v, {texts} FROM {t}{w}").format(
            k=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(ident, sql.Identifier(f"k{i}")) for i, ident in enumerate(idents)
            ),
            v=self._version(),
            texts=sql.SQL(", ").join(self._column_texts()),
            t=qualified(side_table(self.plan, self.side)),
            w=where,
        )
        n = len(self.plan.key)
        positions = self._key_positions()
        out: list[RowImage] = []
        for row in self.conn.cursor(row_factory=tuple_row).execute(statement, params).fetchall():
            got = values(row)
            texts = tuple(got[n + 1 :])
            out.append(RowImage(tuple(got[:n]), key_text([texts[i] for i in positions]), texts, got[n]))
        return out

    def digests(self, key_range: KeyRange) -> list[RowImage]:
        """See :meth:`sinks.base.ChecksumSide.digests`: ``md5(<row text>)`` computed server-side."""
        if self.side == "target" and not self.plan.target_exists:
            return []
        idents = [sql.Identifier(c.source if self.side == "source" else c.target) for c in self.plan.key]
        positions = self._key_positions()
        texts = self._column_texts()
        where, params = range_where(self.plan, self.side, key_range)
        statement = sql.SQL("SELECT {k}, {v} AS v, md5({rt}) AS d, {kt} FROM {t}{w}").format(
            k=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(ident, sql.Identifier(f"k{i}")) for i, ident in enumerate(idents)
            ),
            v=self._version(),
            rt=row_text(self.plan, self.side),
            kt=sql.SQL(", ").join(texts[i] for i in positions),
            t=qualified(side_table(self.plan, self.side)),
            w=where,
        )
        n = len(self.plan.key)
        out: list[RowImage] = []
        for row in self.conn.cursor(row_factory=tuple_row).execute(statement, params).fetchall():
            got = values(row)
            out.append(RowImage(tuple(got[:n]), key_text(got[n + 2 :]), (got[n + 1],), got[n]))
        return out

    def bucket_rows(self, buckets: int, selected: Sequence[int]) -> list[RowImage]:
        """See :meth:`sinks.base.ChecksumSide.bucket_rows` (``texts`` is the one row text)."""
        if (self.side == "target" and not self.plan.target_exists) or not selected:
            return []
        statement = sql.SQL(
            "SELECT rt, v FROM (SELECT {rt} AS rt, {v} AS v FROM {t}) s"
            " WHERE ((get_byte(decode(md5(rt), 'hex'), 0) << 8) | get_byte(decode(md5(rt), 'hex'), 1)) %% %s"
            " = ANY(%s)"
        ).format(rt=row_text(self.plan, self.side), v=self._version(), t=qualified(side_table(self.plan, self.side)))
        rows = self.conn.cursor(row_factory=tuple_row).execute(statement, (buckets, list(selected))).fetchall()
        return [RowImage((), str(v[0]), (str(v[0]),), v[1]) for v in (values(r) for r in rows)]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PostgresVerification:
    """A verification session on a PostgreSQL target: autocommit, the canonical session settings,
    ``statement_timeout`` of ``statement_timeout_s`` seconds; opened on first use."""

    def __init__(self, conninfo: str, application_name: str, control_schema: str, statement_timeout_s: float) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._control_schema = control_schema
        self._statement_timeout_s = statement_timeout_s
        self._conn: Conn | None = None

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    row_factory=dict_row,
                    application_name=self._application_name,
                    connect_timeout=10,
                )
            except psycopg.OperationalError as exc:
                raise TransientSinkError(f"cannot connect to the target: {_first_line(exc)}") from exc
            pin_session(self._conn, self._statement_timeout_s)
        return self._conn

    def columns(self, table: TableId) -> list[CatalogColumn]:
        """Catalog columns of ``table`` with their collations (empty when absent)."""
        return read_columns(self._connection(), table)

    def sides(self, source: psycopg.Connection[Any], plan: ChecksumPlan) -> tuple[ChecksumSide, ChecksumSide]:
        """Server-side SQL checksums on both databases (the source session gets the same pinned settings)."""
        pin_session(source)
        return PgRowSide(source, plan, "source"), PgRowSide(self._connection(), plan, "target")

    def versioned_keys(self, plan: ChecksumPlan, key_range: KeyRange) -> list[VersionedKey]:
        """Keys and version columns of the target rows in ``key_range``; for a table without
        them (``target.versions: table``) the positions in ``row_versions`` (``(None, None)``
        for a row the pipeline never wrote)."""
        if plan.keyless or not plan.target_exists:
            return []
        conn = self._connection()
        in_columns = table_mode.has_version_columns(conn, plan.target)
        keys = sql.SQL(", ").join(sql.Identifier(c.target) for c in plan.key)
        versions = sql.SQL(", ").join(sql.Identifier(v) for v in VERSION_COLUMNS) if in_columns else None
        where, params = range_where(plan, "target", key_range)
        select = sql.SQL(", ").join([keys, versions]) if versions is not None else keys
        rows = conn.execute(
            sql.SQL("SELECT {s} FROM {t}{w}").format(s=select, t=qualified(plan.target), w=where), params
        ).fetchall()
        n = len(plan.key)
        if not in_columns:
            return table_mode.stored_versions(conn, self._control_schema, plan.target, [tuple(values(r)) for r in rows])
        return [VersionedKey(tuple(v[:n]), tuple(v[n:])) for v in (values(r) for r in rows)]

    def guarded_delete(self, plan: ChecksumPlan, rows: Sequence[VersionedKey]) -> int:
        """``DELETE ... WHERE key = %s AND __cdc_commit_lsn = %s AND __cdc_lsn = %s`` per row, one
        transaction; for a table without version columns (``target.versions: table``) the same
        guard on the ``row_versions`` position (:func:`sinks.postgres.versions.guarded_delete_rows`)."""
        if not rows:
            return 0
        if not table_mode.has_version_columns(self._connection(), plan.target):
            key = [c.target for c in plan.key]
            return table_mode.guarded_delete_rows(self._connection(), self._control_schema, plan.target, key, rows)
        names = [*(c.target for c in plan.key), *VERSION_COLUMNS]
        match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(name)) for name in names)
        statement = sql.SQL("DELETE FROM {} WHERE {}").format(qualified(plan.target), match)
        conn = self._connection()
        deleted = 0
        with conn.transaction():
            for row in rows:
                deleted += conn.execute(statement, [*row.key, *row.versions]).rowcount
        return deleted

    def _results_table(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self._control_schema), sql.Identifier(RESULTS_TABLE))

    def _ensure_results(self, conn: Conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdc-verify-ddl', 0))")
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._control_schema)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (pipeline text NOT NULL, table_name text NOT NULL,"
                    " target_table text, status text NOT NULL, ok boolean NOT NULL, rows_source bigint NOT NULL,"
                    " rows_target bigint NOT NULL, chunks integer NOT NULL, mismatched_chunks integer NOT NULL,"
                    " result jsonb NOT NULL, verified_at timestamptz NOT NULL, PRIMARY KEY (pipeline, table_name))"
                ).format(self._results_table())
            )

    def store_results(self, pipeline: str, records: Sequence[VerificationRecord]) -> None:
        """Create ``verify_results`` when missing, then upsert ``records`` in one transaction."""
        conn = self._connection()
        self._ensure_results(conn)
        statement = sql.SQL(_UPSERT).format(self._results_table())
        with conn.transaction():
            for r in records:
                conn.execute(
                    statement,
                    (
                        pipeline,
                        r.table,
                        r.target_table,
                        r.status,
                        r.ok,
                        r.rows_source,
                        r.rows_target,
                        r.chunks,
                        r.mismatched_chunks,
                        Jsonb(dict(r.detail)),
                        r.verified_at,
                    ),
                )

    def load_results(self, pipeline: str) -> dict[str, VerificationRecord]:
        """The stored rows of ``pipeline`` by table name (empty when the table does not exist)."""
        try:
            rows = (
                self._connection()
                .execute(
                    sql.SQL(
                        "SELECT table_name, ok, status, rows_source, rows_target, chunks, mismatched_chunks,"
                        " verified_at, target_table, result FROM {} WHERE pipeline = %s"
                    ).format(self._results_table()),
                    (pipeline,),
                )
                .fetchall()
            )
        except psycopg.errors.UndefinedTable:
            return {}
        out: dict[str, VerificationRecord] = {}
        for row in rows:
            v = values(row)
            out[str(v[0])] = VerificationRecord(
                str(v[0]), bool(v[1]), str(v[2]), int(v[3]), int(v[4]), int(v[5]), int(v[6]), v[7], v[8], v[9] or {}
            )
        return out

    def close(self) -> None:
        """Close the session."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
