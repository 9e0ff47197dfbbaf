"""The pipeline runner: the ONLY code that touches the data plane's Kafka consumer (design invariant 6).

One runner is one worker of a pipeline's consumer group. Each batch goes through the steps of
:mod:`pipeline.dataplane.steps` in a fixed order: collect; classify (poison → dead letter);
1. produce and acknowledge the dead letters; 2. apply the reduced batch and its next offsets in
ONE target transaction (bisecting a batch the target rejects); 3. commit the same offsets to
Kafka asynchronously, for lag tools only. Transient failures back off with the consumer paused and
the offsets unmoved; a stop request ends a backoff at once. See docs/design-notes.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from pipeline.core import metrics
from pipeline.core.batch import ReducedBatch
from pipeline.core.errors import TransientError
from pipeline.core.events import ChangeEvent
from pipeline.core.logs import get_logger
from pipeline.core.reduce import reduce_events
from pipeline.core.retry import Backoff
from pipeline.core.settings.models import PipelineSettings
from pipeline.dataplane.consumer import Consumer, Message
from pipeline.dataplane.dlq import DeadLetter, DeadLetterQueue, DlqLimiter
from pipeline.dataplane.progress import Applied, Progress, RunnerStats, observe_latency, record_batch
from pipeline.dataplane.steps import (
    TP,
    Batch,
    Decode,
    Sorted,
    Transform,
    apply_isolating,
    classify,
    collect,
    dead_letter,
)
from sinks.base import BatchRejectedError, Sink

log = get_logger(__name__)

T = TypeVar("T")


class _BatchAbandonedError(Exception):
    """The in-flight batch is given up: partitions were revoked, or a stop was requested during a
    backoff. Nothing was committed for it; its messages are re-read from the target's offsets."""


