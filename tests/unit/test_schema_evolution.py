"""Schema evolution decisions (sinks.evolution), type parsing per backend, Debezium defaults in
column metadata, and the live include list of the publication check. Pure code, no database."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors.source_prep import include_patterns
from pipeline.core.batch import ReducedBatch, TableChanges, Upsert, key_text
from pipeline.core.events import Column, Op, Position, TableId
from pipeline.decode.config import DecoderConfig
from pipeline.decode.plans import Placeholders, value_plan
from sinks.base import TargetSchemaError
from sinks.evolution import EvolutionInput, KnownColumn, known_update, plan_changes
from sinks.postgres.types import parse_pg_type, pg_type
from sinks.sqlalchemy.sink import SqlAlchemySink
from sinks.sqltypes import SqlType, fit

T = TableId("public", "users")


def col(name: str, source: str, length: int | None = None, scale: int | None = None, **kw: object) -> Column:
    params = {"__debezium.source.column.type": source}
    if length is not None:
        params["__debezium.source.column.length"] = str(length)
    if scale is not None:
        params["__debezium.source.column.scale"] = str(scale)
    connect = {"INT4": "int32", "INT8": "int64", "FLOAT4": "float32", "FLOAT8": "float64"}.get(source, "string")
    return Column(name, connect, parameters=params, **kw)  # type: ignore[arg-type]


def plan(
    target: dict[str, str],
    columns: list[Column],
    known: dict[str, KnownColumn] | None = None,
    position: Position | None = None,
    key_columns: tuple[str, ...] = ("id",),
    **kw: object,
) -> list[tuple[str, str]]:
    data = EvolutionInput(
        table=T,
        target_types=target,
        target_keys=("id",),
        columns=columns,
        key_columns=key_columns,
        known=known or {},
        position=position or Position(10, 10),
        type_of=pg_type,
        parse=parse_pg_type,
        source_type_of=pg_type,
        parse_source=parse_pg_type,
        **kw,  # type: ignore[arg-type]
    )
    return [(c.name, c.kind) for c in plan_changes(data)]


ID = col("id", "INT4")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("character varying(50)", SqlType("string", 50)),
        ("varchar(100)", SqlType("string", 100)),
        ("text", SqlType("string", math.inf)),
        ("integer", SqlType("int", 4)),
        ("bigint", SqlType("int", 8)),
        ("numeric(12,2)", SqlType("numeric", 12, 2)),
        ("numeric", SqlType("numeric", math.inf, 0)),
        ("timestamp(3) without time zone", SqlType("timestamp", 3)),
        ("timestamp(3)", SqlType("timestamp", 3)),
        ("timestamp without time zone", SqlType("timestamp", 6)),
        ("timestamptz", SqlType("timestamptz", 6)),
        ("integer[]", SqlType("int", 4, array=True)),
        ("jsonb", SqlType("jsonb")),
    ],
)
def test_parse_pg_type(text: str, expected: SqlType) -> None:
    assert parse_pg_type(text) == expected


@pytest.mark.parametrize(
    ("target", "incoming", "verdict"),
    [
        ("character varying(50)", "varchar(100)", "widen"),
        ("character varying(100)", "varchar(10)", "holds"),
        ("character varying(50)", "text", "widen"),
        ("integer", "bigint", "widen"),
        ("bigint", "integer", "holds"),
        ("real", "double precision", "widen"),
        ("numeric(10,2)", "numeric(12,2)", "widen"),
        ("numeric(10,2)", "numeric(12,4)", "widen"),
        ("numeric(10,2)", "numeric(10,4)", "refuse"),
        ("numeric(10,2)", "numeric", "widen"),
        ("integer", "numeric(12,0)", "widen"),
        ("integer", "numeric(5,0)", "refuse"),
        ("numeric(12,0)", "integer", "holds"),
        ("timestamp(3) without time zone", "timestamp", "widen"),
        ("integer", "text", "refuse"),
        ("timestamp without time zone", "timestamptz", "refuse"),
        ("integer", "integer", "same"),
    ],
)
def test_fit(target: str, incoming: str, verdict: str) -> None:
    assert fit(parse_pg_type(target), parse_pg_type(incoming)) == verdict


def test_widening_is_planned() -> None:
    changes = plan(
        {"id": "integer", "user_name": "character varying(50)", "score": "integer"},
        [ID, col("user_name", "VARCHAR", 100), col("score", "INT8")],
        {"user_name": KnownColumn("user_name", "varchar(50)", Position(1, 1))},
    )
    assert changes == [("user_name", "widened"), ("score", "widened")]


def test_narrowing_at_source_is_refused_even_though_the_target_holds_it() -> None:
    known = {"score": KnownColumn("score", "bigint", Position(5, 5))}
    with pytest.raises(
        TargetSchemaError, match=r"public\.users\.score was narrowed at the source from bigint to integer"
    ):
        plan({"id": "integer", "score": "bigint"}, [ID, col("score", "INT4")], known)


def test_after_the_documented_fix_the_narrowed_type_is_recorded() -> None:
    known = {"score": KnownColumn("score", "bigint", Position(5, 5))}
    assert plan({"id": "integer", "score": "integer"}, [ID, col("score", "INT4")], known) == [("score", "source_type")]


def test_a_target_created_wider_is_not_a_narrowing() -> None:
    # No source type recorded yet (rows of an older version): just record it.
    known = {"note": KnownColumn("note")}
    assert plan({"id": "integer", "note": "text"}, [ID, col("note", "VARCHAR", 20)], known) == []


def test_an_older_schema_event_from_another_partition_is_not_a_narrowing() -> None:
    known = {"user_name": KnownColumn("user_name", "varchar(100)", Position(50, 50))}
    assert (
        plan(
            {"id": "integer", "user_name": "character varying(100)"},
            [ID, col("user_name", "VARCHAR", 50)],
            known,
            position=Position(40, 40),
        )
        == []
    )


def test_incompatible_change_is_refused_with_both_types() -> None:
    with pytest.raises(TargetSchemaError, match=r"users\.score is integer on the target.*sends text"):
        plan({"id": "integer", "score": "integer"}, [ID, col("score", "TEXT")])


def test_dynamic_types_only_record() -> None:
    known = {"score": KnownColumn("score", "bigint", Position(5, 5))}
    assert plan({"id": "INTEGER", "score": "BIGINT"}, [ID, col("score", "INT4")], known, dynamic_types=True) == [
        ("score", "source_type")
    ]


def test_new_column_dropped_column_and_rename_hint() -> None:
    known = {n: KnownColumn(n, "text", Position(1, 1)) for n in ("note", "user_name")}
    changes = plan(
        {"id": "integer", "note": "text", "user_name": "text", "by_hand": "text"},
        [ID, col("remark", "TEXT"), col("status", "TEXT", default="active")],
        known,
        renames={"note": "remark"},
    )
    assert changes == [
        ("remark", "renamed"),
        ("status", "added"),
        ("note", "dropped_at_source"),
        ("user_name", "dropped_at_source"),
    ]


def test_a_column_never_seen_in_the_events_is_not_dropped() -> None:
    known = {"by_hand": KnownColumn("by_hand", None, Position(1, 1))}
    assert plan({"id": "integer", "by_hand": "text"}, [ID], known, drop_on_target=True) == []


def test_drop_on_target_option() -> None:
    known = {"note": KnownColumn("note", "text", Position(1, 1))}
    assert plan({"id": "integer", "note": "text"}, [ID], known, drop_on_target=True) == [("note", "dropped")]


def test_dropped_column_back_in_the_events_is_restored() -> None:
    known = {"note": KnownColumn("note", "text", Position(1, 1), dropped=True)}
    assert plan({"id": "integer", "note": "text"}, [ID, col("note", "TEXT")], known) == [("note", "restored")]


def test_primary_key_change_is_refused() -> None:
    with pytest.raises(TargetSchemaError, match=r"primary key of public\.users changed"):
        plan({"id": "integer", "k": "integer"}, [ID, col("k", "INT4")], key_columns=("id", "k"))


def test_a_truncate_batch_without_key_schema_is_not_a_key_change() -> None:
    assert plan({"id": "integer"}, [ID], key_columns=(), keyless_events=False) == []
    with pytest.raises(TargetSchemaError, match="none: keyless"):
        plan({"id": "integer"}, [ID], key_columns=())


def test_known_update() -> None:
    old = KnownColumn("a", "integer", Position(1, 1))
    assert known_update("a", old, "integer", False, Position(9, 9)) is None
    moved = known_update("a", old, "bigint", False, Position(9, 9))
    assert moved == KnownColumn("a", "bigint", Position(9, 9), False)
    dropped = known_update("a", old, None, True, Position(9, 9))
    assert dropped == KnownColumn("a", "integer", Position(9, 9), True)
    assert known_update("a", dropped, "integer", False, Position(8, 8)) is None  # a pre-drop event
    back = known_update("a", dropped, "integer", False, Position(10, 10))
    assert back == KnownColumn("a", "integer", Position(9, 9), False)
    assert known_update("a", moved, "integer", False, Position(5, 5)) is None  # an older schema moves nothing


def test_default_of_the_field_schema_is_converted() -> None:
    row = {
        "type": "struct",
        "name": "x.Value",
        "optional": True,
        "fields": [
            {"field": "id", "type": "int32", "optional": False},
            {"field": "status", "type": "string", "optional": False, "default": "active"},
            {"field": "n", "type": "int64", "optional": False, "default": 5},
        ],
    }
    schema = {"type": "struct", "fields": [{"field": "op", "type": "string"}, {**row, "field": "after"}]}
    vp = value_plan(schema, DecoderConfig(), Placeholders.of(b"__debezium_unavailable_value"))
    assert vp.columns is not None
    assert [c.default for c in vp.columns] == [None, "active", 5]


def test_include_patterns_follow_debeziums_splitting() -> None:
    patterns = include_patterns(r"(?-i)public\.users,(?-i)public\.a\,b , public\.ord.*")
    matches = [
        any(p.fullmatch(t) for p in patterns) for t in ("public.users", "public.a,b", "PUBLIC.orders", "public.Users")
    ]
    assert matches == [True, True, True, False]


# ----------------------------------------------------------------------------- SQLite sink (a local file)


def _batch(table: TableId, columns: tuple[Column, ...], rows: list[dict[str, object]], lsn: int) -> ReducedBatch:
    changes = TableChanges(table, table, ("id",), columns)
    for i, row in enumerate(rows):
        key = key_text([row["id"]])
        changes.upserts[key] = Upsert(key, {"id": row["id"]}, row, Position(lsn, lsn + i), 0, Op.UPDATE)
    changes.events = len(rows)
    return ReducedBatch({table: changes})


def test_sqlite_sink_adds_with_default_keeps_dropped_and_renames(tmp_path: Path) -> None:
    url = sa.engine.make_url(f"sqlite:///{tmp_path / 't.db'}")
    t = TableId("public", "users")
    sink = SqlAlchemySink(url, renames={"public.users": {"note": "remark"}})
    try:
        v1 = (col("id", "INT4", optional=False), col("name", "VARCHAR", 50), col("note", "TEXT"), col("score", "INT4"))
        first = [{"id": 1, "name": "a", "note": "n1", "score": 1}, {"id": 2, "name": "b", "note": "n2", "score": 2}]
        sink.apply(_batch(t, v1, first, 10), "g", {})
        # status NOT NULL DEFAULT 'active' appears; name dropped; note renamed to remark; id 1 changes.
        v2 = (
            col("id", "INT4", optional=False),
            col("score", "INT4"),
            col("remark", "TEXT"),
            col("status", "TEXT", default="active"),
        )
        sink.apply(_batch(t, v2, [{"id": 1, "score": 1, "remark": "r1", "status": "busy"}], 20), "g", {})
        with sink.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id, name, note, remark, status FROM public__users ORDER BY id").all()
            changes = conn.exec_driver_sql(
                "SELECT column_name, change FROM cdc_control__schema_changes ORDER BY id"
            ).all()
            dropped = conn.exec_driver_sql(
                "SELECT column_name FROM cdc_control__known_columns WHERE dropped_at_source IS NOT NULL ORDER BY 1"
            ).all()
        # id 2 untouched: remark carried over from note, status holds the default; name kept as it was.
        assert [tuple(r) for r in rows] == [(1, "a", "n1", "r1", "busy"), (2, "b", "n2", "n2", "active")]
        assert [tuple(r) for r in changes] == [
            ("remark", "renamed"),
            ("status", "added"),
            ("name", "dropped_at_source"),
            ("note", "dropped_at_source"),
        ]
        assert [r[0] for r in dropped] == ["name", "note"]
        # An int -> bigint change needs no DDL on SQLite: recorded only.
        v3 = (col("id", "INT4", optional=False), col("score", "INT8"), col("remark", "TEXT"), col("status", "TEXT"))
        sink.apply(_batch(t, v3, [{"id": 2, "score": 5_000_000_000, "remark": "r2", "status": "x"}], 30), "g", {})
        with sink.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT score FROM public__users WHERE id = 2").scalar() == 5_000_000_000
            last = conn.exec_driver_sql(
                "SELECT column_name, change, old_type, new_type FROM cdc_control__schema_changes"
                " ORDER BY id DESC LIMIT 1"
            ).one()
        assert tuple(last) == ("score", "source_type", "integer", "bigint")
    finally:
        sink.close()
