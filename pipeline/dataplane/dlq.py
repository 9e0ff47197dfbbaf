"""Dead-letter queue: poison messages with their reason and origin, and the limits that stop
a worker rather than dead-letter everything (design invariant 4).

Each dead letter is the original key and value bytes, produced to the pipeline's DLQ topic
with headers ``cdc.error.class``, ``cdc.error.reason``, ``cdc.original.topic``,
``cdc.original.partition``, ``cdc.original.offset``, ``cdc.original.timestamp_ms`` and
``cdc.pipeline``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from pipeline.core.errors import FatalError, TransientError


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that will never apply, with why (``error_class``, ``reason``) and where from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    error_class: str
    reason: str

    def headers(self, pipeline: str) -> list[tuple[str, str | bytes | None]]:
        """Kafka headers of the dead letter (UTF-8 values)."""
        return [
            ("cdc.error.class", self.error_class.encode()),
            ("cdc.error.reason", self.reason.encode()[:4000]),
            ("cdc.original.topic", self.topic.encode()),
            ("cdc.original.partition", str(self.partition).encode()),
            ("cdc.original.offset", str(self.offset).encode()),
            ("cdc.original.timestamp_ms", str(self.timestamp_ms or 0).encode()),
            ("cdc.pipeline", pipeline.encode()),
        ]


class DlqLimitExceededError(FatalError):
    """Too many dead letters (consecutive or by ratio): the worker stops without committing."""


class DlqLimiter:
    """Tracks the last ``window`` messages; ``observe`` raises when either limit is crossed.

    Limits: ``max_consecutive`` dead letters in a row, or a dead-lettered share above
    ``max_ratio`` once at least ``window`` messages were seen.
    """

    def __init__(self, max_consecutive: int, max_ratio: float, window: int) -> None:
        self._max_consecutive = max_consecutive
        self._max_ratio = max_ratio
        self._recent: deque[bool] = deque(maxlen=window)
        self._dead_in_window = 0  # running count of True in _recent: O(1) per message
        self._consecutive = 0

    def observe(self, dead: bool) -> None:
        """Record one message (dead-lettered or not). Raises DlqLimitExceededError. O(1)."""
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._dead_in_window -= 1
        self._recent.append(dead)
        self._dead_in_window += dead
        self._consecutive = self._consecutive + 1 if dead else 0
        if self._consecutive >= self._max_consecutive:
            raise DlqLimitExceededError(f"{self._consecutive} consecutive messages dead-lettered (dlq.max_consecutive)")
        if len(self._recent) == self._recent.maxlen:
            ratio = self._dead_in_window / len(self._recent)
            if ratio > self._max_ratio:
                raise DlqLimitExceededError(
                    f"{ratio:.0%} of the last {len(self._recent)} messages dead-lettered (dlq.max_ratio)"
                )


class DlqDeliveryError(TransientError):
    """Dead letters could not be delivered; the batch is retried (the offset does not move)."""


class DeadLetterQueue:
    """Produces dead letters to ``topic`` and waits for their acknowledgement in ``send``."""

    def __init__(self, producer: Producer, topic: str, pipeline: str, timeout_s: float = 30.0) -> None:
        self._producer = producer
        self.topic = topic
        self._pipeline = pipeline
        self._timeout_s = timeout_s

    def send(self, letters: list[DeadLetter]) -> None:
        """Produce ``letters`` and flush. Raises DlqDeliveryError when any is not acknowledged."""
        if not letters:
            return
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for letter in letters:
            self._producer.produce(
                self.topic,
                value=letter.value,
                key=letter.key,
                headers=letter.headers(self._pipeline),
                on_delivery=on_delivery,
            )
        remaining = self._producer.flush(self._timeout_s)
        if remaining or errors:
            raise DlqDeliveryError(
                f"{remaining} dead letter(s) unacknowledged, errors: {errors[:3]} (topic {self.topic})"
            )
