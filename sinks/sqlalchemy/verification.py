"""Verification against a MariaDB/MySQL or SQLite target (:class:`sinks.base.TargetVerification`).

Both sides' rows are fetched and each row's canonical text is computed in Python by the
*source* column type (:mod:`sinks.sqlalchemy.canonical`), since these engines cannot compute
PostgreSQL's text forms. Key ranges are row-value comparisons on each side (the target's
binary collation orders text keys by code point). Results live in ``verify_results`` of the
control schema, written through SQLAlchemy Core.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from pipeline.core.events import TableId
from sinks.base import (
    CatalogColumn,
    Checksum,
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
from sinks.pg_canonical import count_rows, pin_session, qualified, range_where, values
from sinks.sqlalchemy import canonical, ddl
from sinks.sqlalchemy import versions as table_mode
from sinks.sqlalchemy.sink import is_transient
from sinks.sqlalchemy.types import adapt

RESULTS_TABLE = "verify_results"


def _bucketed(texts: Sequence[str], buckets: int) -> dict[int, Checksum]:
    by_bucket: dict[int, list[str]] = {}
    for text in texts:
        by_bucket.setdefault(canonical.bucket_of(text, buckets), []).append(text)
    return {b: canonical.checksum(items) for b, items in by_bucket.items()}


def _images(plan: ChecksumPlan, rows: Sequence[Sequence[Any]], versioned: bool) -> list[RowImage]:
    """Row images of fetched rows ``(key values..., [xmin,] compared column values...)``."""
    types = canonical.compared_types((c.typname for c in plan.columns), plan.numeric_text_exact)
    names = [c.source for c in plan.columns]
    positions = [names.index(k.source) for k in plan.key]
    n = len(plan.key)
    start = n + 1 if versioned else n
    out: list[RowImage] = []
    for row in rows:
        texts = tuple(canonical.canonical_value(v, t) for v, t in zip(row[start:], types, strict=True))
        version = str(row[n]) if versioned else None
        out.append(RowImage(tuple(row[:n]), key_text([texts[i] for i in positions]), texts, version))
    return out


def _digests(images: list[RowImage]) -> list[RowImage]:
    """``images`` with their texts replaced by the md5 of their JSON (see ``ChecksumSide.digests``)."""
    return [
        RowImage(
            i.key,
            i.key_text,
            (hashlib.md5(orjson.dumps(list(i.texts)), usedforsecurity=False).hexdigest(),),
            i.version,
        )
        for i in images
    ]


def _wanted(plan: ChecksumPlan, keys: Sequence[KeyBound]) -> set[str]:
    """The key texts of ``keys`` (values of either side, canonical by the source key types)."""
    types = canonical.compared_types((c.typname for c in plan.key), plan.numeric_text_exact)
    return {key_text([canonical.canonical_value(v, t) for v, t in zip(k, types, strict=True)]) for k in keys}


def _keep(images: list[RowImage], plan: ChecksumPlan, keys: Sequence[KeyBound] | None) -> list[RowImage]:
    if keys is None:
        return images
    wanted = _wanted(plan, keys)
    return [i for i in images if i.key_text in wanted]


def _in_buckets(texts: Sequence[tuple[str, str | None]], buckets: int, selected: Sequence[int]) -> list[RowImage]:
    chosen = set(selected)
    return [RowImage((), t, (t,), v) for t, v in texts if canonical.bucket_of(t, buckets) in chosen]


class PythonSourceSide:
    """The PostgreSQL source read for a Python comparison: rows fetched (intervals as Debezium
    ``MicroDuration`` microseconds, :func:`canonical.interval_micros_sql`), text computed in Python."""

    def __init__(self, conn: psycopg.Connection[Any], plan: ChecksumPlan) -> None:
        self.conn = conn
        self.plan = plan

    def _select(self) -> sql.Composable:
        parts: list[sql.Composable] = []
        for c in self.plan.columns:
            ident = sql.Identifier(c.source)
            value: sql.Composable = ident
            if c.typname == "interval":
                value = sql.SQL(canonical.interval_micros_sql("{c}")).format(c=ident)
            # aliased: the rows may be dicts, and two interval expressions would share a name
            parts.append(sql.SQL("{} AS {}").format(value, sql.Identifier(f"__cdc_verify_c{len(parts)}")))
        return sql.SQL(", ").join(parts)

    def _texts(self, key_range: KeyRange | None) -> list[str]:
        where, params = range_where(self.plan, "source", key_range) if key_range else (sql.SQL(""), [])
        rows = self.conn.execute(
            sql.SQL("SELECT {} FROM {}{}").format(self._select(), qualified(self.plan.table), where), params
        ).fetchall()
        types = canonical.compared_types((c.typname for c in self.plan.columns), self.plan.numeric_text_exact)
        return [canonical.row_text(values(r), types) for r in rows]

    def chunk(self, key_range: KeyRange) -> Checksum:
        """Count and checksum of the canonical row texts of ``key_range``."""
        return canonical.checksum(self._texts(key_range))

    def buckets(self, buckets: int) -> dict[int, Checksum]:
        """Per-bucket count and checksum of the canonical row texts."""
        return _bucketed(self._texts(None), buckets)

    def count(self) -> int:
        """``count(*)`` of the source table."""
        return count_rows(self.conn, self.plan.table)

    def rows(self, key_range: KeyRange, keys: Sequence[KeyBound] | None = None) -> list[RowImage]:
        """Row images of ``key_range`` with the rows' ``xmin`` (filtered to ``keys`` in Python)."""
        idents = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(sql.Identifier(c.source), sql.Identifier(f"__cdc_verify_k{i}"))
            for i, c in enumerate(self.plan.key)
        )
        where, params = range_where(self.plan, "source", key_range)
        rows = self.conn.execute(  # key columns aliased: the rows may be dicts, names must not repeat
            sql.SQL("SELECT {}, xmin::text AS __cdc_verify_v, {} FROM {}{}").format(
                idents, self._select(), qualified(self.plan.table), where
            ),
            params,
        ).fetchall()
        return _keep(_images(self.plan, [values(r) for r in rows], True), self.plan, keys)

    def digests(self, key_range: KeyRange) -> list[RowImage]:
        """Digests of :meth:`rows` (computed in Python)."""
        return _digests(self.rows(key_range))

    def bucket_rows(self, buckets: int, selected: Sequence[int]) -> list[RowImage]:
        """The rows of the ``selected`` buckets, with their ``xmin``."""
        rows = self.conn.execute(
            sql.SQL("SELECT xmin::text AS __cdc_verify_v, {} FROM {}").format(
                self._select(), qualified(self.plan.table)
            )
        ).fetchall()
        types = canonical.compared_types((c.typname for c in self.plan.columns), self.plan.numeric_text_exact)
        texts = [(canonical.row_text(v[1:], types), str(v[0])) for v in (values(r) for r in rows)]
        return _in_buckets(texts, buckets, selected)


