"""What the worker has applied, per partition, and the gauges derived from it: consumer lag in
messages and seconds, and the per-batch counters. Hot-loop figures are recorded once per batch.

Events are counted as *applied* or *stale* from the sink's answer (:class:`sinks.base.ApplyResult`
``stale``): an event whose row the target already held at the same or a newer position (a replay
after a Connect restart, a duplicate) changed nothing and is counted stale, not applied."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaException, TopicPartition

from pipeline.core import metrics
from pipeline.core.batch import ReducedBatch, key_text, read_row_id, row_id
from pipeline.core.events import ChangeEvent, Op, Position, TableId
from pipeline.core.offsets import partition_lag
from pipeline.dataplane.consumer import Consumer, Message
from pipeline.dataplane.steps import TP, commit_times
from sinks.base import ApplyResult


@dataclass
class RunnerStats:
    """Totals since start: messages consumed, events applied, events stale (already applied:
    replays, duplicates), dead letters, batches."""

    messages: int = 0
    events: int = 0
    stale: int = 0
    dead_letters: int = 0
    batches: int = 0


Outcome = tuple[str, str]
"""``(target table, op)``: the labels of the event counters."""


@dataclass
class Applied:
    """Events of one batch by outcome, counted per ``(target table, op)`` after each committed apply."""

    applied: dict[Outcome, int] = field(default_factory=dict)
    stale: dict[Outcome, int] = field(default_factory=dict)

    def add(self, events: list[ChangeEvent], default_schema: str, result: ApplyResult) -> None:
        """Count ``events`` (one committed apply, in consumption order) as applied or stale.

        Stale: the event's row key is in ``result.stale`` (the target held it at the same or a
        newer position), or an earlier event of the same key in ``events`` was at least as new
        (a duplicate inside the batch, which the reduction dropped). An event superseded by a
        *later* newer change of its key counts applied with it (its effect is contained in it).
        Truncates count as applied.
        """
        newest: dict[tuple[TableId, str], Position] = {}
        for event in events:
            target = event.target or TableId(default_schema, event.table.table)
            label = (str(target), event.op.value)
            key = row_key(event)
            duplicate = False
            if key is not None:
                before = newest.get((target, key))
                duplicate = before is not None and event.position <= before
                if not duplicate:
                    newest[(target, key)] = event.position
            keys = result.stale.get(target)
            into = self.stale if duplicate or (keys and key in keys) else self.applied
            into[label] = into.get(label, 0) + 1


def row_key(event: ChangeEvent) -> str | None:
    """The key of ``event``'s row in a :class:`~pipeline.core.batch.ReducedBatch`, as
    :func:`pipeline.core.reduce.reduce_events` derives it: the key text for keyed tables;
    for keyless ones the row id of an insert/update/read or the delete marker of a delete.
    None for a truncate (or a keyed event without its key, which reduce rejects)."""
    if event.op is Op.TRUNCATE:
        return None
    if event.key_columns:
        if event.key is None:
            return None
        return key_text(event.key[c] for c in event.key_columns)
    if event.op is Op.DELETE:
        return f"d:{row_id(event.position)}"
    return read_row_id(event) if event.op is Op.READ else row_id(event.position)


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
    pipeline: str, stats: RunnerStats, messages: int, events: Applied, skipped: dict[str, int], seconds: float
) -> None:
    """Count one committed batch in ``stats`` and the batch metrics: ``cdc_events_applied_total``
    for the applied events, ``cdc_events_stale_total`` for the stale ones."""
    stats.messages += messages
    stats.events += sum(events.applied.values())
    stats.stale += sum(events.stale.values())
    stats.batches += 1
    metrics.MESSAGES_CONSUMED.labels(pipeline).inc(messages)
    metrics.BATCHES.labels(pipeline).inc()
    metrics.BATCH_SIZE.labels(pipeline).observe(messages)
    metrics.BATCH_DURATION.labels(pipeline).observe(seconds)
    for reason, count in skipped.items():
        metrics.MESSAGES_SKIPPED.labels(pipeline, reason).inc(count)
    for (table, op), count in events.applied.items():
        metrics.EVENTS_APPLIED.labels(pipeline, table, op).inc(count)
    for (table, op), count in events.stale.items():
        metrics.EVENTS_STALE.labels(pipeline, table, op).inc(count)


def observe_latency(pipeline: str, reduced: ReducedBatch, committed_at: float) -> None:
    """Observe commit-to-apply latency once per source transaction (distinct commit timestamp)
    written by this batch, and the last applied source time per table."""
    hist = metrics.COMMIT_TO_APPLY.labels(pipeline)
    for changes in reduced.tables.values():
        if changes.max_ts_ms:
            metrics.LAST_APPLIED_SOURCE_TS.labels(pipeline, str(changes.table)).set(changes.max_ts_ms / 1000)
    for ts_ms in commit_times(reduced):
        hist.observe(max(0.0, committed_at - ts_ms / 1000))
