"""The verification part of the ``Target`` seam on every backend: results stored in and loaded
from ``<control_schema>.verify_results``, and guarded deletes that keep rewritten rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.rows import dict_row

from pipeline.core.events import TableId
from sinks.base import ChecksumPlan, CompareColumn, Target, VerificationRecord, VersionedKey
from sinks.postgres.target import PostgresTarget
from sinks.sqlalchemy.ddl import physical
from sinks.sqlalchemy.target import SqlAlchemyTarget
from tests.conftest import Databases

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def target(each_target: Target) -> Target:
    """A Target of each backend (:func:`tests.integration.each_target.each_target`)."""
    return each_target


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


def _data_schema(target: Target) -> str:
    """A schema for a test's tables next to ``target``'s control schema."""
    if isinstance(target, SqlAlchemyTarget):
        return f"{target._control_schema}_data"
    assert isinstance(target, PostgresTarget)
    return f"{target._control}_data"


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
    schema = _data_schema(target)
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


def _source_table(databases: Databases, table: TableId) -> None:
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.schema}"')
        conn.execute(f'CREATE TABLE "{table.schema}"."{table.table}" (id int PRIMARY KEY, name text)')
        conn.execute(f'INSERT INTO "{table.schema}"."{table.table}" VALUES (1, %s), (2, %s), (4, %s)', ("a", "B", "d"))


def test_row_images_name_the_differing_keys_on_both_sides(target: Target, databases: Databases) -> None:
    """Source and target images of the same rows have equal key texts; the differing column
    shows in the texts; only the source side carries a version (xmin), which an update changes."""
    schema = _data_schema(target)
    table = TableId(schema, "items")
    _make_rows(target, table)  # target: (1, a) (2, b) (3, c)
    _source_table(databases, table)  # source: (1, a) (2, B) (4, d)
    key = CompareColumn("id", "id", "int4")
    plan = ChecksumPlan(table, table, (key, CompareColumn("name", "name", "text")), (key,))
    verification = target.verification(30)
    try:
        with psycopg.connect(databases.source_dsn, autocommit=True, row_factory=dict_row) as sconn:  # as the verifier's
            src, tgt = verification.sides(sconn, plan)
            s = {i.key_text: i for i in src.rows((None, None))}
            t = {i.key_text: i for i in tgt.rows((None, None))}
            assert set(s) & set(t) == {k for k in s if s[k].key in ((1,), (2,))}
            differing = sorted(k for k in s.keys() | t.keys() if k not in s or k not in t or s[k].texts != t[k].texts)
            assert len(differing) == 3  # 2 differs, 3 only on the target, 4 only on the source
            sd = {i.key_text: i for i in src.digests((None, None))}
            td = {i.key_text: i for i in tgt.digests((None, None))}
            assert set(sd) == set(s) and set(td) == set(t)
            equal = [k for k in sd.keys() & td.keys() if sd[k].texts == td[k].texts]
            assert [sd[k].key for k in equal] == [(1,)]  # (2, B) vs (2, b) differs
            picked = src.rows((None, None), [(2,), (3,)])  # key 3 is absent on the source
            assert [(i.key, i.texts) for i in picked] == [((2,), ("2", "B"))]
            assert picked[0].version is not None and all(i.version is None for i in t.values())
            assert sorted((tuple(i.key), i.texts) for i in tgt.rows(((1,), None), [(2,), (3,)])) == [
                ((2,), ("2", "b")),
                ((3,), ("3", "c")),
            ]
            sconn.execute(f'UPDATE "{schema}"."items" SET name = name WHERE id = 2')  # same value, new version
            again = src.rows((None, None), [(2,)])
            assert again[0].texts == picked[0].texts and again[0].version != picked[0].version
    finally:
        verification.close()


def test_bucket_rows_are_the_differing_buckets_copies(target: Target, databases: Databases) -> None:
    """Keyless rows of the selected buckets, one image per copy, on both sides."""
    schema = _data_schema(target)
    table = TableId(schema, "items")
    _make_rows(target, table)  # target: (1, a) (2, b) (3, c)
    _source_table(databases, table)
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{schema}"."items" DROP CONSTRAINT items_pkey')
        conn.execute(f'INSERT INTO "{schema}"."items" VALUES (1, %s)', ("a",))  # a second copy of (1, a)
    cols = (CompareColumn("id", "id", "int4"), CompareColumn("name", "name", "text"))
    plan = ChecksumPlan(table, table, cols, ())
    verification = target.verification(30)
    try:
        with psycopg.connect(databases.source_dsn, autocommit=True, row_factory=dict_row) as sconn:  # as the verifier's
            src, tgt = verification.sides(sconn, plan)
            s_sums, t_sums = src.buckets(4), tgt.buckets(4)
            every = list(range(4))
            s_rows, t_rows = src.bucket_rows(4, every), tgt.bucket_rows(4, every)
            assert len(s_rows) == 4 and len(t_rows) == 3
            assert all(i.version is not None for i in s_rows) and all(i.version is None for i in t_rows)
            assert sum(c[0] for c in s_sums.values()) == 4 and sum(c[0] for c in t_sums.values()) == 3
            shared = {i.key_text for i in s_rows} & {i.key_text for i in t_rows}
            assert len(shared) == 1  # (1, a); its copies: 2 on the source, 1 on the target
            text = next(iter(shared))
            assert [i.key_text for i in s_rows].count(text) == 2
            one = next(b for b, c in s_sums.items() if c[0] >= 2 and any(i.key_text == text for i in s_rows))
            assert {i.key_text for i in src.bucket_rows(4, [one])} >= {text}
    finally:
        verification.close()


def test_lock_rows_makes_writers_of_those_rows_wait(databases: Databases) -> None:
    """``lock_rows`` share-locks exactly the given keys until its transaction ends."""
    from pipeline.control.verify.source import lock_rows  # noqa: PLC0415 - the control plane's source helper

    table = TableId("public", "locked")
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.locked (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO public.locked SELECT g, 0 FROM generate_series(1, 5) g")
    key = CompareColumn("id", "id", "int4")
    plan = ChecksumPlan(table, table, (key, CompareColumn("v", "v", "int4")), (key,))
    with (
        psycopg.connect(databases.source_dsn, autocommit=True) as holder,
        psycopg.connect(databases.source_dsn, autocommit=True) as writer,
    ):
        writer.execute("SET lock_timeout = '300ms'")
        with holder.transaction():
            assert lock_rows(holder, plan, [(2,), (4,), (9,)], 1.0) == 2
            writer.execute("UPDATE public.locked SET v = 1 WHERE id = 3")  # not locked
            with pytest.raises(psycopg.errors.LockNotAvailable):
                writer.execute("UPDATE public.locked SET v = 1 WHERE id = 4")
        writer.execute("UPDATE public.locked SET v = 1 WHERE id = 4")  # released at commit
