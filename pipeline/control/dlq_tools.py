"""Reading and replaying a pipeline's dead letters (``cdc-pipeline dlq``).

A dead letter is the original key and value with headers naming the error and the origin
(:mod:`pipeline.dataplane.dlq`). Reading uses a consumer of its own with hand-assigned
partitions from the beginning, a throwaway group id and no commits, so it never disturbs the
workers. Replaying produces the original key and value to the original topic and partition
with a ``cdc.replayed.from`` header; the workers then consume it like any change, so the
version guard still decides (an older change than the stored row is a no-op).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

REPLAYED_FROM = "cdc.replayed.from"
"""Header of a replayed message: the DLQ offset it came from (decimal text)."""
REPLAYED_FROM_PARTITION = "cdc.replayed.from.partition"
"""Header of a replayed message: the DLQ partition it came from."""
REPLAYED_FROM_TOPIC = "cdc.replayed.from.topic"
"""Header of a replayed message: the DLQ topic it came from."""
REASON_WIDTH = 80
"""Characters of the reason shown by ``dlq list``."""


class DlqReadError(Exception):
    """The DLQ topic could not be read (missing topic, Kafka unreachable)."""


class ReplayError(Exception):
    """Some replayed messages were not acknowledged by Kafka, or a dead letter lacks its origin."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One message of a DLQ topic: where it is (``partition``/``offset`` of the DLQ topic), when it
    was dead-lettered (``timestamp_ms``, Kafka message time, epoch ms), its key and value bytes
    and its headers in order (values as bytes)."""

    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as UTF-8 text (undecodable bytes replaced), or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return None if value is None else value.decode("utf-8", errors="replace")
        return None

    def _int_header(self, name: str) -> int | None:
        text = self.header(name)
        return int(text) if text is not None and text.lstrip("-").isdigit() else None

    @property
    def error_class(self) -> str | None:
        """``cdc.error.class``: the error's class name."""
        return self.header("cdc.error.class")

    @property
    def reason(self) -> str | None:
        """``cdc.error.reason``: why the message was dead-lettered."""
        return self.header("cdc.error.reason")

    @property
    def original_topic(self) -> str | None:
        """``cdc.original.topic``."""
        return self.header("cdc.original.topic")

    @property
    def original_partition(self) -> int | None:
        """``cdc.original.partition``."""
        return self._int_header("cdc.original.partition")

    @property
    def original_offset(self) -> int | None:
        """``cdc.original.offset``."""
        return self._int_header("cdc.original.offset")

    def summary(self) -> dict[str, Any]:
        """One ``dlq list`` line as JSON-ready data (reason in full; the table truncates it)."""
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "error_class": self.error_class,
            "reason": self.reason,
            "timestamp": iso_time(self.timestamp_ms),
        }

    def detail(self) -> dict[str, Any]:
        """Everything ``dlq show`` prints: the summary, every header, the key and the value
        (pretty JSON text when it is JSON, else the ``repr`` of the bytes; see :func:`render_bytes`)."""
        return {
            **self.summary(),
            "headers": [[k, None if v is None else v.decode("utf-8", errors="replace")] for k, v in self.headers],
            "key": render_bytes(self.key),
            "value": render_bytes(self.value),
        }


def iso_time(ms: int | None) -> str | None:
    """ISO 8601 UTC text of epoch milliseconds, None for None or a non-positive value."""
    if ms is None or ms <= 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def render_bytes(raw: bytes | None) -> str | None:
    """``raw`` pretty-printed as JSON (indent 2) when it is UTF-8 JSON, else its Python ``repr``
    (so binary such as Avro shows escaped); None for None (a Kafka null)."""
    if raw is None:
        return None
    try:
        return json.dumps(json.loads(raw.decode("utf-8")), indent=2, ensure_ascii=False)
    except (UnicodeDecodeError, ValueError):
        return repr(raw)


# --------------------------------------------------------------------------- reading


def _new_consumer(config: dict[str, Any]) -> Any:
    return Consumer(config)


def reader_config(kafka_config: Mapping[str, str]) -> dict[str, Any]:
    """Consumer settings of a DLQ reader: a throwaway group id, nothing committed or stored."""
    return {
        **kafka_config,
        "group.id": f"cdc-dlq-reader-{uuid.uuid4().hex[:12]}",
        "client.id": "cdc-pipeline-dlq",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }


def _record(msg: Any) -> DeadLetterRecord:
    kind, ts = msg.timestamp()
    headers = tuple((str(k), cast(bytes | None, v)) for k, v in (msg.headers() or []))
    return DeadLetterRecord(msg.partition(), msg.offset(), ts if kind != 0 else None, msg.key(), msg.value(), headers)


