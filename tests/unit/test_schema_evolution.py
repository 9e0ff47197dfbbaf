"""Schema evolution decisions (sinks.evolution), type parsing per backend, Debezium defaults in
column metadata, and the live include list of the publication check. Pure code, no database."""

from __future__ import annotations

import math

import pytest

from connectors.source_prep import include_patterns
from pipeline.core.events import Column, Position, TableId
from pipeline.decode.config import DecoderConfig
from pipeline.decode.plans import Placeholders, value_plan
from sinks.base import TargetSchemaError
from sinks.evolution import EvolutionInput, KnownColumn, known_update, plan_changes
from sinks.postgres.types import parse_pg_type, pg_type
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


def test_drop_on_target_option() -> None:
    known = {"note": KnownColumn("note", "text", Position(1, 1))}
    assert plan({"id": "integer", "note": "text"}, [ID], known, drop_on_target=True) == [("note", "dropped")]


def test_dropped_column_back_in_the_events_is_restored() -> None:
    known = {"note": KnownColumn("note", "text", Position(1, 1), dropped=True)}
    assert plan({"id": "integer", "note": "text"}, [ID, col("note", "TEXT")], known) == [("note", "restored")]


def test_primary_key_change_is_refused() -> None:
    with pytest.raises(TargetSchemaError, match=r"primary key of public\.users changed"):
        plan({"id": "integer", "k": "integer"}, [ID, col("k", "INT4")], key_columns=("id", "k"))


def test_known_update() -> None:
    old = KnownColumn("a", "integer", Position(1, 1))
    assert known_update("a", old, "integer", False, Position(9, 9)) is None
    moved = known_update("a", old, "bigint", False, Position(9, 9))
    assert moved == KnownColumn("a", "bigint", Position(9, 9), False)
    dropped = known_update("a", old, None, True, Position(9, 9))
    assert dropped == KnownColumn("a", "integer", Position(1, 1), True)
    back = known_update("a", dropped, "integer", False, Position(10, 10))
    assert back == KnownColumn("a", "integer", Position(1, 1), False)


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
