"""Source catalog columns described like Debezium (pipeline.control.bulkload.catalog): the target
type the PostgreSQL sink derives from them equals the one it derives from a real Debezium 3.6
message of the same table (tests/unit/fixtures/debezium/real_all_types.json, captured with
column.propagate.source.type by tests/integration/test_decode_real_types.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.control.bulkload.catalog import describe_column
from pipeline.decode.plans import _column
from sinks.postgres.types import pg_type

FIXTURE = Path(__file__).parent / "fixtures" / "debezium" / "real_all_types.json"

# column -> (typname, typtype, atttypmod, element typname) as pg_attribute/pg_type give them for
# the DDL of tests/integration/test_decode_real_types.py
CATALOG = {
    "id": ("int4", "b", -1, None),
    "c_smallint": ("int2", "b", -1, None),
    "c_int": ("int4", "b", -1, None),
    "c_bigint": ("int8", "b", -1, None),
    "c_num": ("numeric", "b", ((38 << 16) | 10) + 4, None),
    "c_num_free": ("numeric", "b", -1, None),
    "c_real": ("float4", "b", -1, None),
    "c_double": ("float8", "b", -1, None),
    "c_bool": ("bool", "b", -1, None),
    "c_text": ("text", "b", -1, None),
    "c_varchar": ("varchar", "b", 44, None),
    "c_char": ("bpchar", "b", 9, None),
    "c_bytea": ("bytea", "b", -1, None),
    "c_uuid": ("uuid", "b", -1, None),
    "c_json": ("json", "b", -1, None),
    "c_jsonb": ("jsonb", "b", -1, None),
    "c_date": ("date", "b", -1, None),
    "c_time": ("time", "b", -1, None),
    "c_timetz": ("timetz", "b", -1, None),
    "c_ts": ("timestamp", "b", -1, None),
    "c_tstz": ("timestamptz", "b", -1, None),
    "c_interval": ("interval", "b", -1, None),
    "c_text_arr": ("_text", "b", -1, "text"),
    "c_int_arr": ("_int4", "b", -1, "int4"),
    "c_mood": ("mood", "e", -1, None),
    "c_big": ("text", "b", -1, None),
    "c_other": ("int4", "b", -1, None),
}


def _debezium_columns() -> dict[str, object]:
    doc = json.loads(FIXTURE.read_text(encoding="utf-8"))
    value = json.loads(doc["messages"][0]["value"])
    after = next(f for f in value["schema"]["fields"] if f["field"] == "after")
    return {f["field"]: _column(f, f["field"]) for f in after["fields"]}


DEBEZIUM = _debezium_columns()


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_same_target_type_as_debezium(name: str) -> None:
    typname, typtype, typmod, elem = CATALOG[name]
    ours = describe_column(name, name == "id", typname, typtype, typmod, elem, None)
    theirs = DEBEZIUM[name]
    assert pg_type(ours) == pg_type(theirs)  # type: ignore[arg-type]
    assert ours.source_type == theirs.source_type  # type: ignore[attr-defined]
    assert ours.optional == theirs.optional  # type: ignore[attr-defined]


def test_every_fixture_column_is_covered() -> None:
    assert set(CATALOG) == set(DEBEZIUM)


def test_modifiers() -> None:
    ts3 = describe_column("t", False, "timestamp", "b", 3, None, None)
    assert pg_type(ts3) == "timestamp(3)"
    bit8 = describe_column("b", False, "varbit", "b", 8, None, None)
    assert pg_type(bit8) == "varbit(8)"
    # a domain's name is no built-in type: the sink falls back to the Connect schema (types.py)
    domain = describe_column("d", False, "price", "d", -1, None, "numeric")
    assert domain.source_type == "PRICE"
    assert pg_type(domain) == "numeric"
