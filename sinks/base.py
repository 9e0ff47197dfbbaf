"""The Sink contract: apply one reduced batch atomically, with the offsets it covers.

Timing rules (one sentence each, like arroyo's strategy interface):

- ``stored_offsets`` may block on I/O; it is called from the runner's rebalance callback.
- ``apply`` writes rows, deletes, truncates and offsets in ONE transaction and returns only
  after the commit; it never sleeps: a transient failure raises :class:`TransientSinkError`
  (the runner backs off and calls ``apply`` again with the same batch), anything else raises
  :class:`BatchRejectedError` or another exception (the runner isolates the bad event or stops).
- ``close`` releases connections; the sink is unusable afterwards.

Offsets map ``(topic, partition)`` to the *next* offset to consume (last applied + 1), and
are stored per consumer group in the target's control schema (design invariant 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pipeline.core.batch import ReducedBatch
from pipeline.core.errors import TransientError
from pipeline.core.events import TableId

TopicPartition = tuple[str, int]
OffsetMap = Mapping[TopicPartition, int]


class TransientSinkError(TransientError):
    """A target failure worth retrying with backoff: connection loss, serialization failure,
    deadlock, a stalled target. ``retry_after_s`` is a hint (seconds) or None."""


class BatchRejectedError(Exception):
    """The target refused the batch for a reason that retrying will not fix (bad data, a
    constraint, a dropped column). The runner bisects the batch to find the event at fault."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a committed ``apply`` wrote: rows upserted and deleted (after the version guard),
    tables truncated, and the commit wall-clock time (seconds since the epoch)."""

    upserted: int
    deleted: int
    truncated: int
    committed_at: float


class Sink(Protocol):
    """A target database; see the module docstring for the timing rules."""

    def stored_offsets(self, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offsets stored for ``group``; partitions never written are absent."""

    def apply(self, batch: ReducedBatch, group: str, offsets: OffsetMap) -> ApplyResult:
        """Apply ``batch`` and store ``offsets`` in one transaction (see module docstring)."""

    def reset_offsets(self, group: str) -> int:
        """Delete the stored offsets of ``group`` (replay from Kafka); returns rows deleted."""

    def close(self) -> None:
        """Release connections."""


class Target(Sink, Protocol):
    """The ``Target`` seam (design "Seams"): everything either plane needs from one target database.

    One implementation per backend (:class:`sinks.postgres.target.PostgresTarget`,
    :class:`sinks.sqlalchemy.target.SqlAlchemyTarget` for MariaDB/MySQL and SQLite), built by
    :func:`sinks.factory.make_target`. Nothing outside an implementation branches on the target
    kind or opens its own connection to the control tables. Reads may block on I/O; each raises
    :class:`TransientSinkError` when the target is unreachable.
    """

    @property
    def kind(self) -> str:
        """``postgresql``, ``mysql`` (MariaDB too) or ``sqlite``."""

    def group_offsets(self, group: str) -> dict[TopicPartition, int]:
        """Every ``(topic, partition) -> next offset`` stored for ``group``; empty for a new group."""

    def read_heartbeat(self, table: TableId, source_name: str) -> datetime | None:
        """The heartbeat ``ts`` (aware, UTC) of ``source_name`` applied into ``table``; None while
        the table or its row does not exist yet."""
