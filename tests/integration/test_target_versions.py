"""``target.versions: table`` on every backend (the contract suite runs in both modes too; these
are the cases only this mode has, or that the contract suite does not spell out): the user
tables keep the source's columns, a table pre-created by a migration tool (identity/auto
increment keys, defaults, checks) is written as it is, a truncate keeps the keys written after
it, a keyless insert replayed after its delete stays deleted, verification's guarded delete
compares the positions in ``row_versions``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.core.events import Column, Op, TableId
from sinks.base import ChecksumPlan, CompareColumn, TargetSchemaError, VersionedKey
from tests.integration.targets import KINDS, VERSIONS, Backend, ev, open_backend

pytestmark = pytest.mark.timeout(180)

HISTORY = TableId("public", "history")
HISTORY_COLUMNS = (Column("aid", "int32"), Column("delta", "int32"))
SOURCE = "__debezium.source.column."
PRECREATED_COLUMNS = (  # what Debezium sends for the table (column.propagate.source.type); no `created`
    Column("id", "int32", optional=False, parameters={f"{SOURCE}type": "INT4"}),
    Column("name", "string", parameters={f"{SOURCE}type": "VARCHAR", f"{SOURCE}length": "50"}),
    Column(
        "amount",
        "bytes",
        logical="org.apache.kafka.connect.data.Decimal",
        parameters={"scale": "2", f"{SOURCE}type": "NUMERIC", f"{SOURCE}length": "12", f"{SOURCE}scale": "2"},
    ),
)


@pytest.fixture(params=KINDS)
def table_mode(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Backend]:
    with open_backend(request.param, request, tmp_path, unique, "table") as b:
        yield b


@pytest.fixture(params=[(k, v) for v in VERSIONS for k in KINDS], ids=lambda p: f"{p[0]}-{p[1]}")
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Backend]:
    kind, versions = request.param
    with open_backend(kind, request, tmp_path, unique, versions) as b:
        yield b


def row(key: int, name: str | None, amount: str | None = None) -> dict[str, object]:
    return {"id": key, "name": name, "amount": None if amount is None else Decimal(amount)}


def test_created_tables_hold_the_source_columns_only(table_mode: Backend) -> None:
    target = table_mode.target()
    kw: dict[str, Any] = {"table": HISTORY, "columns": HISTORY_COLUMNS, "key_columns": ()}
    table_mode.apply(
        target, ev(Op.CREATE, (1, 1), 1, row(1, "a")), ev(Op.CREATE, (2, 2), None, {"aid": 1, "delta": 5}, **kw)
    )
    assert table_mode.columns_of() == ["id", "name", "amount"]
    assert table_mode.columns_of(TableId(table_mode.schema, "history")) == ["aid", "delta"]
    assert table_mode.positions([1]) == [(1, 1)]


PRECREATED = {
    "postgresql": [
        "CREATE SCHEMA {schema}",
        "CREATE TABLE {table} (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " name varchar(50) DEFAULT 'unnamed' CHECK (length(name) < 50), amount numeric(12,2),"
        " created timestamptz NOT NULL DEFAULT now(), doubled numeric GENERATED ALWAYS AS (amount * 2) STORED)",
    ],
    "mariadb": [
        "CREATE DATABASE {schema}",
        "CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) DEFAULT 'unnamed',"
        " amount DECIMAL(12,2), created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, CHECK (amount >= 0))",
    ],
    "sqlite": [
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT DEFAULT 'unnamed'"
        " CHECK (length(name) < 50), amount NUMERIC, created TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    ],
}


def _catalog(backend: Backend) -> list[tuple[str, str, str]]:
    schema = None if backend.kind == "sqlite" else backend.schema
    name = f"{backend.schema}__items" if backend.kind == "sqlite" else "items"
    with backend.engine.connect() as conn:
        cols = sa.inspect(conn).get_columns(name, schema=schema)
    return [(str(c["name"]), str(c["type"]), str(c.get("default"))) for c in cols]


def test_a_precreated_table_is_written_as_it_is(table_mode: Backend) -> None:
    """A migration tool's table (identity / auto-increment key, defaults, a CHECK, a column the
    events lack) takes the changes and is never altered; an identity column takes the source's
    values (PostgreSQL: OVERRIDING SYSTEM VALUE)."""
    for statement in PRECREATED[table_mode.kind]:
        table_mode.execute(statement.format(schema=table_mode.schema, table=table_mode.qualified(table_mode.items)))
    before = _catalog(table_mode)
    target = table_mode.target(create_tables=False, add_columns=False)
    cols = PRECREATED_COLUMNS
    table_mode.apply(
        target,
        ev(Op.CREATE, (1, 1), 5, row(5, "five", "1.50"), columns=cols),
        ev(Op.CREATE, (2, 2), 7, row(7, "seven"), columns=cols),
    )
    table_mode.apply(
        target, ev(Op.UPDATE, (3, 3), 5, row(5, "five2", "2.00"), columns=cols), ev(Op.DELETE, (4, 4), 7, columns=cols)
    )
    table_mode.apply(target, ev(Op.UPDATE, (2, 9), 5, row(5, "older"), columns=cols))  # the guard holds
    assert table_mode.rows() == [(5, "five2", Decimal("2.00"))]
    assert _catalog(table_mode) == before
    assert table_mode.rows(cols=("id",)) == [(5,)]
    with table_mode.engine.connect() as conn:  # the column the events lack kept its default
        created = conn.execute(sa.text(f"SELECT created FROM {table_mode.qualified(table_mode.items)}")).scalar()
    assert created is not None


def test_truncate_keeps_keys_written_after_it_and_lets_a_reinsert_apply(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "old")), ev(Op.CREATE, (10, 10), 2, row(2, "after")))
    backend.apply(target, ev(Op.TRUNCATE, (5, 5), None, key_columns=()))
    assert backend.rows() == [(2, "after", None)]
    backend.apply(target, ev(Op.CREATE, (1, 1), 1, row(1, "old")))  # a replay older than the truncate
    assert backend.rows() == [(2, "after", None)]
    backend.apply(target, ev(Op.CREATE, (6, 6), 1, row(1, "reinserted")))
    assert backend.rows() == [(1, "reinserted", None), (2, "after", None)]
    assert backend.positions([1, 2]) == [(6, 6), (10, 10)]


def test_a_replayed_keyless_insert_stays_deleted(backend: Backend) -> None:
    target = backend.target()
    kw: dict[str, Any] = {"table": HISTORY, "columns": HISTORY_COLUMNS, "key_columns": ()}
    insert = ev(Op.CREATE, (10, 10), None, {"aid": 1, "delta": 5}, **kw)
    backend.apply(target, insert)
    backend.apply(target, ev(Op.DELETE, (20, 20), None, None, before={"aid": 1, "delta": 5}, **kw))
    result = backend.apply(target, insert)
    assert backend.rows(TableId(backend.schema, "history"), ("aid", "delta")) == []
    assert (result.upserted, result.stale_rows) == (0, 1)


def test_a_columns_mode_table_is_refused_in_table_mode(backend: Backend) -> None:
    if backend.versions == "table":
        pytest.skip("the columns-mode table is made by a columns-mode target")
    backend.apply(backend.target(), ev(Op.CREATE, (1, 1), 1, row(1, "a")))
    with pytest.raises(TargetSchemaError, match="versions"):
        backend.apply(backend.target(versions="table"), ev(Op.CREATE, (2, 2), 2, row(2, "b")))


def test_guarded_delete_compares_the_row_versions_position(table_mode: Backend) -> None:
    target = table_mode.target()
    table_mode.apply(target, *(ev(Op.CREATE, (i, i), i, row(i, f"n{i}")) for i in (1, 2, 3)))
    table_mode.execute(f"INSERT INTO {table_mode.qualified(table_mode.items)} (id, name) VALUES (4, 'by hand')")
    key = CompareColumn("id", "id", "int4")
    plan = ChecksumPlan(
        TableId("public", "items"), table_mode.items, (key, CompareColumn("name", "name", "text")), (key,)
    )
    verification = target.verification(30)
    try:
        read = sorted(verification.versioned_keys(plan, ((1,), None)), key=lambda r: r.key)
        assert read == [VersionedKey((2,), (2, 2)), VersionedKey((3,), (3, 3)), VersionedKey((4,), (None, None))]
        table_mode.apply(target, ev(Op.UPDATE, (9, 9), 3, row(3, "rewritten")))  # after the read
        assert verification.guarded_delete(plan, read) == 2  # 2 and the hand-made 4; 3 was rewritten
        left = verification.versioned_keys(plan, (None, None))
    finally:
        verification.close()
    assert sorted(r.key for r in left) == [(1,), (3,)]
    assert table_mode.rows() == [(1, "n1", None), (3, "rewritten", None)]


def test_a_replayed_keyless_truncate_keeps_the_rows_inserted_after_it(backend: Backend) -> None:
    """Consuming the topic again re-applies a keyless table's truncate after the inserts that
    followed it were applied: those rows must stay (the truncate's watermark already stands)."""
    target = backend.target()
    kw: dict[str, Any] = {"table": HISTORY, "columns": HISTORY_COLUMNS, "key_columns": ()}
    stream = [
        ev(Op.CREATE, (10, 10), None, {"aid": 1, "delta": 1}, **kw),
        ev(Op.TRUNCATE, (20, 20), None, **kw),
        ev(Op.CREATE, (30, 30), None, {"aid": 4, "delta": 4}, **kw),
        ev(Op.CREATE, (31, 31), None, {"aid": 4, "delta": 4}, **kw),
    ]
    for event in stream:
        backend.apply(target, event)
    history = TableId(backend.schema, "history")
    assert backend.rows(history, ("aid", "delta")) == [(4, 4), (4, 4)]
    for event in stream:  # the replay, one batch per event
        backend.apply(target, event)
    backend.apply(target, *stream)  # and in one batch
    assert backend.rows(history, ("aid", "delta")) == [(4, 4), (4, 4)]
