"""The verification part of the ``Target`` seam on every backend: results stored in and loaded
from ``<control_schema>.verify_results``, and guarded deletes that keep rewritten rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pipeline.core.events import TableId
from pipeline.localstack import LocalStack
from sinks.base import ChecksumPlan, CompareColumn, Target, VerificationRecord, VersionedKey
from sinks.postgres.target import PostgresTarget
from sinks.sqlalchemy.ddl import physical
from sinks.sqlalchemy.target import SqlAlchemyTarget
from tests.conftest import Databases

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Target]:
    control = unique("ctl")
    if request.param == "sqlite":
        t: Target = SqlAlchemyTarget(make_url(f"sqlite:///{tmp_path / 'target.db'}"), control_schema=control)
        yield t
        t.close()
        return
    if request.param == "postgresql":
        databases: Databases = request.getfixturevalue("databases")
        t = PostgresTarget(databases.target_dsn, control_schema=control)
        yield t
        t.close()
        return
    stack: LocalStack = request.getfixturevalue("local_stack")
    t = SqlAlchemyTarget(make_url(stack.settings.mariadb_url()), control_schema=control)
    yield t
    t.close()
    conn = stack.mariadb.connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{control}`")
        cur.execute(f"DROP DATABASE IF EXISTS `{control}_data`")
    conn.close()


def record(table: str, ok: bool, rows: int, at: datetime) -> VerificationRecord:
    return VerificationRecord(
        table, ok, "match" if ok else "mismatch", rows, rows + (0 if ok else 1), 2, 0 if ok else 1, at,
        target_table=f"public.{table.split('.')[1]}", detail={"table": table, "chunks": 2},
    )  # fmt: skip


def test_results_are_stored_replaced_and_loaded(target: Target) -> None:
    verification = target.verification(30)
    try:
        assert verification.load_results("p") == {}  # nothing stored yet (no table)
        first = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        verification.store_results("p", [record("public.a", True, 10, first), record("public.b", False, 5, first)])
        later = datetime(2026, 1, 2, 4, 0, 0, tzinfo=UTC)
        verification.store_results("p", [record("public.b", True, 6, later)])  # replaces b's row only
        verification.store_results("other", [record("public.a", False, 1, later)])
        stored = verification.load_results("p")
    finally:
        verification.close()
    assert set(stored) == {"public.a", "public.b"}
    a, b = stored["public.a"], stored["public.b"]
    assert (a.ok, a.status, a.rows_source, a.rows_target, a.chunks, a.mismatched_chunks) == (
        True,
        "match",
        10,
        10,
        2,
        0,
    )
    assert a.verified_at == first and a.target_table == "public.a"
    assert dict(a.detail) == {"table": "public.a", "chunks": 2}
    assert (b.ok, b.rows_source, b.verified_at) == (True, 6, later)


def _make_rows(target: Target, table: TableId) -> None:
    rows = [(1, "a", 10, 1), (2, "b", 10, 2), (3, "c", 10, 3)]
    if isinstance(target, PostgresTarget):
        with psycopg.connect(target._conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.schema}"')
            conn.execute(
                f'CREATE TABLE "{table.schema}"."{table.table}" (id int PRIMARY KEY, name text,'
                " __cdc_commit_lsn bigint NOT NULL, __cdc_lsn bigint NOT NULL)"
            )
            for r in rows:
                conn.execute(f'INSERT INTO "{table.schema}"."{table.table}" VALUES (%s, %s, %s, %s)', r)
        return
    assert isinstance(target, SqlAlchemyTarget)
    schema, name = physical(table, target.dialect)
    md = sa.MetaData()
    t = sa.Table(
        name,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text),
        sa.Column("__cdc_commit_lsn", sa.BigInteger, nullable=False),
        sa.Column("__cdc_lsn", sa.BigInteger, nullable=False),
        schema=schema,
    )
    with target.engine.begin() as conn:
        if schema is not None:
            conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        md.create_all(conn)
        conn.execute(
            sa.insert(t), [dict(zip(("id", "name", "__cdc_commit_lsn", "__cdc_lsn"), r, strict=True)) for r in rows]
        )


def test_guarded_delete_keeps_rows_whose_versions_changed(target: Target, unique: Callable[[str], str]) -> None:
    schema = f"{target._control_schema if isinstance(target, SqlAlchemyTarget) else target._control}_data"
    table = TableId(schema, "items")
    _make_rows(target, table)
    key = CompareColumn("id", "id", "int4")
    plan = ChecksumPlan(table, table, (key, CompareColumn("name", "name", "text")), (key,))
    verification = target.verification(30)
    try:
        rows = verification.versioned_keys(plan, ((1,), None))  # 1 < id
        assert sorted(rows, key=lambda r: r.key) == [VersionedKey((2,), (10, 2)), VersionedKey((3,), (10, 3))]
        stale = [VersionedKey((2,), (10, 2)), VersionedKey((3,), (10, 99))]  # row 3 was rewritten meanwhile
        assert verification.guarded_delete(plan, stale) == 1
        left = verification.versioned_keys(plan, (None, None))
    finally:
        verification.close()
    assert sorted(r.key for r in left) == [(1,), (3,)]
