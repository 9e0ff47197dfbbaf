"""The pipeline runner: the ONLY code that touches the Kafka consumer (design invariant 6).

One runner is one worker of a pipeline's consumer group. Its loop:

1. consume a batch bounded by ``batch.max_messages``, ``batch.max_bytes`` and
   ``batch.max_wait_ms`` (measured from the first message);
2. decode and transform each message (plain functions); poison messages become dead letters;
3. commit protocol, in this order:
   a. dead letters are produced to the DLQ and acknowledged;
   b. the reduced batch and the next offsets are applied in ONE target transaction; a batch
      the target rejects is bisected until the event at fault is found and dead-lettered;
   c. the same offsets are committed to Kafka asynchronously (for lag tools only);
4. transient failures (target down, deadlock, DLQ unreachable) back off with jitter while the
   consumer is paused and kept alive; past ``retry.max_elapsed_s`` the worker stops without
   committing.

On partition assignment the consumer seeks to the offsets stored in the target (the source
of truth); partitions the target has never seen start from the beginning. On revocation the
in-flight messages of those partitions are dropped (their new owner re-reads them from the
target's offsets). SIGTERM/SIGINT set a flag: the batch in flight is finished and
committed, and the consumer is closed.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from pipeline.core import metrics
from pipeline.core.batch import ReducedBatch
from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Op, Skip
from pipeline.core.logs import get_logger
from pipeline.core.offsets import partition_lag
from pipeline.core.retry import Backoff
from pipeline.core.settings.models import PipelineSettings
from pipeline.dataplane.dlq import DeadLetter, DeadLetterQueue, DlqDeliveryError, DlqLimiter
from pipeline.dataplane.reduce import reduce_events
from pipeline.transform.rule import TransformConfigError
from sinks.base import BatchRejectedError, Sink, TransientSinkError
from sinks.base import TopicPartition as TP  # noqa: N817 - (topic, partition) tuple

log = get_logger(__name__)

_TRANSIENT: tuple[type[Exception], ...] = (TransientSinkError, DlqDeliveryError)
"""Errors :meth:`PipelineRunner._retry` backs off on (consumer paused), never dead-letters."""


class Message(Protocol):
    """The part of ``confluent_kafka.Message`` the runner reads."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def error(self) -> KafkaError | None: ...
    def timestamp(self) -> tuple[int, int]: ...


Decode = Callable[[Message], ChangeEvent | Skip]
"""Decoder: raises PoisonMessageError for a message that can never be decoded."""

Transform = Callable[[ChangeEvent], ChangeEvent | Skip]
"""Transformer: raises PoisonMessageError (or any exception) for an event it cannot handle."""


class _BatchAbandonedError(Exception):
    """Partitions of the in-flight batch were revoked; its messages are re-read elsewhere."""


@dataclass
class Batch:
    """Messages of one batch and the next offset per partition they cover."""

    messages: list[Message] = field(default_factory=list)
    next_offsets: dict[TP, int] = field(default_factory=dict)
    bytes: int = 0
    started: float = 0.0

    def add(self, msg: Message) -> None:
        """Append ``msg`` and advance its partition's next offset."""
        if not self.messages:
            self.started = time.monotonic()
        self.messages.append(msg)
        tp = (msg.topic() or "", msg.partition() or 0)
        self.next_offsets[tp] = max(self.next_offsets.get(tp, 0), (msg.offset() or 0) + 1)
        self.bytes += len(msg.value() or b"") + len(msg.key() or b"")

    def drop_partitions(self, revoked: set[TP]) -> int:
        """Remove messages of ``revoked`` partitions; returns how many were dropped."""
        keep = [m for m in self.messages if (m.topic(), m.partition()) not in revoked]
        dropped = len(self.messages) - len(keep)
        self.messages = keep
        for tp in revoked:
            self.next_offsets.pop(tp, None)
        return dropped


