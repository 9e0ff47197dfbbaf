"""An in-memory broker and consumer with the runner's consumer API, for tests of the runner's steps
without Kafka: rebalances (assign, revoke, lost) are injected at chosen consume/poll calls, the way
arroyo's ``LocalBroker`` drives its ``StreamProcessor``. Single consumer, single thread."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from pipeline.dataplane.consumer import RebalanceCallback

TP = tuple[str, int]


@dataclass(frozen=True, slots=True)
class MemoryMessage:
    """One stored record; mirrors ``confluent_kafka.Message``'s accessors."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _timestamp_ms: int

    def topic(self) -> str:
        """Topic name."""
        return self._topic

    def partition(self) -> int:
        """Partition number."""
        return self._partition

    def offset(self) -> int:
        """Offset in the partition."""
        return self._offset

    def key(self) -> bytes | None:
        """Key bytes."""
        return self._key

    def value(self) -> bytes | None:
        """Value bytes (None for a tombstone)."""
        return self._value

    def error(self) -> None:
        """Never an error."""
        return None

    def timestamp(self) -> tuple[int, int]:
        """``(TIMESTAMP_CREATE_TIME, ms)``."""
        return (1, self._timestamp_ms)


@dataclass
class MemoryBroker:
    """Topics of partitions of records, in memory."""

    topics: dict[str, list[list[MemoryMessage]]] = field(default_factory=dict)

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` empty partitions (no-op if it exists)."""
        self.topics.setdefault(topic, [[] for _ in range(partitions)])

    def produce(self, topic: str, partition: int, value: bytes | None, key: bytes | None = None) -> MemoryMessage:
        """Append a record; returns it (with its offset)."""
        log = self.topics[topic][partition]
        msg = MemoryMessage(topic, partition, len(log), key, value, int(time.time() * 1000))
        log.append(msg)
        return msg

    def partitions(self, pattern: str) -> list[TP]:
        """Every ``(topic, partition)`` whose topic matches ``pattern`` (a name, or ``^regex``)."""
        out: list[TP] = []
        for topic, parts in sorted(self.topics.items()):
            matches = re.match(pattern, topic) is not None if pattern.startswith("^") else topic == pattern
            if matches:
                out.extend((topic, p) for p in range(len(parts)))
        return out


Action = Callable[["MemoryConsumer"], None]


class MemoryConsumer:
    """A consumer of a :class:`MemoryBroker` with the API of :class:`pipeline.dataplane.consumer.Consumer`.

    On the first ``consume``/``poll`` after ``subscribe`` every matching partition is assigned
    (``on_assign``). ``at(n, action)`` runs ``action(self)`` at the start of the ``n``-th
    ``consume``/``poll`` call (1-based), e.g. ``lambda c: c.rebalance(revoke=[("t", 0)])``.
    ``commits`` records every commit; ``calls`` counts consume/poll calls.
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.positions: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.commits: list[dict[TP, int]] = []
        self.calls = 0
        self.closed = False
        self._actions: dict[int, list[Action]] = {}
        self._conditional: list[tuple[Callable[[], bool], Action]] = []
        self._subscribed: list[str] = []
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._on_lost: RebalanceCallback | None = None
        self._initial_assign_done = False

    # ------------------------------------------------------------------ test controls

    def at(self, call: int, action: Action) -> None:
        """Run ``action(self)`` at the start of consume/poll call number ``call``."""
        self._actions.setdefault(call, []).append(action)

    def when(self, condition: Callable[[], bool], action: Action) -> None:
        """Run ``action(self)`` once, at the start of the first consume/poll call where ``condition()``."""
        self._conditional.append((condition, action))

    def rebalance(self, *, assign: Sequence[TP] = (), revoke: Sequence[TP] = (), lost: bool = False) -> None:
        """Revoke (or lose) then assign partitions through the rebalance callbacks, as librdkafka does."""
        if revoke:
            gone = [TopicPartition(t, p) for t, p in revoke if (t, p) in self.positions]
            callback = self._on_lost if lost else self._on_revoke
            if callback is not None and gone:
                callback(self, gone)
            for t, p in revoke:
                self.positions.pop((t, p), None)
                self.paused.discard((t, p))
        if assign and self._on_assign is not None:
            self._on_assign(self, [TopicPartition(t, p) for t, p in assign])

    @property
    def assignment(self) -> set[TP]:
        """Partitions currently assigned."""
        return set(self.positions)

    # ------------------------------------------------------------------ consumer API

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        """Remember the subscription and the callbacks."""
        self._subscribed = list(topics)
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost

    def _tick(self) -> None:
        self.calls += 1
        if not self._initial_assign_done and self._subscribed:
            self._initial_assign_done = True
            wanted = [tp for pattern in self._subscribed for tp in self.broker.partitions(pattern)]
            self.rebalance(assign=wanted)
        for action in self._actions.pop(self.calls, []):
            action(self)
        for entry in list(self._conditional):
            if entry[0]():
                self._conditional.remove(entry)
                entry[1](self)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        """Add partitions at their given offsets (``OFFSET_BEGINNING`` or an offset)."""
        for tp in partitions:
            start = 0 if tp.offset in (OFFSET_BEGINNING, -1001) or tp.offset < 0 else tp.offset
            self.positions[(tp.topic, tp.partition)] = start

    def _take(self, limit: int) -> list[MemoryMessage]:
        out: list[MemoryMessage] = []
        for tp in sorted(self.positions):
            if tp in self.paused:
                continue
            log = self.broker.topics[tp[0]][tp[1]]
            while self.positions[tp] < len(log) and len(out) < limit:
                out.append(log[self.positions[tp]])
                self.positions[tp] += 1
        return out

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[MemoryMessage]:
        """Up to ``num_messages`` records of unpaused assigned partitions; sleeps a little when empty."""
        self._tick()
        out = self._take(num_messages)
        if not out and timeout:
            time.sleep(min(max(timeout, 0.0), 0.002))
        return out

    def poll(self, timeout: float = -1) -> MemoryMessage | None:
        """One record of an unpaused assigned partition, or None."""
        self._tick()
        got = self._take(1)
        if not got and timeout:
            time.sleep(min(max(timeout, 0.0), 0.002))
        return got[0] if got else None

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop returning records of ``partitions``."""
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        """Return records of ``partitions`` again."""
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        """Move an assigned partition's position (``OFFSET_BEGINNING`` = 0)."""
        key = (partition.topic, partition.partition)
        if key in self.positions:
            self.positions[key] = 0 if partition.offset < 0 else partition.offset

    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[True] = True) -> None:
        """Record the committed offsets."""
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        """``(0, length)`` of the partition."""
        return 0, len(self.broker.topics[partition.topic][partition.partition])

    def close(self) -> None:
        """Mark closed."""
        self.closed = True
