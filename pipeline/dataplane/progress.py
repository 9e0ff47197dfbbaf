"""What the worker has applied, per partition, and the gauges derived from it: consumer lag in
messages and seconds, and the per-batch counters. Hot-loop figures are recorded once per batch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicPartition

from pipeline.core import metrics
from pipeline.core.batch import ReducedBatch
from pipeline.core.events import ChangeEvent
from pipeline.core.offsets import partition_lag
from pipeline.dataplane.consumer import Consumer, Message
from pipeline.dataplane.steps import TP, commit_times


@dataclass
class RunnerStats:
    """Totals since start: messages consumed, events applied, dead letters, batches."""

    messages: int = 0
    events: int = 0
    dead_letters: int = 0
    batches: int = 0


class Progress:
    """Next offset applied to the target and the Kafka timestamp (s) of the last applied message,
    per assigned partition; exports ``cdc_consumer_lag_messages`` / ``_seconds``."""

    def __init__(self, pipeline: str) -> None:
        self._name = pipeline
        self.applied: dict[TP, int] = {}
        self._applied_ts: dict[TP, float] = {}
        self._lag_checked = 0.0

    def assigned(self, stored: dict[TP, int]) -> None:
        """Partitions assigned at the target's stored next offsets."""
        self.applied.update(stored)

    def forget(self, gone: Iterable[TP]) -> None:
        """Partitions revoked or lost: drop their state and gauges."""
        for t, p in gone:
            self.applied.pop((t, p), None)
            self._applied_ts.pop((t, p), None)
            for gauge in (metrics.CONSUMER_LAG_MESSAGES, metrics.CONSUMER_LAG_SECONDS):
                with contextlib.suppress(KeyError):
                    gauge.remove(self._name, t, str(p))

    def committed(self, offsets: dict[TP, int], messages: list[Message]) -> None:
        """A batch covering ``offsets`` was committed to the target."""
        self.applied.update(offsets)
        for msg in messages:
            ts_type, ts_ms = msg.timestamp()
            if ts_type:
                self._applied_ts[(msg.topic() or "", msg.partition() or 0)] = ts_ms / 1000

    def update_lag(self, consumer: Consumer, assignment: set[TP], *, force: bool = False, every_s: float = 5.0) -> None:
        """Set consumer lag per assigned partition: messages (high watermark from the consumer's
        cached fetch state minus the next offset applied to the target) and seconds (since the
        last applied message's Kafka timestamp, 0 when caught up). At most every ``every_s``."""
        now = time.monotonic()
        if not force and now - self._lag_checked < every_s:
            return
        self._lag_checked = now
        wall = time.time()
        for t, p in sorted(assignment):
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            lag = partition_lag(low, high, self.applied.get((t, p)))
            metrics.CONSUMER_LAG_MESSAGES.labels(self._name, t, str(p)).set(lag)
            last = self._applied_ts.get((t, p))
            seconds = 0.0 if lag == 0 else max(0.0, wall - last) if last is not None else 0.0
            metrics.CONSUMER_LAG_SECONDS.labels(self._name, t, str(p)).set(seconds)


def record_batch(
    pipeline: str, stats: RunnerStats, messages: int, events: list[ChangeEvent], skipped: dict[str, int], seconds: float
) -> None:
    """Count one committed batch in ``stats`` and the batch metrics."""
    stats.messages += messages
    stats.events += len(events)
    stats.batches += 1
    metrics.MESSAGES_CONSUMED.labels(pipeline).inc(messages)
    metrics.BATCHES.labels(pipeline).inc()
    metrics.BATCH_SIZE.labels(pipeline).observe(messages)
    metrics.BATCH_DURATION.labels(pipeline).observe(seconds)
    for reason, count in skipped.items():
        metrics.MESSAGES_SKIPPED.labels(pipeline, reason).inc(count)
    by_table: dict[tuple[str, str], int] = {}
    for e in events:
        k = (str(e.target or e.table), e.op.value)
        by_table[k] = by_table.get(k, 0) + 1
    for (table, op), count in by_table.items():
        metrics.EVENTS_APPLIED.labels(pipeline, table, op).inc(count)


def observe_latency(pipeline: str, reduced: ReducedBatch, committed_at: float) -> None:
    """Observe commit-to-apply latency once per source transaction (distinct commit timestamp)
    written by this batch, and the last applied source time per table."""
    hist = metrics.COMMIT_TO_APPLY.labels(pipeline)
    for changes in reduced.tables.values():
        if changes.max_ts_ms:
            metrics.LAST_APPLIED_SOURCE_TS.labels(pipeline, str(changes.table)).set(changes.max_ts_ms / 1000)
    for ts_ms in commit_times(reduced):
        hist.observe(max(0.0, committed_at - ts_ms / 1000))