class SqlAlchemyTargetSide:
    """The target's rows fetched through SQLAlchemy, canonical text in Python by the source types."""

    def __init__(self, engine: Engine, dialect: str, plan: ChecksumPlan) -> None:
        self.engine = engine
        self.dialect = dialect
        self.plan = plan

    def clause(self, extra: Sequence[str] = ()) -> sa.TableClause:
        schema, name = ddl.physical(self.plan.target, self.dialect)
        names = dict.fromkeys([*(c.target for c in self.plan.columns), *(c.target for c in self.plan.key), *extra])
        return sa.table(name, *(sa.column(n) for n in names), schema=schema)

    def in_range(self, query: sa.Select[Any], t: sa.TableClause, key_range: KeyRange) -> sa.Select[Any]:
        """``query`` restricted to ``low < key <= high`` (row values; driver values via ``adapt``)."""
        keys = sa.tuple_(*(t.c[c.target] for c in self.plan.key))
        low, high = key_range
        if low is not None:
            query = query.where(keys > sa.tuple_(*(sa.literal(adapt(v, self.dialect)) for v in low)))
        if high is not None:
            query = query.where(keys <= sa.tuple_(*(sa.literal(adapt(v, self.dialect)) for v in high)))
        return query

    def _texts(self, key_range: KeyRange | None) -> list[str]:
        if not self.plan.target_exists:
            return []
        t = self.clause()
        query = sa.select(*(t.c[c.target] for c in self.plan.columns))
        if key_range is not None:
            query = self.in_range(query, t, key_range)
        types = canonical.compared_types((c.typname for c in self.plan.columns), self.plan.numeric_text_exact)
        with _errors(), self.engine.connect() as conn:
            return [canonical.row_text(tuple(r), types) for r in conn.execute(query)]

    def chunk(self, key_range: KeyRange) -> Checksum:
        """Count and checksum of the canonical row texts of ``key_range``."""
        return canonical.checksum(self._texts(key_range))

    def buckets(self, buckets: int) -> dict[int, Checksum]:
        """Per-bucket count and checksum of the canonical row texts."""
        return _bucketed(self._texts(None), buckets)

    def count(self) -> int:
        """Rows of the target table."""
        return len(self._texts(None))

    def rows(self, key_range: KeyRange, keys: Sequence[KeyBound] | None = None) -> list[RowImage]:
        """Row images of ``key_range`` (filtered to ``keys`` in Python)."""
        if not self.plan.target_exists:
            return []
        t = self.clause()
        query = self.in_range(
            sa.select(*(t.c[c.target] for c in self.plan.key), *(t.c[c.target] for c in self.plan.columns)),
            t,
            key_range,
        )
        with _errors(), self.engine.connect() as conn:
            fetched = [tuple(r) for r in conn.execute(query)]
        return _keep(_images(self.plan, fetched, False), self.plan, keys)

    def digests(self, key_range: KeyRange) -> list[RowImage]:
        """Digests of :meth:`rows` (computed in Python)."""
        return _digests(self.rows(key_range))

    def bucket_rows(self, buckets: int, selected: Sequence[int]) -> list[RowImage]:
        """The rows of the ``selected`` buckets."""
        return _in_buckets([(t, None) for t in self._texts(None)], buckets, selected)


