"""``cdc-pipeline dlq``' logic (pipeline/control/dlq_tools.py): headers of a dead letter as the
worker writes them, rendering, filters, positions, reading to the end and replay producing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError

from pipeline.control.dlq_tools import (
    REPLAYED_FROM,
    DeadLetterRecord,
    DlqReadError,
    ReplayError,
    filter_letters,
    find_letters,
    parse_position,
    read_dead_letters,
    render_bytes,
    replay,
)
from pipeline.dataplane.dlq import DeadLetter


def letter(offset: int, error_class: str = "DecodeError", ts: int = 1_000, partition: int = 0) -> DeadLetterRecord:
    """A record carrying the headers the worker's DeadLetterQueue writes."""
    dead = DeadLetter("src.public.t", 2, 100 + offset, b'{"id": 1}', b"\x00\x01", 5, error_class, "bad value")
    headers = tuple((k, v if isinstance(v, bytes) or v is None else v.encode()) for k, v in dead.headers("p"))
    return DeadLetterRecord(partition, offset, ts, dead.key, dead.value, headers)


def test_the_worker_headers_are_read_back() -> None:
    r = letter(3)
    assert (r.error_class, r.reason, r.original_topic, r.original_partition, r.original_offset) == (
        "DecodeError",
        "bad value",
        "src.public.t",
        2,
        103,
    )
    assert r.summary() == {
        "dlq_partition": 0,
        "dlq_offset": 3,
        "original_topic": "src.public.t",
        "original_partition": 2,
        "original_offset": 103,
        "error_class": "DecodeError",
        "reason": "bad value",
        "timestamp": "1970-01-01T00:00:01.000+00:00",
    }
    detail = r.detail()
    assert ["cdc.pipeline", "p"] in detail["headers"]
    assert detail["key"] == '{\n  "id": 1\n}'
    assert detail["value"] == "b'\\x00\\x01'"


def test_render_bytes_pretty_prints_json_and_reprs_the_rest() -> None:
    assert render_bytes(None) is None
    assert json.loads(render_bytes(b'{"a": [1, 2]}') or "") == {"a": [1, 2]}
    assert render_bytes(b'{"a": 1}') == '{\n  "a": 1\n}'
    assert render_bytes(b"not json") == "b'not json'"
    assert render_bytes(b"\xff\xfe") == "b'\\xff\\xfe'"


def test_filters_by_error_class_and_time() -> None:
    letters = [letter(0, "DecodeError", 1_000), letter(1, "RejectedEventError", 2_000), letter(2, "DecodeError", 3_000)]
    assert [r.offset for r in filter_letters(letters, "DecodeError")] == [0, 2]
    assert [r.offset for r in filter_letters(letters, since_ms=2_000)] == [1, 2]
    assert [r.offset for r in filter_letters(letters, "DecodeError", 2_001)] == [2]


def test_positions_are_offset_or_partition_colon_offset() -> None:
    assert parse_position("7") == (None, 7)
    assert parse_position("1:7") == (1, 7)
    for bad in ("x", "-1", "1:", ":3", "a:1"):
        with pytest.raises(ValueError, match="OFFSET or PARTITION:OFFSET"):
            parse_position(bad)
    letters = [letter(0), letter(1), letter(1, partition=1)]
    assert find_letters(letters, [(None, 0)]) == [letters[0]]
    assert find_letters(letters, [(1, 1)]) == [letters[2]]
    with pytest.raises(ValueError, match="use PARTITION:OFFSET"):
        find_letters(letters, [(None, 1)])
    with pytest.raises(ValueError, match="no dead letter at DLQ offset 9"):
        find_letters(letters, [(None, 9)])


@dataclass
class Msg:
    topic_: str
    partition_: int
    offset_: int
    err: Any = None

    def error(self) -> Any:
        return self.err

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def timestamp(self) -> tuple[int, int]:
        return (1, 5_000 + self.offset_)

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v%d" % self.offset_

    def headers(self) -> list[tuple[str, bytes]]:
        return [("cdc.error.class", b"X")]


