"""Pure parts of the bulk load's rows path: Debezium's interval text, the reads' reduction and
row ids, the chunk query, and the binary loaders fed with PostgreSQL's binary wire values."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, time
from decimal import Decimal

import psycopg
import pytest

from pipeline.control.bulkload import rowvalues
from pipeline.control.bulkload.model import Chunk, CopyTask, ExportedSnapshot, SourceTable
from pipeline.control.bulkload.rows import chunk_query, direct_batch, reduce_reads, row_events
from pipeline.core.events import Column, TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.decode.converters import converter_for
from pipeline.decode.values import bits_to_text

PIPE = PipelineSettings.model_validate({"name": "p", "source": "s", "target": {"url": "sqlite:///x.db"}})


def _task(keys: tuple[str, ...], end: int | None = 8) -> CopyTask:
    cols = (Column("id", "int32"), Column("v", "string"))
    return CopyTask(
        PIPE, SourceTable(TableId("public", "t"), cols, keys, 10, 16), Chunk(3, 4, end), ExportedSnapshot("sl", 77, "x")
    )


@pytest.mark.parametrize(
    ("months", "days", "micros", "text"),
    [
        (14, 3, 14_706_780_000, "P1Y2M3DT4H5M6.78S"),
        (0, 0, 0, "P0Y0M0DT0H0M0S"),
        (0, -1, -500_000, "P0Y0M-1DT0H0M-0.5S"),
        (-14, 0, -3_723_000_000, "P-1Y-2M0DT-1H-2M-3S"),
        (0, 0, 1, "P0Y0M0DT0H0M0.000001S"),
    ],
)
def test_interval_text_is_debeziums_and_the_decoder_keeps_it(months: int, days: int, micros: int, text: str) -> None:
    got = rowvalues.interval_iso(rowvalues.Interval(months, days, micros))
    assert got == text
    assert converter_for({"type": "string", "name": "io.debezium.time.Interval"})(got) == text


def _load(loader: type[psycopg.adapt.Loader], data: bytes) -> object:
    return loader(0).load(data)


def test_binary_loaders_give_the_decoders_values() -> None:
    pg_epoch = 10_957
    assert _load(rowvalues._DateLoader, struct.pack("!i", 19782 - pg_epoch)) == date(2024, 2, 29)
    assert _load(rowvalues._DateLoader, struct.pack("!i", 2**31 - 1)) == "infinity"
    us = 1709212455123456 - pg_epoch * 86_400_000_000
    assert _load(rowvalues._TimestampLoader, struct.pack("!q", us)) == datetime(2024, 2, 29, 13, 14, 15, 123456)
    zoned = _load(rowvalues._TimestampTzLoader, struct.pack("!q", us))
    assert zoned == converter_for({"type": "string", "name": "io.debezium.time.ZonedTimestamp"})(
        "2024-02-29T13:14:15.123456Z"
    )
    assert _load(rowvalues._TimestampTzLoader, struct.pack("!q", -(2**63))) == "-infinity"
    # 13:14:15.654321+02 -> 11:14:15.654321Z (the offset is sent in seconds west of UTC)
    tz = _load(rowvalues._TimeTzLoader, struct.pack("!qi", (13 * 3600 + 14 * 60 + 15) * 10**6 + 654321, -7200))
    assert tz == time(11, 14, 15, 654321, tzinfo=UTC)
    assert _load(rowvalues._TimeLoader, struct.pack("!q", 86_400_000_000)) == "24:00:00"
    assert _load(rowvalues._Float4Loader, struct.pack("!f", 1.1)) == 1.1
    assert _load(rowvalues._MoneyLoader, struct.pack("!q", 1230)) == Decimal("12.30")
    assert str(_load(rowvalues._MoneyLoader, struct.pack("!q", 1230))) == "12.30"
    point = _load(rowvalues._PointLoader, struct.pack("!dd", 1.5, -2.0))
    wire = {"x": 1.5, "y": -2.0, "wkb": "AQEAAAAAAAAAAAD4PwAAAAAAAADA", "srid": None}
    assert point == converter_for({"type": "struct", "name": "io.debezium.data.geometry.Point"})(wire)


def test_bits_are_little_endian_like_debeziums() -> None:
    assert rowvalues._bits("1000000001") == b"\x01\x02"
    assert bits_to_text(rowvalues._bits("1000000001"), 10) == "1000000001"


def test_reduce_reads_keyed_first_wins_and_keyless_row_ids() -> None:
    keyed = row_events(_task(("id",)), [(1, "a"), (2, "b"), (1, "again")], 0, 5)
    batch = reduce_reads(keyed, "public")
    [changes] = batch.tables.values()
    assert [u.row for u in changes.upserts.values()] == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    assert {(u.position.commit_lsn, u.position.lsn) for u in changes.upserts.values()} == {(0, 77)}
    keyless = reduce_reads(row_events(_task(()), [(1, "a"), (1, "a")], 10, 5), "tgt")
    [(table, changes)] = keyless.tables.items()
    assert table == TableId("tgt", "t") and list(changes.upserts) == [
        "r:bulk:sl:public.t:3:10",
        "r:bulk:sl:public.t:3:11",
    ]


def test_chunk_query_bounds_the_ctid_range() -> None:
    """``v`` has no propagated source type: read as its text (what Debezium sends for a string)."""
    reads = rowvalues.plan_columns(_task(("id",)).source.columns)
    text = chunk_query(_task(("id",)), reads).as_string(None)
    assert (
        text == """SELECT "id", "v"::text FROM ONLY "public"."t" WHERE ctid >= '(4,0)'::tid AND ctid < '(8,0)'::tid"""
    )
    last = chunk_query(_task(("id",), end=None), reads).as_string(None)
    assert last.endswith("WHERE ctid >= '(4,0)'::tid")


@pytest.mark.parametrize("keys", [("id",), ()])
def test_direct_batch_without_rules_equals_the_reduced_events(keys: tuple[str, ...]) -> None:
    rows = [(1, "a"), (2, None), (1, "dup")]
    task = _task(keys)
    assert direct_batch(task, rows, 5, 9) == reduce_reads(row_events(task, rows, 5, 9), "public")
    assert direct_batch(task, [], 0, 9).tables == {}
