"""Source schema evolution on every target backend (issue 19), through ``make_target``: widening
in place, a new column's default on untouched rows, an older-schema event after a change, a
refused narrowing, a dropped column kept or dropped, and what ``schema_changes`` records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.core.events import Column, Op, TableId
from sinks.base import TargetSchemaError
from sinks.sqlalchemy.ddl import physical
from tests.integration.targets import KINDS, Backend, ev, open_backend


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Backend]:
    with open_backend(request.param, request, tmp_path, unique) as b:
        yield b


def src(name: str, source: str, length: int | None = None, connect: str = "string", **kw: object) -> Column:
    params = {"__debezium.source.column.type": source}
    if length is not None:
        params["__debezium.source.column.length"] = str(length)
    return Column(name, connect, parameters=params, **kw)  # type: ignore[arg-type]


ID = src("id", "INT4", connect="int32", optional=False)
V1 = (ID, src("name", "VARCHAR", 5), src("score", "INT4", connect="int32"))
V2 = (ID, src("name", "VARCHAR", 20), src("score", "INT8", connect="int64"), src("status", "TEXT", default="active"))
V3 = (ID, src("score", "INT8", connect="int64"), src("status", "TEXT", default="active"))


def recorded(backend: Backend) -> list[tuple[str, str]]:
    control = backend.settings["control_schema"]
    schema, name = physical(TableId(control, "schema_changes"), backend.dialect)
    t = sa.table(name, sa.column("id"), sa.column("column_name"), sa.column("change"), schema=schema)
    with backend.engine.connect() as conn:
        return [(str(a), str(b)) for a, b in conn.execute(sa.select(t.c.column_name, t.c.change).order_by(t.c.id))]


def test_widen_default_older_schema_and_drop(backend: Backend) -> None:
    target = backend.target()
    table = TableId("public", "items")
    backend.apply(
        target,
        ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "a", "score": 1}, columns=V1),
        ev(Op.CREATE, (10, 11), 2, {"id": 2, "name": "b", "score": 2}, columns=V1),
    )
    wide = {"id": 1, "name": "fifteen-chars!!", "score": 5_000_000_000, "status": "busy"}
    backend.apply(target, ev(Op.UPDATE, (20, 20), 1, wide, columns=V2))
    cols = ("id", "name", "score", "status")
    assert backend.rows(backend.items, cols) == [(1, "fifteen-chars!!", 5_000_000_000, "busy"), (2, "b", 2, "active")]
    # An event of the older schema (another partition, a replay) after the change: applied, no refusal.
    backend.apply(target, ev(Op.CREATE, (15, 15), 3, {"id": 3, "name": "c", "score": 3}, columns=V1))
    assert backend.rows(backend.items, cols)[2] == (3, "c", 3, "active")
    # name dropped at the source: kept on the target, not written any more.
    backend.apply(target, ev(Op.UPDATE, (30, 30), 2, {"id": 2, "score": 7, "status": "x"}, columns=V3))
    assert backend.rows(backend.items, cols)[1] == (2, "b", 7, "x")
    changes = recorded(backend)
    kind = "source_type" if backend.kind == "sqlite" else "widened"  # SQLite: declared types bound nothing
    expected = [("name", kind), ("score", kind), ("status", "added"), ("name", "dropped_at_source")]
    assert changes == expected, changes
    # The drop option drops it on the target instead (a new table, so the change is seen again).
    dropper = backend.target(dropped_columns="drop")
    other = TableId("public", "other")
    backend.apply(dropper, ev(Op.CREATE, (40, 40), 1, {"id": 1, "name": "a", "score": 1}, columns=V1, table=other))
    backend.apply(dropper, ev(Op.UPDATE, (50, 50), 1, {"id": 1, "score": 2, "status": "y"}, columns=V3, table=other))
    schema, name = physical(TableId(backend.schema, "other"), backend.dialect)
    with backend.engine.connect() as conn:
        names = {c["name"] for c in sa.inspect(conn).get_columns(name, schema=schema)}
    assert "name" not in names and {"id", "score", "status"} <= names
    assert table != other


def test_narrowing_is_refused_except_on_sqlite(backend: Backend) -> None:
    target = backend.target()
    backend.apply(target, ev(Op.CREATE, (10, 10), 1, {"id": 1, "name": "a", "score": 1}, columns=V2[:3]))
    narrowed = (ID, src("name", "VARCHAR", 20), src("score", "INT4", connect="int32"))
    event = ev(Op.UPDATE, (20, 20), 1, {"id": 1, "name": "b", "score": 2}, columns=narrowed)
    if backend.kind == "sqlite":
        backend.apply(target, event)
        assert backend.rows(backend.items, ("id", "score")) == [(1, 2)]
        return
    with pytest.raises(TargetSchemaError, match="narrowed at the source from bigint to integer"):
        backend.apply(target, event, offsets={("t", 0): 9})
    assert backend.rows(backend.items, ("id", "name", "score")) == [(1, "a", 1)]
    assert target.group_offsets("cdc.contract") == {}
    fix = (
        "ALTER TABLE {} MODIFY COLUMN score INT NULL"
        if backend.kind == "mariadb"
        else "ALTER TABLE {} ALTER COLUMN score TYPE integer"
    )
    backend.execute(fix.format(backend.qualified(backend.items)))
    fresh = backend.target()
    backend.apply(fresh, event)
    assert backend.rows(backend.items, ("id", "name", "score")) == [(1, "b", 2)]