def read_dead_letters(
    kafka_config: Mapping[str, str],
    topic: str,
    timeout_s: float = 30.0,
    factory: Callable[[dict[str, Any]], Any] = _new_consumer,
) -> list[DeadLetterRecord]:
    """Every message of ``topic`` up to the high watermarks seen at the start, sorted by
    (partition, offset). Assigns every partition at the beginning (no subscription, no
    commit). Raises DlqReadError when the topic does not exist or the end is not reached
    within ``timeout_s`` seconds."""
    consumer = factory(reader_config(kafka_config))
    try:
        meta = consumer.list_topics(topic, timeout=min(timeout_s, 10.0))
        found = meta.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            reason = found.error if found is not None and found.error is not None else "no such topic"
            raise DlqReadError(f"DLQ topic {topic!r} cannot be read ({reason}): no dead letter was ever produced?")
        ends: dict[int, int] = {}
        for p in sorted(found.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high > low:
                ends[p] = int(high)
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        return sorted(_drain(consumer, ends, topic, timeout_s), key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def _drain(consumer: Any, ends: dict[int, int], topic: str, timeout_s: float) -> list[DeadLetterRecord]:
    """Consume until every partition in ``ends`` reached its end offset."""
    pending = dict(ends)
    out: list[DeadLetterRecord] = []
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise DlqReadError(
                f"DLQ topic {topic!r}: end not reached within {timeout_s:g}s (partitions {sorted(pending)})"
            )
        for msg in consumer.consume(500, 1.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.pop(msg.partition(), None)
                    continue
                raise DlqReadError(f"DLQ topic {topic!r}: {err.str()}")
            p = msg.partition()
            if p in pending and msg.offset() < pending[p]:
                out.append(_record(msg))
            if p in pending and msg.offset() + 1 >= pending[p]:
                pending.pop(p)
    return out


# --------------------------------------------------------------------------- selecting


def filter_letters(
    letters: Iterable[DeadLetterRecord], error_class: str | None = None, since_ms: int | None = None
) -> list[DeadLetterRecord]:
    """Dead letters whose ``cdc.error.class`` equals ``error_class`` (when given) and that were
    dead-lettered at or after ``since_ms`` (epoch ms, when given)."""
    return [
        r
        for r in letters
        if (error_class is None or r.error_class == error_class)
        and (since_ms is None or (r.timestamp_ms is not None and r.timestamp_ms >= since_ms))
    ]


def parse_position(text: str) -> tuple[int | None, int]:
    """A DLQ position from the command line: ``OFFSET`` (any partition) or ``PARTITION:OFFSET``.
    Raises ValueError."""
    part, sep, off = text.strip().partition(":")
    if not sep:
        part, off = "", part
    if not off.isdigit() or (sep and not part.isdigit()):
        raise ValueError(f"{text!r} is not OFFSET or PARTITION:OFFSET (non-negative integers)")
    return (int(part) if sep else None), int(off)


def find_letters(
    letters: Sequence[DeadLetterRecord], positions: Iterable[tuple[int | None, int]]
) -> list[DeadLetterRecord]:
    """The dead letters at ``positions`` (see :func:`parse_position`), in the order given.
    Raises ValueError for a position that matches none, or several (an ``OFFSET`` present in
    more than one DLQ partition: give ``PARTITION:OFFSET``)."""
    out = []
    for part, off in positions:
        hits = [r for r in letters if r.offset == off and (part is None or r.partition == part)]
        where = f"{part}:{off}" if part is not None else str(off)
        if not hits:
            raise ValueError(f"no dead letter at DLQ offset {where}")
        if len(hits) > 1:
            raise ValueError(
                f"DLQ offset {off} exists in partitions {[r.partition for r in hits]}: use PARTITION:OFFSET"
            )
        out.append(hits[0])
    return out


# --------------------------------------------------------------------------- replaying


@dataclass(frozen=True, slots=True)
class Replayed:
    """One replayed dead letter: where it came from in the DLQ and where it went."""

    dlq_partition: int
    dlq_offset: int
    topic: str
    partition: int
    offset: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "dlq_partition": self.dlq_partition,
            "dlq_offset": self.dlq_offset,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }


def producer_config(kafka_config: Mapping[str, str]) -> dict[str, Any]:
    """An idempotent producer acknowledged by all in-sync replicas (like the workers' DLQ producer)."""
    return {**kafka_config, "client.id": "cdc-pipeline-dlq-replay", "enable.idempotence": True, "acks": "all"}


def _new_producer(config: dict[str, Any]) -> Any:
    return Producer(config)


def replay(
    kafka_config: Mapping[str, str],
    dlq_topic: str,
    letters: Sequence[DeadLetterRecord],
    timeout_s: float = 30.0,
    factory: Callable[[dict[str, Any]], Any] = _new_producer,
) -> list[Replayed]:
    """Produce each of ``letters`` to its original topic and partition with its original key
    and value and the headers ``cdc.replayed.from`` (DLQ offset), ``cdc.replayed.from.partition``
    and ``cdc.replayed.from.topic``; wait for every acknowledgement. Returns what was replayed
    with the new offsets. Raises ReplayError when a letter lacks its origin headers (nothing is
    produced then) or some message was not acknowledged within ``timeout_s`` seconds."""
    missing = [r.offset for r in letters if r.original_topic is None or r.original_partition is None]
    if missing:
        raise ReplayError(f"dead letters at DLQ offsets {missing} have no cdc.original.topic/partition headers")
    producer = factory(producer_config(kafka_config))
    done: dict[int, Replayed] = {}
    errors: list[str] = []
    for i, r in enumerate(letters):
        topic, partition = cast(str, r.original_topic), cast(int, r.original_partition)

        def delivered(err: Any, msg: Any, i: int = i, r: DeadLetterRecord = r) -> None:
            if err is not None:
                errors.append(f"DLQ offset {r.offset}: {err}")
            else:
                done[i] = Replayed(r.partition, r.offset, msg.topic(), msg.partition(), msg.offset())

        headers = [
            (REPLAYED_FROM, str(r.offset).encode()),
            (REPLAYED_FROM_PARTITION, str(r.partition).encode()),
            (REPLAYED_FROM_TOPIC, dlq_topic.encode()),
        ]
        producer.produce(topic, value=r.value, key=r.key, partition=partition, headers=headers, on_delivery=delivered)
    remaining = producer.flush(timeout_s)
    if remaining or errors:
        raise ReplayError(f"{remaining} replayed message(s) unacknowledged; errors: {errors[:5]}")
    return [done[i] for i in sorted(done)]