@dataclass
class FakeReader:
    """A consumer over a topic of two partitions (offsets 2..4 and 0..0) served in one batch each."""

    config: dict[str, Any]
    batches: list[list[Msg]] = field(default_factory=list)
    assigned: list[Any] = field(default_factory=list)
    closed: bool = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        found = SimpleNamespace(error=None, partitions={0: None, 1: None, 2: None})
        return SimpleNamespace(topics={"dlq": found} if topic == "dlq" else {})

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        return {0: (2, 5), 1: (0, 1), 2: (4, 4)}[tp.partition]

    def assign(self, parts: list[Any]) -> None:
        self.assigned = [(p.topic, p.partition) for p in parts]
        self.batches = [[Msg("dlq", 1, 0), Msg("dlq", 0, 2)], [Msg("dlq", 0, 3), Msg("dlq", 0, 4), Msg("dlq", 0, 5)]]

    def consume(self, n: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


def test_read_stops_at_the_high_watermarks_seen_at_the_start_and_never_commits() -> None:
    made: list[FakeReader] = []

    def factory(config: dict[str, Any]) -> FakeReader:
        made.append(FakeReader(config))
        return made[-1]

    letters = read_dead_letters({"bootstrap.servers": "k:9"}, "dlq", 5, factory)
    assert [(r.partition, r.offset, r.value) for r in letters] == [
        (0, 2, b"v2"),
        (0, 3, b"v3"),
        (0, 4, b"v4"),
        (1, 0, b"v0"),
    ]
    reader = made[0]
    assert reader.assigned == [("dlq", 0), ("dlq", 1)]  # the empty partition 2 is not read
    assert reader.config["enable.auto.commit"] is False and reader.config["group.id"].startswith("cdc-dlq-reader-")
    assert reader.closed
    with pytest.raises(DlqReadError, match="no such topic"):
        read_dead_letters({}, "other", 5, factory)


def test_read_gives_up_when_the_end_is_not_reached() -> None:
    def factory(config: dict[str, Any]) -> FakeReader:
        reader = FakeReader(config)
        reader.assign = lambda parts: None  # type: ignore[method-assign]  # nothing ever arrives
        return reader

    with pytest.raises(DlqReadError, match="end not reached"):
        read_dead_letters({}, "dlq", 0.01, factory)


def test_a_partition_eof_ends_that_partition() -> None:
    class EofErr:
        def code(self) -> int:
            return KafkaError._PARTITION_EOF

    def factory(config: dict[str, Any]) -> FakeReader:
        reader = FakeReader(config)

        def assign(parts: list[Any]) -> None:  # offsets 3..4 of partition 0 were compacted away
            reader.batches = [[Msg("dlq", 0, 2), Msg("dlq", 0, 5, EofErr()), Msg("dlq", 1, 0)]]

        reader.assign = assign  # type: ignore[method-assign]
        return reader

    assert [(r.partition, r.offset) for r in read_dead_letters({}, "dlq", 5, factory)] == [(0, 2), (1, 0)]


@dataclass
class FakeProducer:
    config: dict[str, Any]
    produced: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def produce(self, topic: str, **kw: Any) -> None:
        self.produced.append({"topic": topic, **kw})

    def flush(self, timeout: float) -> int:
        for n, p in enumerate(self.produced):
            msg = Msg(p["topic"], p["partition"], 500 + n)
            p["on_delivery"]("broker down" if self.fail else None, msg)
        return 0


def test_replay_produces_the_original_key_value_and_partition_with_the_dlq_offset() -> None:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config))
        return made[-1]

    done = replay({"bootstrap.servers": "k:9"}, "cdc.p.dlq", [letter(3), letter(8)], 5, factory)
    assert [d.to_dict() for d in done] == [
        {"dlq_partition": 0, "dlq_offset": 3, "topic": "src.public.t", "partition": 2, "offset": 500},
        {"dlq_partition": 0, "dlq_offset": 8, "topic": "src.public.t", "partition": 2, "offset": 501},
    ]
    first = made[0].produced[0]
    assert (first["topic"], first["partition"], first["key"], first["value"]) == (
        "src.public.t",
        2,
        b'{"id": 1}',
        b"\x00\x01",
    )
    assert (REPLAYED_FROM, b"3") in first["headers"]
    assert ("cdc.replayed.from.topic", b"cdc.p.dlq") in first["headers"]
    assert made[0].config["acks"] == "all" and made[0].config["enable.idempotence"] is True


def test_replay_refuses_letters_without_origin_and_reports_failed_deliveries() -> None:
    orphan = DeadLetterRecord(0, 4, None, None, b"x", (("cdc.error.class", b"X"),))
    with pytest.raises(ReplayError, match=r"DLQ offsets \[4\] have no cdc.original"):
        replay({}, "d", [letter(1), orphan], 5, lambda c: pytest.fail("nothing must be produced"))
    with pytest.raises(ReplayError, match="broker down"):
        replay({}, "d", [letter(1)], 5, lambda c: FakeProducer(c, fail=True))
