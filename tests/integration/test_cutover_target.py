"""The cutover part of the ``Target`` seam on every backend: the durable state is saved, replaced
and loaded per pipeline, and sequences are read and set (PostgreSQL ``setval``, MariaDB
``AUTO_INCREMENT``, SQLite ``sqlite_sequence``) so the next generated id passes the value."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy as sa

from pipeline.core.events import TableId
from sinks.base import SequenceSpec, Target, open_cutover
from sinks.postgres.target import PostgresTarget
from sinks.sqlalchemy.ddl import physical
from sinks.sqlalchemy.target import SqlAlchemyTarget

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def target(each_target: Target) -> Target:
    """A Target of each backend (:func:`tests.integration.each_target.each_target`)."""
    return each_target


def test_state_is_saved_replaced_and_loaded_per_pipeline(target: Target) -> None:
    store = open_cutover(target)
    try:
        assert store.load_state("p") is None
        store.save_state("p", "fenced", {"phase": "fenced", "fence": {"saved": [{"role": "app", "value": None}]}})
        store.save_state("q", "idle", {"phase": "idle"})
        store.save_state("p", "aborted", {"phase": "aborted", "reason": "drain: timeout"})
        assert store.load_state("p") == {"phase": "aborted", "reason": "drain: timeout"}
        assert store.load_state("q") == {"phase": "idle"}
    finally:
        store.close()
    again = open_cutover(target)  # a new session (another process) sees it
    try:
        assert again.load_state("p") == {"phase": "aborted", "reason": "drain: timeout"}
    finally:
        again.close()


def _make_serial_table(target: Target, table: TableId) -> Callable[[], int]:
    """Create ``table`` with a generated key the backend's way; returns an insert giving the new id."""
    if isinstance(target, PostgresTarget):
        dsn = target._conninfo
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{table.schema}"')  # type: ignore[arg-type]
            conn.execute(f'CREATE TABLE "{table.schema}"."{table.table}" (id serial PRIMARY KEY, v text)')  # type: ignore[arg-type]

        def insert_pg() -> int:
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    f'INSERT INTO "{table.schema}"."{table.table}" (v) VALUES (\'x\') RETURNING id'
                ).fetchone()  # type: ignore[arg-type]
            assert row is not None
            return int(row[0])

        return insert_pg
    assert isinstance(target, SqlAlchemyTarget)
    schema, name = physical(table, target.dialect)
    options = {"sqlite_autoincrement": True} if target.dialect == "sqlite" else {}
    t = sa.Table(
        name, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=True), sa.Column("v", sa.Text),
        schema=schema, **options,
    )  # fmt: skip
    with target.engine.begin() as conn:
        if schema is not None:
            conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        t.create(conn)

    def insert_sa() -> int:
        with target.engine.begin() as conn:
            return int(conn.execute(sa.insert(t).values(v="x")).inserted_primary_key[0])

    return insert_sa


def test_sequence_is_set_past_the_source_value(target: Target, unique: Callable[[str], str]) -> None:
    control = target._control if isinstance(target, PostgresTarget) else target._control_schema  # type: ignore[attr-defined]
    table = TableId(f"{control}_data" if target.kind != "mysql" else control, "items")
    insert = _make_serial_table(target, table)
    assert insert() == 1
    spec = SequenceSpec(TableId("public", "items_id_seq"), "owned", table, "id")
    store = open_cutover(target)
    try:
        assert store.read_sequence(spec) == 1
        where = store.set_sequence(spec, 1041)
        assert where
        assert store.read_sequence(spec) == 1041
    finally:
        store.close()
    assert insert() == 1042
