"""The runner's steps as plain functions and small classes: collect a batch, classify each message,
apply with bisection, record what was applied. None of them owns the loop or the retry policy;
:mod:`pipeline.dataplane.runner` composes them (style.md: one loop touches the consumer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError

from pipeline.core.batch import ReducedBatch
from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Op, Skip
from pipeline.core.settings.models import BatchSettings
from pipeline.dataplane.consumer import Consumer, Message
from pipeline.dataplane.dlq import DeadLetter
from sinks.base import BatchRejectedError

TP = tuple[str, int]
"""``(topic, partition)``."""

Decode = Callable[[Message], ChangeEvent | Skip]
"""Decoder: raises PoisonMessageError for a message that can never be decoded, TransientError for
one that a retry may decode (schema registry down); any other exception is a bug (fatal)."""

Transform = Callable[[ChangeEvent], ChangeEvent | Skip]
"""Transformer: raises PoisonMessageError for an event it cannot handle; anything else is fatal."""


@dataclass
class Batch:
    """Messages of one batch and the next offset per partition they cover (last offset + 1)."""

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


def collect(
    consumer: Consumer,
    cfg: BatchSettings,
    *,
    stopping: Callable[[], bool],
    revoked: set[TP],
    on_error: Callable[[KafkaError], None],
    on_idle: Callable[[], None],
) -> Batch:
    """Consume one batch bounded by ``cfg.max_messages``, ``cfg.max_bytes`` and ``cfg.max_wait_ms``
    (measured from the first message); returns early, possibly empty, once ``stopping()``.

    Messages of ``revoked`` partitions are dropped as soon as a rebalance revokes them;
    ``on_error`` gets each Kafka error event, ``on_idle`` is called after every empty consume.
    """
    batch = Batch()
    deadline: float | None = None
    while not stopping() and len(batch.messages) < cfg.max_messages and batch.bytes < cfg.max_bytes:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        timeout = 1.0 if deadline is None else max(0.0, deadline - now)
        msgs = consumer.consume(num_messages=min(cfg.max_messages - len(batch.messages), 1000), timeout=timeout)
        if revoked:
            batch.drop_partitions(revoked)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                on_error(err)
                continue
            batch.add(msg)
        if batch.messages and deadline is None:
            deadline = batch.started + cfg.max_wait_ms / 1000
        if not batch.messages:
            on_idle()
    return batch


def dead_letter(msg: Message, error_class: str, reason: str) -> DeadLetter:
    """The dead letter of ``msg``: its bytes, origin and why."""
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


def classify(msg: Message, decode: Decode, transform: Transform) -> ChangeEvent | Skip | DeadLetter:
    """Decode and transform ``msg``: the ONE place where their errors are classified.

    :class:`PoisonMessageError` becomes a :class:`DeadLetter` with the error class and reason.
    Everything else propagates: a TransientError for the runner to retry, any other exception
    (a converter or transform bug, a configuration mistake) to stop the worker without
    committing, so a bug can never dead-letter good messages.
    """
    try:
        decoded = decode(msg)
        return transform(decoded) if isinstance(decoded, ChangeEvent) else decoded
    except PoisonMessageError as exc:
        return dead_letter(msg, type(exc).__name__, exc.reason)


ApplyFn = Callable[[list[ChangeEvent], dict[TP, int]], None]
"""Applies events with offsets in one target transaction; raises BatchRejectedError when the
target refuses them for a reason a retry will not fix."""

RejectFn = Callable[[ChangeEvent, str], None]
"""Dead-letters one event the target refused, with the reason."""


def apply_isolating(events: list[ChangeEvent], offsets: dict[TP, int], apply: ApplyFn, reject: RejectFn) -> None:
    """Apply ``events`` with ``offsets``; when the target rejects them, bisect.

    Halves are applied in their own transactions (idempotent, so a crash in between is harmless)
    and only the last one carries the offsets; a lone rejected event goes to ``reject`` and the
    offsets are then stored with an empty batch. Depth is log2(len(events)).
    """
    try:
        apply(events, offsets)
        return
    except BatchRejectedError as exc:
        if len(events) <= 1:
            if events:
                reject(events[0], str(exc))
            apply([], offsets)
            return
    mid = len(events) // 2
    apply_isolating(events[:mid], {}, apply, reject)
    apply_isolating(events[mid:], offsets, apply, reject)


def commit_times(reduced: ReducedBatch) -> set[int]:
    """Distinct source commit timestamps (ms) of the streamed changes in ``reduced``; snapshot
    reads carry the read time, not a commit, and are left out."""
    commits: set[int] = set()
    for changes in reduced.tables.values():
        commits.update(u.ts_ms for u in changes.upserts.values() if u.op is not Op.READ and u.ts_ms)
        commits.update(d.ts_ms for d in changes.deletes.values() if d.ts_ms)
    return commits


@dataclass
class Sorted:
    """One batch's messages after classification."""

    events: list[ChangeEvent] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, item: ChangeEvent | Skip | DeadLetter) -> None:
        """File ``item`` under events, dead letters or skips (by reason)."""
        if isinstance(item, DeadLetter):
            self.dead.append(item)
        elif isinstance(item, Skip):
            self.skipped[item.reason] = self.skipped.get(item.reason, 0) + 1
        else:
            self.events.append(item)