@contextmanager
def _errors() -> Iterator[None]:
    """Transient database errors become TransientSinkError; others propagate."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if is_transient(exc):
            raise TransientSinkError(f"verification query failed: {exc.orig}") from exc
        raise


def results_table(control_schema: str, dialect: sa.engine.Dialect) -> sa.Table:
    """``<control_schema>.verify_results`` on ``dialect`` (``verified_at`` in UTC without zone)."""
    schema, name = ddl.physical(TableId(control_schema, RESULTS_TABLE), ddl.dialect_kind(dialect))
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("pipeline", sa.String(255), primary_key=True),
        sa.Column("table_name", sa.String(255), primary_key=True),
        sa.Column("target_table", sa.String(255)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("rows_source", sa.BigInteger, nullable=False),
        sa.Column("rows_target", sa.BigInteger, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("mismatched_chunks", sa.Integer, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=False), nullable=False),
        schema=schema,
        **ddl.table_options(dialect),
    )


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SqlAlchemyVerification:
    """Verification on a MariaDB/MySQL or SQLite target through the target's engine."""

    def __init__(self, engine: Engine, dialect: str, control_schema: str) -> None:
        self._engine = engine
        self._dialect = dialect
        self._results = results_table(control_schema, engine.dialect)

    def columns(self, table: TableId) -> list[CatalogColumn]:
        """Columns of ``table`` (type text as the database reports it; no collation: text keys
        are ordered by code point, like the source's "C" collation)."""
        with _errors(), self._engine.connect() as conn:
            shape = ddl.read_shape(conn, table)
        if shape is None:
            return []
        return [CatalogColumn(name, type_, type_) for name, type_ in shape.columns.items()]

    def sides(self, source: psycopg.Connection[Any], plan: ChecksumPlan) -> tuple[ChecksumSide, ChecksumSide]:
        """Python canonical text on both sides."""
        pin_session(source)
        return PythonSourceSide(source, plan), SqlAlchemyTargetSide(self._engine, self._dialect, plan)

    def versioned_keys(self, plan: ChecksumPlan, key_range: KeyRange) -> list[VersionedKey]:
        """Keys and version columns of the target rows in ``key_range``; for a table without
        them (``target.versions: table``) the positions in ``row_versions`` (``(None, None)``
        for a row the pipeline never wrote)."""
        if plan.keyless or not plan.target_exists:
            return []
        side = SqlAlchemyTargetSide(self._engine, self._dialect, plan)
        with _errors(), self._engine.connect() as conn:
            in_columns = table_mode.has_version_columns(conn, plan.target)
            versions = ddl.VERSION_COLUMNS if in_columns else ()
            t = side.clause(versions)
            query = sa.select(*(t.c[c.target] for c in plan.key), *(t.c[v] for v in versions))
            rows = conn.execute(side.in_range(query, t, key_range)).all()
            n = len(plan.key)
            if not in_columns:
                rv = table_mode.row_versions_beside(self._results)
                return table_mode.stored_versions(conn, rv, plan.target, [tuple(r) for r in rows])
        return [VersionedKey(tuple(r[:n]), tuple(r[n:])) for r in rows]

    def guarded_delete(self, plan: ChecksumPlan, rows: Sequence[VersionedKey]) -> int:
        """One ``DELETE ... WHERE key = ? AND versions = ?`` per row, in one transaction; for a
        table without version columns (``target.versions: table``) the same guard on the
        ``row_versions`` position (:func:`sinks.sqlalchemy.versions.guarded_delete_rows`)."""
        if not rows:
            return 0
        side = SqlAlchemyTargetSide(self._engine, self._dialect, plan)
        with _errors(), self._engine.connect() as conn:
            in_columns = table_mode.has_version_columns(conn, plan.target)
        if not in_columns:
            rv = table_mode.row_versions_beside(self._results)
            key = [c.target for c in plan.key]
            with _errors(), self._engine.begin() as conn:
                return table_mode.guarded_delete_rows(conn, self._dialect, rv, side.clause(), key, plan.target, rows)
        t = side.clause(ddl.VERSION_COLUMNS)
        names = [*(c.target for c in plan.key), *ddl.VERSION_COLUMNS]
        deleted = 0
        with _errors(), self._engine.begin() as conn:
            for row in rows:
                conditions = [t.c[n] == v for n, v in zip(names, [*row.key, *row.versions], strict=True)]
                deleted += int(conn.execute(sa.delete(t).where(*conditions)).rowcount)
        return deleted

    def _ensure_results(self, conn: Connection) -> None:
        ddl.ensure_schema(conn, self._results.schema)
        self._results.create(conn, checkfirst=True)

    def store_results(self, pipeline: str, records: Sequence[VerificationRecord]) -> None:
        """Replace the rows of ``records``' tables (delete + insert, one transaction)."""
        t = self._results
        with _errors(), self._engine.begin() as conn:
            self._ensure_results(conn)
            for r in records:
                conn.execute(sa.delete(t).where(t.c.pipeline == pipeline, t.c.table_name == r.table))
                conn.execute(
                    sa.insert(t).values(
                        pipeline=pipeline,
                        table_name=r.table,
                        target_table=r.target_table,
                        status=r.status,
                        ok=r.ok,
                        rows_source=r.rows_source,
                        rows_target=r.rows_target,
                        chunks=r.chunks,
                        mismatched_chunks=r.mismatched_chunks,
                        result=json.dumps(dict(r.detail), default=str),
                        verified_at=r.verified_at.astimezone(UTC).replace(tzinfo=None),
                    )
                )

    def load_results(self, pipeline: str) -> dict[str, VerificationRecord]:
        """The stored rows of ``pipeline`` by table name (empty when the table does not exist)."""
        t = self._results
        with _errors(), self._engine.connect() as conn:
            if not sa.inspect(conn).has_table(t.name, schema=t.schema):
                return {}
            rows = conn.execute(sa.select(t).where(t.c.pipeline == pipeline)).mappings().all()
        return {
            str(r["table_name"]): VerificationRecord(
                table=str(r["table_name"]),
                ok=bool(r["ok"]),
                status=str(r["status"]),
                rows_source=int(r["rows_source"]),
                rows_target=int(r["rows_target"]),
                chunks=int(r["chunks"]),
                mismatched_chunks=int(r["mismatched_chunks"]),
                verified_at=_aware(r["verified_at"]),
                target_table=r["target_table"],
                detail=json.loads(r["result"]),
            )
            for r in rows
        }

    def close(self) -> None:
        """Nothing to release: the engine belongs to the target."""
