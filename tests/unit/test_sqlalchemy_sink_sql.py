"""SQL building, type mapping, value adaptation and canonical text of the SQLAlchemy sink (pure)."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from pipeline.core.events import Column, TableId
from sinks.sqlalchemy import canonical, dml
from sinks.sqlalchemy.ddl import physical, target_table
from sinks.sqlalchemy.types import Kind, UnsupportedValueError, adapt, classify, column_type

SRC = "__debezium.source.column.type"
V = ("__cdc_commit_lsn", "__cdc_lsn")


def compiled(t: sa.types.TypeEngine[object], dialect: str) -> str:
    d = sqlite.dialect() if dialect == "sqlite" else mysql.dialect()
    return str(t.compile(dialect=d))


def test_mysql_upsert_guards_every_column_and_assigns_versions_last() -> None:
    t = sa.table("items", *(sa.column(c) for c in ["id", "name", *V]), schema="db")
    text = dml.compile_sql(dml.guarded_upsert("mysql", t, ["id", "name", *V], ["id"], V), "mysql")
    _, updates = text.split("ON DUPLICATE KEY UPDATE", 1)
    assignments = [a.split(" = ", 1)[0].strip() for a in updates.split(" END,")]
    assert assignments == ["name", "__cdc_lsn", "__cdc_commit_lsn"]  # data first, commit LSN last
    guard = "(values(__cdc_commit_lsn), values(__cdc_lsn)) > (db.items.__cdc_commit_lsn, db.items.__cdc_lsn)"
    assert updates.count(guard) == 2  # name and __cdc_lsn read the stored pair
    assert "CASE WHEN (values(__cdc_commit_lsn) > db.items.__cdc_commit_lsn)" in updates
    assert " id = " not in updates  # the key is never assigned


def test_mysql_left_to_right_assignment_equals_if_guard_then_new() -> None:
    """Simulate MariaDB's sequential assignment of the generated SET list on stored/incoming
    versions, including ties on commit LSN, and compare with the intended semantics."""
    cases = [((5, 5), (5, 6)), ((5, 6), (5, 5)), ((5, 9), (6, 1)), ((6, 1), (5, 9)), ((5, 5), (5, 5))]
    for stored, incoming in cases:
        row = {"name": "old", "__cdc_commit_lsn": stored[0], "__cdc_lsn": stored[1]}
        new = {"name": "new", "__cdc_commit_lsn": incoming[0], "__cdc_lsn": incoming[1]}
        for col in ("name", "__cdc_lsn"):  # CASE WHEN (new pair) > (current pair) ...
            newer = (new["__cdc_commit_lsn"], new["__cdc_lsn"]) > (row["__cdc_commit_lsn"], row["__cdc_lsn"])
            row[col] = new[col] if newer else row[col]
        if new["__cdc_commit_lsn"] > row["__cdc_commit_lsn"]:
            row["__cdc_commit_lsn"] = new["__cdc_commit_lsn"]
        expected = new if incoming > stored else {"name": "old", "__cdc_commit_lsn": stored[0], "__cdc_lsn": stored[1]}
        assert row == expected, (stored, incoming)


def test_sqlite_upsert_uses_row_value_guard() -> None:
    t = sa.table("s__items", *(sa.column(c) for c in ["id", "name", *V]))
    text = dml.compile_sql(dml.guarded_upsert("sqlite", t, ["id", "name", *V], ["id"], V), "sqlite")
    assert "ON CONFLICT (id) DO UPDATE SET name = excluded.name" in text
    assert text.endswith(
        "WHERE (excluded.__cdc_commit_lsn, excluded.__cdc_lsn) > (s__items.__cdc_commit_lsn, s__items.__cdc_lsn)"
    )


def test_hostile_identifiers_are_quoted_and_never_parameter_names() -> None:
    cols = ['we"ird`%s', "order", *V]
    t = sa.table('select; DROP TABLE x; --"`', *(sa.column(c) for c in cols), schema="Odd `Schema`")
    my = dml.compile_sql(dml.guarded_upsert("mysql", t, cols, ["order"], V), "mysql")
    assert '`Odd ``Schema```.`select; DROP TABLE x; --"```' in my
    assert 'values(`we"ird``%%s`)' in my  # quoted once, % escaped once for PyMySQL
    assert "%(p0)s" in my or "%s" in my
    lite = dml.compile_sql(dml.guarded_upsert("sqlite", t, cols, ["order"], V), "sqlite")
    assert '"we""ird`%s" = excluded."we""ird`%s"' in lite


def test_keyless_and_offsets_statements() -> None:
    t = sa.table("h", *(sa.column(c) for c in ["a", *V, "__cdc_row_id"]))
    assert "ON CONFLICT (__cdc_row_id) DO NOTHING" in dml.compile_sql(
        dml.insert_ignoring_duplicates("sqlite", t, ["a", *V, "__cdc_row_id"], ["__cdc_row_id"]), "sqlite"
    )
    my = dml.compile_sql(dml.insert_ignoring_duplicates("mysql", t, ["a", "__cdc_row_id"], ["__cdc_row_id"]), "mysql")
    assert my.endswith("ON DUPLICATE KEY UPDATE __cdc_row_id = h.__cdc_row_id")
    assert "IGNORE" not in my
    o = sa.table("offsets", *(sa.column(c) for c in ["g", "t", "p", "n"]))
    assert dml.compile_sql(dml.replacing_upsert("mysql", o, ["g", "t", "p", "n"], ["g", "t", "p"]), "mysql").endswith(
        "ON DUPLICATE KEY UPDATE n = values(n)"
    )
    assert dml.params(["a", 1]) == {"p0": "a", "p1": 1}


@pytest.mark.parametrize(
    ("column", "mysql_type", "sqlite_type"),
    [
        (Column("n", "bytes", logical="org.apache.kafka.connect.data.Decimal",
                parameters={SRC: "NUMERIC", "__debezium.source.column.length": "38",
                            "__debezium.source.column.scale": "10"}), "DECIMAL(38, 10)", "TEXT"),
        (Column("n", "struct", logical="io.debezium.data.VariableScaleDecimal", parameters={SRC: "NUMERIC"}),
         "LONGTEXT", "TEXT"),
        (Column("n", "bytes", logical="org.apache.kafka.connect.data.Decimal",
                parameters={SRC: "NUMERIC", "__debezium.source.column.length": "80",
                            "__debezium.source.column.scale": "2"}), "LONGTEXT", "TEXT"),
        (Column("t", "int64", logical="io.debezium.time.MicroTimestamp", parameters={SRC: "TIMESTAMP"}),
         "DATETIME(6)", "DATETIME"),
        (Column("t", "int64", logical="io.debezium.time.MicroTimestamp",
                parameters={SRC: "TIMESTAMP", "__debezium.source.column.scale": "3"}), "DATETIME(3)", "DATETIME"),
        (Column("t", "string", logical="io.debezium.time.ZonedTimestamp"), "DATETIME(6)", "DATETIME"),
        (Column("t", "string", logical="io.debezium.time.ZonedTime", parameters={SRC: "TIMETZ"}), "TIME(6)", "TIME"),
        (Column("u", "string", logical="io.debezium.data.Uuid"), "CHAR(36)", "TEXT"),
        (Column("j", "string", logical="io.debezium.data.Json", parameters={SRC: "JSONB"}), "JSON", "TEXT"),
        (Column("a", "array", parameters={SRC: "_INT4"}, items=Column("", "int32")), "JSON", "TEXT"),
        (Column("b", "bytes"), "LONGBLOB", "BLOB"),
        (Column("v", "string", parameters={SRC: "VARCHAR", "__debezium.source.column.length": "20"}),
         "VARCHAR(20)", "VARCHAR(20)"),
        (Column("i", "int64", logical="io.debezium.time.MicroDuration"), "BIGINT", "BIGINT"),
        (Column("f", "float64"), "DOUBLE", "DOUBLE"),
        (Column("x", "boolean"), "BOOL", "BOOLEAN"),
        (Column("e", "string", logical="io.debezium.data.Enum"), "LONGTEXT", "TEXT"),
    ],
)  # fmt: skip
def test_type_mapping(column: Column, mysql_type: str, sqlite_type: str) -> None:
    assert compiled(column_type(classify(column), "mysql"), "mysql") == mysql_type
    assert compiled(column_type(classify(column), "sqlite"), "sqlite") == sqlite_type


def test_exact_mysql_compiled_types() -> None:
    assert compiled(column_type(Kind("decimal", precision=38, scale=10), "mysql"), "mysql") == "DECIMAL(38, 10)"
    assert compiled(column_type(Kind("timestamp", scale=6), "mysql"), "mysql") == "DATETIME(6)"
    assert compiled(column_type(Kind("time", scale=6), "mysql"), "mysql") == "TIME(6)"
    assert compiled(column_type(Kind("decimal"), "mysql"), "mysql") == "LONGTEXT"


def test_key_columns_are_indexable_on_mysql() -> None:
    assert compiled(column_type(Kind("text"), "mysql", key=True), "mysql") == "VARCHAR(768)"
    assert compiled(column_type(Kind("bytes"), "mysql", key=True), "mysql") == "VARBINARY(3072)"
    assert compiled(column_type(Kind("decimal"), "mysql", key=True), "mysql") == "VARCHAR(768)"
    assert compiled(column_type(Kind("text", length=2000), "mysql", key=True), "mysql") == "VARCHAR(768)"


def test_new_table_has_versions_and_row_id_when_keyless() -> None:
    t = target_table(TableId("s", "h"), (Column("a", "int32"),), (), sqlite.dialect())
    assert t.name == "s__h" and t.schema is None
    assert [c.name for c in t.primary_key.columns] == ["__cdc_row_id"]
    assert {"__cdc_commit_lsn", "__cdc_lsn"} <= set(t.c.keys())
    with pytest.raises(ValueError, match="key column"):
        target_table(TableId("s", "h"), (Column("a", "int32"),), ("id",), sqlite.dialect())
    assert physical(TableId("db", "t"), "mysql") == ("db", "t")


def test_adapt_values() -> None:
    aware = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert adapt(aware, "mysql") == dt.datetime(2024, 1, 1, 21, 34, 5, 678901)
    assert adapt(aware, "sqlite") == "2024-01-01 21:34:05.678901"
    assert adapt(dt.time(12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "sqlite") == "10:00:00.000000"
    assert adapt(Decimal("1.50"), "mysql") == "1.50"
    assert adapt(uuid.UUID(int=1), "sqlite") == "00000000-0000-0000-0000-000000000001"
    assert adapt(dt.timedelta(days=1, microseconds=2), "mysql") == 86_400_000_002
    assert adapt(["x", None, Decimal("2.5")], "mysql") == '["x",null,"2.5"]'
    assert adapt(True, "sqlite") is True
    assert adapt(math.inf, "sqlite") == math.inf
    for value, dialect in ((math.nan, "sqlite"), (math.nan, "mysql"), (-math.inf, "mysql")):
        with pytest.raises(UnsupportedValueError):
            adapt(value, dialect)


def test_canonical_text_is_the_same_for_source_and_target_forms() -> None:
    pairs = [
        ("numeric", Decimal("1.500"), "1.5"),
        ("numeric", Decimal("100"), "1E+2"),
        ("timestamptz", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("timestamp", dt.datetime(2024, 1, 2, 3, 4, 5, 1), "2024-01-02 03:04:05.000001"),
        ("timetz", dt.time(12, 34, 56, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.timedelta(hours=10, minutes=34, seconds=56, microseconds=123456)),
        ("bool", True, 1),
        ("jsonb", {"b": 1, "a": [1, 2.5]}, '{"a": [1, 2.5], "b": 1}'),
        ("_text", ["x", None], '["x",null]'),
        ("uuid", uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
        ("bytea", b"\x00\xff", b"\x00\xff"),
        ("date", dt.date(2024, 2, 29), "2024-02-29"),
        ("int4", 7, 7),
    ]  # fmt: skip
    for typname, source, target in pairs:
        assert canonical.canonical_value(source, typname) == canonical.canonical_value(target, typname), typname
    assert canonical.row_text([None, ""], ["text", "text"]) == '[null,""]'
    assert canonical.checksum([]) == (0, None)
    assert canonical.checksum(["b", "a"]) == canonical.checksum(["a", "b"])
    assert 0 <= canonical.bucket_of("x", 7) < 7


def test_intervals_compare_in_debezium_microseconds() -> None:
    # Debezium's MicroDuration counts a month as 365.25/12 days; the string mode's ISO-8601
    # text converts to the same number, and so does the source's interval_micros_sql().
    assert canonical.iso_duration_micros("P0Y0M3DT4H5M6.789S") == (3 * 86400 + 4 * 3600 + 5 * 60 + 6) * 10**6 + 789000
    assert canonical.iso_duration_micros("P1Y2M0DT0H0M0S") == int(14 * 30.4375 * 86400) * 10**6
    assert canonical.iso_duration_micros("P0Y0M-1DT0H0M-0.5S") == -86_400_500_000
    assert canonical.canonical_value("P0Y0M1DT0H0M0S", "interval") == canonical.canonical_value(
        86_400_000_000, "interval"
    )
    with pytest.raises(ValueError, match="ISO-8601"):
        canonical.iso_duration_micros("1 day")
    assert "30.4375" in canonical.interval_micros_sql('"iv"')
    assert classify(Column("iv", "string", logical="io.debezium.time.Interval", parameters={SRC: "INTERVAL"})) == Kind(
        "text"
    )
