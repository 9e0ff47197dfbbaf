"""Fuzzing the decode path (issue 11): random, truncated and mutated Debezium messages never
raise anything but PoisonMessageError, and the runner turns each poison message into exactly
one dead letter with a reason (the worker never crashes on a message)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.batch import ReducedBatch
from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Skip
from pipeline.core.settings.models import PipelineSettings
from pipeline.dataplane.dlq import DeadLetter
from pipeline.dataplane.runner import PipelineRunner
from pipeline.dataplane.steps import Batch
from pipeline.decode.decoder import Decoder
from sinks.base import ApplyResult

FIXTURES = Path(__file__).parent / "fixtures" / "debezium"
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _real_messages() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(FIXTURES.glob("real_*.json")):
        out += json.loads(path.read_text(encoding="utf-8"))["messages"]
    return [m for m in out if m["value"] is not None]


REAL = _real_messages()


def _dumps(doc: Any) -> bytes:
    """JSON text of ``doc``; integers of any size and Infinity are written as Python does."""
    return json.dumps(doc).encode()


HOSTILE = [
    'x"; DROP TABLE t; --',
    "a\x00b",
    "ä\u202e\ufeff",
    "",
    " ",
    "x" * 70_000,
    "../../etc/passwd",
    "$(rm -rf /)",
    "Robert'); DROP TABLE students;--",
]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(HOSTILE),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def decode_ok(decoder: Decoder, value: bytes, key: bytes | None = None, topic: str = "p.public.t") -> None:
    """The contract: an event, a skip, or PoisonMessageError with a reason; nothing else."""
    out: ChangeEvent | Skip | PoisonMessageError
    try:
        out = decoder.decode(topic, 0, 42, key, value)
    except PoisonMessageError as exc:
        out = exc
    if isinstance(out, PoisonMessageError):
        assert out.reason and (out.topic, out.partition, out.offset) == (topic, 0, 42)
        return
    assert isinstance(out, ChangeEvent | Skip)
    if isinstance(out, ChangeEvent):
        assert isinstance(out.table.schema, str) and isinstance(out.table.table, str)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(value: bytes) -> None:
    decode_ok(Decoder(), value)


@FUZZ
@given(json_value)
def test_random_json(doc: Any) -> None:
    decode_ok(Decoder(), _dumps(doc))
    decode_ok(Decoder(), _dumps({"schema": doc, "payload": doc}))
    decode_ok(Decoder(), _dumps({"payload": {"op": "c", "after": doc, "source": doc}}))


@FUZZ
@given(st.sampled_from(REAL), st.floats(min_value=0, max_value=1))
def test_truncated_real_messages(message: dict[str, Any], cut: float) -> None:
    raw = message["value"].encode()
    decode_ok(Decoder(), raw[: int(len(raw) * cut)])


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[head] = _replace(node[head], rest, value)
    return copy


@FUZZ
@given(st.data())
def test_mutated_real_messages(data: st.DataObject) -> None:
    """Any node of a real message (schema or payload: types, fields, source block, LSNs,
    schema/table names) replaced by a random or hostile value; twice on one decoder, so the
    schema-plan cache is exercised too."""
    message = data.draw(st.sampled_from(REAL))
    doc = json.loads(message["value"])
    decoder = Decoder()
    for _ in range(2):
        path = data.draw(st.sampled_from(_paths(doc)))
        mutated = _replace(doc, path, data.draw(json_value))
        decode_ok(decoder, _dumps(mutated), message["key"].encode() if message["key"] else None)


@FUZZ
@given(st.sampled_from(REAL), st.sampled_from(HOSTILE), st.sampled_from(HOSTILE))
def test_hostile_identifiers_are_kept_verbatim(message: dict[str, Any], schema: str, table: str) -> None:
    """Hostile schema/table names decode to the same strings (the sink quotes them), or are poison."""
    doc = json.loads(message["value"])
    if not isinstance(doc.get("payload"), dict) or not isinstance(doc["payload"].get("source"), dict):
        return
    doc["payload"]["source"]["schema"] = schema
    doc["payload"]["source"]["table"] = table
    out: ChangeEvent | Skip | PoisonMessageError
    try:
        out = Decoder().decode("p.x.y", 0, 1, None, _dumps(doc))
    except PoisonMessageError as exc:
        out = exc
    if isinstance(out, PoisonMessageError):
        assert out.reason
        return
    if isinstance(out, ChangeEvent):
        assert (out.table.schema, out.table.table) == (schema, table)


def test_huge_values_are_poison_or_exact() -> None:
    """Integers beyond 64 bits, deep nesting and a 5 MB string."""
    decoder = Decoder()
    for value in (
        b'{"payload": {"op": "c", "source": {"sequence": "[\\"99999999999999999999999999\\", null]"}}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"payload": "' + b"x" * 5_000_000 + b'"}',
        b'{"schema": {"type": "struct", "fields": [' + b'{"type": "int32", "field": "f"},' * 10_000 + b"]}}",
    ):
        decode_ok(decoder, value)


@pytest.mark.parametrize("message", REAL[:20], ids=lambda m: f"{m['topic']}@{m['offset']}")
def test_real_messages_still_decode(message: dict[str, Any]) -> None:
    """The fuzz inputs come from real messages, which themselves decode."""
    out = Decoder().decode(
        message["topic"],
        message["partition"],
        message["offset"],
        message["key"].encode() if message["key"] else None,
        message["value"].encode(),
    )
    assert isinstance(out, ChangeEvent | Skip)


# --------------------------------------------------------------------------- through the runner


class _Msg:
    """The part of a consumed ``confluent_kafka.Message`` the runner reads."""

    def __init__(self, topic: str, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._t, self._o, self._k, self._v = topic, offset, key, value

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class _Dlq:
    topic = "cdc.p.dlq"

    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    def send(self, letters: list[DeadLetter]) -> None:
        self.sent += letters


class _Sink:
    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.events = 0

    def apply(self, batch: ReducedBatch, group: str, offsets: dict[tuple[str, int], int]) -> ApplyResult:
        self.offsets.update(offsets)
        self.events += sum(len(t.upserts) + len(t.deletes) for t in batch.tables.values())
        return ApplyResult(0, 0, 0, 1_700_000_000.0)


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(REAL)), min_size=1, max_size=40))
def test_runner_dead_letters_every_poison_message_with_a_reason(items: list[bytes | dict[str, Any]]) -> None:
    """A batch mixing real messages and garbage: each message the decoder calls poison becomes
    exactly one dead letter (with class and reason); the batch's offsets are still stored."""
    decoder = Decoder()
    msgs = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            msgs.append(_Msg(item["topic"], i, item["key"].encode() if item["key"] else None, item["value"].encode()))
        else:
            msgs.append(_Msg("p.public.t", i, None, item))
    expected_dead = set()
    for m in msgs:
        try:
            Decoder().decode_message(m)
        except PoisonMessageError:
            expected_dead.add((m.topic(), m.offset()))
    sink, dlq = _Sink(), _Dlq()
    runner = PipelineRunner(
        PipelineSettings(name="p", source="s", target={"url": "postgresql://u@h/db"}),
        consumer=None,
        sink=sink,  # type: ignore[arg-type]
        dlq=dlq,  # type: ignore[arg-type]
        decode=decoder.decode_message,
        transform=lambda e: e,
        topics=["^p\\..+"],
        default_schema="public",
    )
    batch = Batch()
    for m in msgs:
        batch.add(m)
    runner._process(batch)
    assert {(d.topic, d.offset) for d in dlq.sent} == expected_dead
    assert len(dlq.sent) == len(expected_dead)
    assert all(d.error_class == "PoisonMessageError" and d.reason for d in dlq.sent)
    assert sink.offsets == batch.next_offsets
