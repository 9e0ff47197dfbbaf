"""A runner wired to the in-memory broker, an in-memory sink and DLQ, for tests of its steps.

The sink keeps rows and offsets the way a target does (one atomic apply), and records, at every
commit, whether each stored offset covers only messages that were applied or dead-lettered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from pipeline.core.batch import ReducedBatch
from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Op, Position, Skip, TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.dataplane.consumer import Message
from pipeline.dataplane.dlq import DeadLetter
from pipeline.dataplane.memory import MemoryBroker, MemoryConsumer
from pipeline.dataplane.runner import PipelineRunner
from sinks.base import ApplyResult, BatchRejectedError

TOPIC = "p.public.t"
TP = tuple[str, int]


def value(key: int, v: str = "x", lsn: int = 1) -> bytes:
    """A message the harness decoder turns into an upsert of row ``key``."""
    return orjson.dumps({"k": key, "v": v, "lsn": lsn})


def decode(msg: Message) -> ChangeEvent | Skip:
    """``{"k", "v", "lsn"}`` → an upsert of ``public.t``; ``b"poison"`` → poison; None → tombstone."""
    raw = msg.value()
    topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
    if raw is None:
        return Skip(topic, partition, offset, "tombstone")
    if raw == b"poison":
        raise PoisonMessageError(topic, partition, offset, "not a change event")
    doc = orjson.loads(raw)
    return ChangeEvent(
        topic=topic,
        partition=partition,
        offset=offset,
        table=TableId("public", "t"),
        op=Op.CREATE,
        position=Position(doc["lsn"], doc["lsn"]),
        ts_ms=1_700_000_000_000,
        key={"k": doc["k"]},
        after={"k": doc["k"], "v": doc["v"], "src": f"{topic}:{partition}:{offset}"},
        key_columns=("k",),
    )


@dataclass
class MemorySink:
    """A target in memory: rows and offsets change together in ``apply``.

    ``faults`` maps the n-th apply call (1-based) to the exception it raises instead;
    ``reject`` refuses any batch holding a row whose ``v`` is in it. ``applied`` holds the
    (topic, partition, offset) of every row written (from the row's ``src``: give each message
    its own key, or superseded changes of a key count as unapplied); ``violations`` lists commits
    whose offsets went past a message neither applied nor dead-lettered (``dlq``).
    """

    dlq: MemoryDlq
    faults: dict[int, Exception] = field(default_factory=dict)
    reject: frozenset[str] = frozenset()
    rows: dict[int, str] = field(default_factory=dict)
    offsets: dict[TP, int] = field(default_factory=dict)
    applied: set[tuple[str, int, int]] = field(default_factory=set)
    calls: int = 0
    violations: list[str] = field(default_factory=list)
    broker: MemoryBroker | None = None

    def stored_offsets(self, group: str, partitions: list[TP]) -> dict[TP, int]:
        return {tp: o for tp, o in self.offsets.items() if tp in set(partitions)}

    def group_offsets(self, group: str) -> dict[TP, int]:
        return dict(self.offsets)

    def reset_offsets(self, group: str) -> int:
        n = len(self.offsets)
        self.offsets.clear()
        return n

    def close(self) -> None:
        return None

    def apply(self, batch: ReducedBatch, group: str, offsets: dict[TP, int]) -> ApplyResult:
        self.calls += 1
        fault = self.faults.get(self.calls)
        if fault is not None:
            raise fault
        for changes in batch.tables.values():
            for up in changes.upserts.values():
                if up.row["v"] in self.reject:
                    raise BatchRejectedError(f"row {up.row['k']} refused")
        for changes in batch.tables.values():
            for up in changes.upserts.values():
                self.rows[up.row["k"]] = up.row["v"]
                topic, partition, offset = up.row["src"].rsplit(":", 2)
                self.applied.add((topic, int(partition), int(offset)))
        self.offsets.update(offsets)
        self._check(offsets)
        return ApplyResult(len(batch.tables), 0, 0, time.time())

    def _check(self, offsets: dict[TP, int]) -> None:
        if self.broker is None:
            return
        for (t, p), upto in offsets.items():
            for msg in self.broker.topics[t][p][:upto]:
                coords = (t, p, msg.offset())
                if coords not in self.applied and coords not in self.dlq.coords() and msg.value() is not None:
                    self.violations.append(f"{t}[{p}] stored {upto} past unapplied offset {msg.offset()}")


@dataclass
class MemoryDlq:
    """A DLQ producer in memory; ``faults`` maps the n-th send to the exception it raises."""

    topic: str = "cdc.p.dlq"
    sent: list[DeadLetter] = field(default_factory=list)
    faults: dict[int, Exception] = field(default_factory=dict)
    calls: int = 0

    def send(self, letters: list[DeadLetter]) -> None:
        self.calls += 1
        fault = self.faults.get(self.calls)
        if fault is not None:
            raise fault
        self.sent += letters

    def coords(self) -> set[tuple[str, int, int]]:
        return {(d.topic, d.partition, d.offset) for d in self.sent}


def settings(**retry: float) -> PipelineSettings:
    """Pipeline settings with a fast retry policy (override with ``retry``) and small batches."""
    policy = {"initial_backoff_s": 0.001, "max_backoff_s": 0.005, "max_elapsed_s": 30.0, **retry}
    return PipelineSettings(
        name="p",
        source="s",
        target={"url": "postgresql://u@h/db"},
        retry=policy,
        batch={"max_messages": 50, "max_wait_ms": 5},
        dlq={"max_consecutive": 1000, "max_ratio": 1.0},
    )


@dataclass
class Harness:
    """Broker, consumer, sink, DLQ and the runner over them."""

    broker: MemoryBroker
    consumer: MemoryConsumer
    sink: MemorySink
    dlq: MemoryDlq
    runner: PipelineRunner


def build(
    partitions: int = 2,
    *,
    decode_fn: Callable[[Message], ChangeEvent | Skip] = decode,
    pipeline: PipelineSettings | None = None,
) -> Harness:
    """A fresh harness with topic ``p.public.t`` of ``partitions`` partitions."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, partitions)
    consumer = MemoryConsumer(broker)
    dlq = MemoryDlq()
    sink = MemorySink(dlq=dlq, broker=broker)
    runner = PipelineRunner(
        pipeline or settings(),
        consumer,
        sink,
        dlq,  # type: ignore[arg-type]
        decode_fn,
        lambda e: e,
        ["^p\\..+"],
        "public",
    )
    return Harness(broker, consumer, sink, dlq, runner)


def run_until(h: Harness, done: Callable[[Harness], bool], timeout_s: float = 10.0) -> threading.Thread:
    """Run the runner in a thread until ``done(h)``, then stop it; returns the joined thread.
    An exception of ``run()`` is stored on ``thread.error``."""

    def target() -> None:
        try:
            h.runner.run()
        except BaseException as exc:  # recorded for the test to assert on
            thread.error = exc  # type: ignore[attr-defined]

    thread = threading.Thread(target=target, daemon=True)
    thread.error = None  # type: ignore[attr-defined]
    thread.start()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and thread.is_alive() and not done(h):
        time.sleep(0.005)
    h.runner.request_stop()
    thread.join(timeout_s)
    return thread


def drained(h: Harness) -> bool:
    """True once every partition's stored offset is at its end."""
    return all(
        h.sink.offsets.get((t, p), 0) == len(log) for t, parts in h.broker.topics.items() for p, log in enumerate(parts)
    )
