"""One error taxonomy for both planes: poison, transient, fatal (design "Seams", "Errors").

Code raises :class:`PoisonMessageError` on purpose for one message that can never be handled;
:class:`TransientError` for what a retry may fix; anything else, expected (:class:`FatalError`)
or not, stops the worker without committing.
"""

from __future__ import annotations


class PoisonMessageError(Exception):
    """A message that can never be decoded, transformed or applied; it goes to the DLQ.

    Carries the origin (topic, partition, offset) and a human-readable ``reason``; the offset
    moves past the message once the dead letter is acknowledged.
    """

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason


class TransientError(Exception):
    """A failure worth retrying with backoff (connection loss, serialization failure, deadlock,
    a schema registry or DLQ broker that is down); the offset does not move.

    ``retry_after_s`` is a hint in seconds, or None for the caller's own backoff.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FatalError(Exception):
    """A failure that stops the worker without committing: a configuration mistake, a DLQ limit,
    a retry budget spent, a target whose schema was changed by hand. Any exception that is
    neither poison nor transient is treated the same way, whether it derives from this or not."""