@dataclass
class RunnerStats:
    """Totals since start: messages consumed, events applied, dead letters, batches."""

    messages: int = 0
    events: int = 0
    dead_letters: int = 0
    batches: int = 0


class PipelineRunner:
    """One worker of a pipeline; see the module docstring for the loop and commit protocol.

    ``consumer`` is a ``confluent_kafka.Consumer`` created with ``enable.auto.commit=false``
    and ``enable.auto.offset.store=false``; the runner subscribes it to ``topics`` (names or
    ``^regex``). ``run()`` returns 0 after a requested stop and raises on a fatal error
    (DLQ limit, retry budget exceeded, Kafka fatal error) after closing the consumer.
    """

    def __init__(
        self,
        settings: PipelineSettings,
        consumer: Any,
        sink: Sink,
        dlq: DeadLetterQueue,
        decode: Decode,
        transform: Transform,
        topics: list[str],
        default_schema: str,
    ) -> None:
        self._settings = settings
        self._consumer = consumer
        self._sink = sink
        self._dlq = dlq
        self._decode = decode
        self._transform = transform
        self._topics = topics
        self._default_schema = default_schema
        self._group = settings.resolved_consumer_group
        self._name = settings.name
        self._limiter = DlqLimiter(settings.dlq.max_consecutive, settings.dlq.max_ratio, settings.dlq.ratio_window)
        self._assignment: set[TP] = set()
        self._revoked: set[TP] = set()
        self._stop = False
        self._inflight: dict[tuple[str | None, int | None, int | None], Message] = {}
        self._applied: dict[TP, int] = {}  # next offset applied to the target, per partition
        self._applied_ts: dict[TP, float] = {}  # Kafka timestamp (s) of the last applied message
        self._lag_checked = 0.0
        self.stats = RunnerStats()
        self.on_batch: Callable[[RunnerStats], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and close (signal-safe)."""
        self._stop = True

    @property
    def assignment(self) -> set[TP]:
        """Partitions currently assigned to this worker."""
        return set(self._assignment)

    def run(self) -> int:
        """Consume until ``request_stop()``; returns 0. Raises on fatal errors (see class doc)."""
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info("pipeline started", pipeline=self._name, group=self._group, topics=self._topics)
        try:
            while not self._stop:
                batch = self._collect()
                if batch.messages:
                    self._process(batch)
        finally:
            self._close()
        log.info("pipeline stopped", pipeline=self._name, **self.stats.__dict__)
        return 0

    def _close(self) -> None:
        metrics.READY.labels(self._name).set(0)
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", error=str(exc))

    # ------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        wanted = [(p.topic, p.partition) for p in partitions]
        stored = self._retry("assign", lambda: self._sink.stored_offsets(self._group, wanted))
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), OFFSET_BEGINNING)
            if (p.topic, p.partition) in stored:
                self._applied[(p.topic, p.partition)] = stored[(p.topic, p.partition)]
        consumer.incremental_assign(partitions)
        self._assignment |= set(wanted)
        self._revoked -= set(wanted)
        metrics.ASSIGNED_PARTITIONS.labels(self._name).set(len(self._assignment))
        metrics.READY.labels(self._name).set(1)
        log.info(
            "partitions assigned",
            pipeline=self._name,
            partitions=[
                f"{p.topic}[{p.partition}]@{stored.get((p.topic, p.partition), 'beginning')}" for p in partitions
            ],
        )

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._assignment -= gone
        self._revoked |= gone
        for t, p in gone:
            self._applied.pop((t, p), None)
            self._applied_ts.pop((t, p), None)
            for gauge in (metrics.CONSUMER_LAG_MESSAGES, metrics.CONSUMER_LAG_SECONDS):
                with contextlib.suppress(KeyError):
                    gauge.remove(self._name, t, str(p))
        metrics.ASSIGNED_PARTITIONS.labels(self._name).set(len(self._assignment))
        log.info("partitions revoked", pipeline=self._name, partitions=sorted(f"{t}[{p}]" for t, p in gone))

    # ------------------------------------------------------------------ batching

    def _collect(self) -> Batch:
        cfg = self._settings.batch
        batch = Batch()
        deadline: float | None = None
        while not self._stop and len(batch.messages) < cfg.max_messages and batch.bytes < cfg.max_bytes:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            timeout = 1.0 if deadline is None else max(0.0, deadline - now)
            msgs = self._consumer.consume(
                num_messages=min(cfg.max_messages - len(batch.messages), 1000), timeout=timeout
            )
            if self._revoked:
                batch.drop_partitions(self._revoked)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    self._handle_kafka_error(err)
                    continue
                batch.add(msg)
            if batch.messages and deadline is None:
                deadline = batch.started + cfg.max_wait_ms / 1000
            if not batch.messages:
                self._update_lag(batch)
        return batch

    def _handle_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        log.warning("kafka error", pipeline=self._name, error=err.str(), code=err.name())

    # ------------------------------------------------------------------ processing

    def _process(self, batch: Batch) -> None:
        t0 = time.monotonic()
        self._inflight = {(m.topic(), m.partition(), m.offset()): m for m in batch.messages}
        events: list[ChangeEvent] = []
        dead: list[DeadLetter] = []
        skipped: dict[str, int] = {}
        try:
            for msg in batch.messages:
                try:
                    decoded = self._decode_one(msg)
                except _TRANSIENT:
                    # A transient decode error (a schema registry that is down) backs off here
                    # with the consumer paused: never dead-lettered, no offset moves past it.
                    decoded = self._retry("decode", functools.partial(self._decode_one, msg))
                if isinstance(decoded, DeadLetter):
                    dead.append(decoded)
                    self._limiter.observe(True)
                    continue
                self._limiter.observe(False)
                if isinstance(decoded, Skip):
                    skipped[decoded.reason] = skipped.get(decoded.reason, 0) + 1
                else:
                    events.append(decoded)
            self._send_dead_letters(dead)
            self._apply_isolating(events, dict(batch.next_offsets))
        except _BatchAbandonedError:
            log.warning("batch abandoned after a rebalance", pipeline=self._name, messages=len(batch.messages))
            self._rewind()
            return
        self._commit_kafka(batch.next_offsets)
        self._applied.update(batch.next_offsets)
        for msg in batch.messages:
            ts_type, ts_ms = msg.timestamp()
            if ts_type:
                self._applied_ts[(msg.topic() or "", msg.partition() or 0)] = ts_ms / 1000
        self._record(batch, events, skipped, time.monotonic() - t0)
        self._update_lag(Batch(), force=True)

    def _decode_one(self, msg: Message) -> ChangeEvent | Skip | DeadLetter:
        """Decode and transform ``msg``: the ONE place where their errors are classified.

        Poison (:class:`PoisonMessageError`, or any exception of a transform hook) becomes a
        :class:`DeadLetter` carrying the error class and reason; a :class:`TransformConfigError`
        (a configuration mistake, not a message problem) propagates and stops the worker. An
        error that a retry may fix (e.g. a schema registry that is down) must not be dead-lettered:
        raise it from here and let :meth:`_retry` handle it (add its class to ``_TRANSIENT``).
        """
        try:
            decoded = self._decode(msg)
            if isinstance(decoded, ChangeEvent):
                decoded = self._transform(decoded)
        except PoisonMessageError as exc:
            return _dead_letter(msg, type(exc).__name__, exc.reason)
        except TransformConfigError:
            raise
        except _TRANSIENT:
            raise  # retried by _retry("decode") in _process, never dead-lettered
        except Exception as exc:  # a transform hook's bug is poison for this message, not the worker
            return _dead_letter(msg, type(exc).__name__, str(exc) or type(exc).__name__)
        return decoded

    def _send_dead_letters(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        self._retry("dlq", lambda: self._dlq.send(dead))
        for letter in dead:
            metrics.DLQ_MESSAGES.labels(self._name, letter.error_class).inc()
            log.warning(
                "message dead-lettered",
                pipeline=self._name,
                topic=letter.topic,
                partition=letter.partition,
                offset=letter.offset,
                error_class=letter.error_class,
                reason=letter.reason[:500],
                dlq_topic=self._dlq.topic,
            )
        self.stats.dead_letters += len(dead)

    def _apply_isolating(self, events: list[ChangeEvent], offsets: dict[TP, int]) -> None:
        """Apply ``events`` with ``offsets``; when the target rejects them, bisect: halves are
        applied in their own transactions (idempotent, so a crash in between is harmless) and
        only the last one carries the offsets; a lone rejected event is dead-lettered."""
        try:
            self._apply(events, offsets)
            return
        except BatchRejectedError as exc:
            if len(events) <= 1:
                if events:
                    e = events[0]
                    msg = self._inflight[(e.topic, e.partition, e.offset)]
                    self._send_dead_letters([_dead_letter(msg, "BatchRejectedError", str(exc))])
                    self._limiter.observe(True)
                self._apply([], offsets)
                return
        mid = len(events) // 2
        self._apply_isolating(events[:mid], {})
        self._apply_isolating(events[mid:], offsets)

    def _apply(self, events: list[ChangeEvent], offsets: dict[TP, int]) -> None:
        try:
            reduced = reduce_events(events, self._default_schema)
        except ValueError as exc:
            raise BatchRejectedError(str(exc)) from exc
        result = self._retry("sink", lambda: self._sink.apply(reduced, self._group, offsets))
        metrics.ROWS_WRITTEN.labels(self._name, "upsert").inc(result.upserted)
        metrics.ROWS_WRITTEN.labels(self._name, "delete").inc(result.deleted)
        self._observe_latency(reduced, result.committed_at)

    def _retry(self, kind: str, call: Callable[[], Any]) -> Any:
        """Run ``call``; on a transient error back off (consumer paused but served) and retry.

        Raises RetryBudgetExceededError past ``retry.max_elapsed_s``; _BatchAbandonedError when a
        rebalance revoked partitions meanwhile (only for the sink and DLQ kinds).
        """
        cfg = self._settings.retry
        backoff = Backoff(cfg.initial_backoff_s, cfg.max_backoff_s, cfg.max_elapsed_s)
        while True:
            try:
                return call()
            except _TRANSIENT as exc:
                hint = exc.retry_after_s if isinstance(exc, TransientSinkError) else None
                delay = backoff.next_delay(hint)
                metrics.RETRIES.labels(self._name, kind).inc()
                metrics.READY.labels(self._name).set(0 if backoff.attempts >= 3 else 1)
                log.warning(
                    "transient failure, retrying",
                    pipeline=self._name,
                    kind=kind,
                    attempt=backoff.attempts,
                    delay_s=round(delay, 3),
                    error=str(exc)[:500],
                )
                self._wait_serving_consumer(delay, kind)
            else:
                metrics.READY.labels(self._name).set(1 if self._assignment else 0)

    def _wait_serving_consumer(self, delay: float, kind: str) -> None:
        """Sleep ``delay`` seconds while keeping the group membership alive (paused poll)."""
        if kind == "assign":  # inside a rebalance callback: the consumer must not be polled
            time.sleep(delay)
            return
        paused = [TopicPartition(t, p) for t, p in self._assignment]
        if paused:
            self._consumer.pause(paused)
        end = time.monotonic() + delay
        try:
            while time.monotonic() < end:
                msg = self._consumer.poll(min(0.5, max(0.0, end - time.monotonic())))
                if msg is not None and msg.error() is not None:
                    self._handle_kafka_error(msg.error())
                if self._revoked:
                    raise _BatchAbandonedError
        finally:
            still = [tp for tp in paused if (tp.topic, tp.partition) in self._assignment]
            if still:
                self._consumer.resume(still)

    def _rewind(self) -> None:
        """Seek every assigned partition back to the target's stored offsets."""
        self._revoked.clear()
        if not self._assignment:
            return
        stored = self._retry("assign", lambda: self._sink.stored_offsets(self._group, sorted(self._assignment)))
        for t, p in self._assignment:
            self._consumer.seek(TopicPartition(t, p, stored.get((t, p), OFFSET_BEGINNING)))

    def _commit_kafka(self, offsets: dict[TP, int]) -> None:
        mine = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self._assignment]
        if not mine:
            return
        try:
            self._consumer.commit(offsets=mine, asynchronous=True)
        except KafkaException as exc:  # informational only: the target holds the true offsets
            log.debug("kafka offset commit failed", error=str(exc))

    # ------------------------------------------------------------------ metrics

    def _update_lag(self, pending: Batch, force: bool = False, every_s: float = 5.0) -> None:
        """Set consumer lag per assigned partition: messages (high watermark from the
        consumer's cached fetch state minus the next offset applied to the target) and seconds
        (since the last applied message's Kafka timestamp, 0 when caught up)."""
        now = time.monotonic()
        if not force and now - self._lag_checked < every_s:
            return
        self._lag_checked = now
        wall = time.time()
        for t, p in sorted(self._assignment):
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            lag = partition_lag(low, high, self._applied.get((t, p)))
            metrics.CONSUMER_LAG_MESSAGES.labels(self._name, t, str(p)).set(lag)
            last = self._applied_ts.get((t, p))
            seconds = 0.0 if lag == 0 else max(0.0, wall - last) if last is not None else 0.0
            metrics.CONSUMER_LAG_SECONDS.labels(self._name, t, str(p)).set(seconds)

    def _record(self, batch: Batch, events: list[ChangeEvent], skipped: dict[str, int], seconds: float) -> None:
        n = len(batch.messages)
        self.stats.messages += n
        self.stats.events += len(events)
        self.stats.batches += 1
        metrics.MESSAGES_CONSUMED.labels(self._name).inc(n)
        metrics.BATCHES.labels(self._name).inc()
        metrics.BATCH_SIZE.labels(self._name).observe(n)
        metrics.BATCH_DURATION.labels(self._name).observe(seconds)
        for reason, count in skipped.items():
            metrics.MESSAGES_SKIPPED.labels(self._name, reason).inc(count)
        by_table: dict[tuple[str, str], int] = {}
        for e in events:
            k = (str(e.target or e.table), e.op.value)
            by_table[k] = by_table.get(k, 0) + 1
        for (table, op), count in by_table.items():
            metrics.EVENTS_APPLIED.labels(self._name, table, op).inc(count)
        if self.on_batch is not None:
            self.on_batch(self.stats)

    def _observe_latency(self, reduced: ReducedBatch, committed_at: float) -> None:
        """Observe commit-to-apply latency once per source transaction (distinct commit
        timestamp) written by this batch; snapshot reads carry the read time, not a commit,
        and are left out."""
        hist = metrics.COMMIT_TO_APPLY.labels(self._name)
        commits: set[int] = set()
        for changes in reduced.tables.values():
            commits.update(u.ts_ms for u in changes.upserts.values() if u.op is not Op.READ and u.ts_ms)
            commits.update(d.ts_ms for d in changes.deletes.values() if d.ts_ms)
            if changes.max_ts_ms:
                metrics.LAST_APPLIED_SOURCE_TS.labels(self._name, str(changes.table)).set(changes.max_ts_ms / 1000)
        for ts_ms in commits:
            hist.observe(max(0.0, committed_at - ts_ms / 1000))


def _dead_letter(msg: Message, error_class: str, reason: str) -> DeadLetter:
    ts_type, ts = msg.timestamp()
    return DeadLetter(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=msg.key(),
        value=msg.value(),
        timestamp_ms=ts if ts_type else None,
        error_class=error_class,
        reason=reason,
    )