class PipelineRunner:
    """One worker of a pipeline; see the module docstring for the loop and commit protocol.

    ``consumer`` is a ``confluent_kafka.Consumer`` created with ``enable.auto.commit=false`` and
    ``enable.auto.offset.store=false`` (or a :class:`pipeline.dataplane.memory.MemoryConsumer`);
    the runner subscribes it to ``topics`` (names or ``^regex``). ``run()`` returns 0 after a
    requested stop and raises on a fatal error (DLQ limit, retry budget exceeded, Kafka fatal
    error, any unexpected exception) after closing the consumer, without committing the batch.
    """

    def __init__(
        self,
        settings: PipelineSettings,
        consumer: Consumer,
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
        self._in_backoff = False
        self._inflight: dict[tuple[str | None, int | None, int | None], Message] = {}
        self._applied = Applied()
        self._progress = Progress(self._name)
        self.stats = RunnerStats()
        self.on_batch: Callable[[RunnerStats], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """Ask the loop to finish (or, while backing off, abandon) the batch in flight and close.

        Signal-safe: only sets a flag. A backoff wait ends within 0.5 s of it.
        """
        self._stop = True

    @property
    def assignment(self) -> set[TP]:
        """Partitions currently assigned to this worker."""
        return set(self._assignment)

    @property
    def in_backoff(self) -> bool:
        """True from a transient failure until the retried call succeeds."""
        return self._in_backoff

    @property
    def ready(self) -> bool:
        """Ready for ``/readyz``: partitions assigned and not backing off."""
        return bool(self._assignment) and not self._in_backoff

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``/readyz``'s answer: :attr:`ready` and the detail shown (no configuration, no secrets)."""
        detail: dict[str, object] = {
            "pipeline": self._name,
            "assigned_partitions": len(self._assignment),
            "in_backoff": self._in_backoff,
        }
        return self.ready, detail

    def run(self) -> int:
        """Consume until ``request_stop()``; returns 0. Raises on fatal errors (see class doc)."""
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        log.info("pipeline started", pipeline=self._name, group=self._group, topics=self._topics)
        try:
            while not self._stop:
                try:
                    batch = self._collect()
                    if batch.messages:
                        self._process(batch)
                except _BatchAbandonedError:
                    self._after_abandon()
        finally:
            self._close()
        log.info("pipeline stopped", pipeline=self._name, **self.stats.__dict__)
        return 0

    def _close(self) -> None:
        metrics.READY.labels(self._name).set(0)
        metrics.IN_BACKOFF.labels(self._name).set(0)
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
        self._progress.assigned(stored)
        consumer.incremental_assign(partitions)
        self._assignment |= set(wanted)
        self._revoked -= set(wanted)
        metrics.ASSIGNED_PARTITIONS.labels(self._name).set(len(self._assignment))
        self._export_ready()
        log.info(
            "partitions assigned",
            pipeline=self._name,
            partitions=[f"{t}[{p}]@{stored.get((t, p), 'beginning')}" for t, p in wanted],
        )

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._assignment -= gone
        self._revoked |= gone
        self._progress.forget(gone)
        metrics.ASSIGNED_PARTITIONS.labels(self._name).set(len(self._assignment))
        self._export_ready()
        log.info("partitions revoked", pipeline=self._name, partitions=sorted(f"{t}[{p}]" for t, p in gone))

    def _export_ready(self) -> None:
        metrics.READY.labels(self._name).set(1 if self.ready else 0)

    # ------------------------------------------------------------------ steps

    def _collect(self) -> Batch:
        return collect(
            self._consumer,
            self._settings.batch,
            stopping=lambda: self._stop,
            revoked=self._revoked,
            on_error=self._handle_kafka_error,
            on_idle=lambda: self._progress.update_lag(self._consumer, self._assignment),
        )

    def _handle_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        log.warning("kafka error", pipeline=self._name, error=err.str(), code=err.name())

    def _process(self, batch: Batch) -> None:
        """Classify, dead-letter, apply with offsets, commit: the numbered order of the module doc."""
        t0 = time.monotonic()
        self._inflight = {(m.topic(), m.partition(), m.offset()): m for m in batch.messages}
        self._applied = Applied()
        sorted_ = self._classify(batch)
        self._send_dead_letters(sorted_.dead)  # 1
        apply_isolating(sorted_.events, dict(batch.next_offsets), self._apply, self._reject)  # 2
        self._commit_kafka(batch.next_offsets)  # 3
        self._progress.committed(batch.next_offsets, batch.messages)
        record_batch(self._name, self.stats, len(batch.messages), self._applied, sorted_.skipped, time.monotonic() - t0)
        if self.on_batch is not None:
            self.on_batch(self.stats)
        self._progress.update_lag(self._consumer, self._assignment, force=True)

    def _classify(self, batch: Batch) -> Sorted:
        out = Sorted()
        decode, transform = self._decode, self._transform
        for msg in batch.messages:
            try:
                item = classify(msg, decode, transform)
            except TransientError:
                # A transient decode error (a schema registry that is down) backs off here with
                # the consumer paused: never dead-lettered, no offset moves past it.
                item = self._retry("decode", lambda m=msg: classify(m, decode, transform))  # type: ignore[misc]
            self._limiter.observe(isinstance(item, DeadLetter))
            out.add(item)
        return out

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

    def _reject(self, event: ChangeEvent, reason: str) -> None:
        msg = self._inflight[(event.topic, event.partition, event.offset)]
        self._send_dead_letters([dead_letter(msg, "BatchRejectedError", reason)])
        self._limiter.observe(True)

    def _apply(self, events: list[ChangeEvent], offsets: dict[TP, int]) -> None:
        try:
            reduced: ReducedBatch = reduce_events(events, self._default_schema)
        except ValueError as exc:
            raise BatchRejectedError(str(exc)) from exc
        result = self._retry("sink", lambda: self._sink.apply(reduced, self._group, offsets))
        metrics.ROWS_WRITTEN.labels(self._name, "upsert").inc(result.upserted)
        metrics.ROWS_WRITTEN.labels(self._name, "delete").inc(result.deleted)
        self._applied.add(events, self._default_schema, result)
        observe_latency(self._name, reduced, result.committed_at)

    def _commit_kafka(self, offsets: dict[TP, int]) -> None:
        mine = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self._assignment]
        if not mine:
            return
        try:
            self._consumer.commit(offsets=mine, asynchronous=True)
        except KafkaException as exc:  # informational only: the target holds the true offsets
            log.debug("kafka offset commit failed", error=str(exc))

    # ------------------------------------------------------------------ retry and backoff

    def _retry(self, kind: str, call: Callable[[], T]) -> T:
        """Run ``call``; on a TransientError back off (consumer paused but served) and retry.

        While retrying, ``in_backoff`` is true and ``cdc_ready``/``/readyz`` say not ready; the
        first success clears both. Raises RetryBudgetExceededError past ``retry.max_elapsed_s``
        and _BatchAbandonedError when a rebalance revoked partitions or a stop was requested.
        """
        cfg = self._settings.retry
        backoff = Backoff(cfg.initial_backoff_s, cfg.max_backoff_s, cfg.max_elapsed_s)
        while True:
            try:
                result = call()
            except TransientError as exc:
                self._backing_off(kind, backoff, exc)
                continue
            if backoff.attempts:
                self._set_backoff(False)
            return result

    def _backing_off(self, kind: str, backoff: Backoff, exc: TransientError) -> None:
        delay = backoff.next_delay(exc.retry_after_s)
        self._set_backoff(True)
        metrics.RETRIES.labels(self._name, kind).inc()
        log.warning(
            "transient failure, retrying",
            pipeline=self._name,
            kind=kind,
            attempt=backoff.attempts,
            delay_s=round(delay, 3),
            error=str(exc)[:500],
        )
        if kind == "assign":  # inside a rebalance callback: the consumer must not be polled
            self._sleep_unless_stopped(delay)
        else:
            self._wait_serving_consumer(delay)

    def _set_backoff(self, on: bool) -> None:
        self._in_backoff = on
        metrics.IN_BACKOFF.labels(self._name).set(1 if on else 0)
        self._export_ready()

    def _sleep_unless_stopped(self, delay: float) -> None:
        end = time.monotonic() + delay
        while not self._stop and time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        if self._stop:
            raise _BatchAbandonedError

    def _wait_serving_consumer(self, delay: float) -> None:
        """Wait ``delay`` seconds while keeping the group membership alive (paused poll).

        A partition assigned during the wait is paused too, and a record a poll returns anyway
        is sought back, so nothing is skipped. Raises _BatchAbandonedError on a revocation or a
        stop request.
        """
        paused = [TopicPartition(t, p) for t, p in self._assignment]
        if paused:
            self._consumer.pause(paused)
        end = time.monotonic() + delay
        try:
            while time.monotonic() < end:
                msg = self._consumer.poll(min(0.5, max(0.0, end - time.monotonic())))
                if msg is not None:
                    paused += self._hold_back(msg)
                if self._revoked or self._stop:
                    raise _BatchAbandonedError
        finally:
            still = [tp for tp in paused if (tp.topic, tp.partition) in self._assignment]
            if still:
                self._consumer.resume(still)

    def _hold_back(self, msg: Message) -> list[TopicPartition]:
        """A record polled during a backoff (a partition assigned meanwhile): seek back to it and
        pause its partition; returns the partitions newly paused."""
        err = msg.error()
        if err is not None:
            self._handle_kafka_error(err)
            return []
        tp = TopicPartition(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        self._consumer.seek(tp)
        held = [TopicPartition(tp.topic, tp.partition)]
        self._consumer.pause(held)
        return held

    def _after_abandon(self) -> None:
        """Forget the abandoned batch: unless stopping, seek every assigned partition back to the
        target's stored offsets (the source of truth) and carry on."""
        self._revoked.clear()
        self._inflight = {}
        if self._stop:
            log.warning(
                "batch abandoned at shutdown (offsets live in the target: nothing is lost)", pipeline=self._name
            )
            return
        log.warning("batch abandoned after a rebalance", pipeline=self._name)
        if not self._assignment:
            return
        stored = self._retry("assign", lambda: self._sink.stored_offsets(self._group, sorted(self._assignment)))
        for t, p in self._assignment:
            self._consumer.seek(TopicPartition(t, p, stored.get((t, p), OFFSET_BEGINNING)))
