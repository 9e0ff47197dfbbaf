"""Operator view and reset of a pipeline's consumer offsets (``cdc-pipeline offsets``).

The offsets stored in the target are the source of truth (design invariant 1): a worker seeks
to them on assignment. So a reset writes the target (:meth:`sinks.base.Target.set_offsets`, one
transaction) and only then, best effort, Kafka's committed offsets of the group (read by lag
tools only). A reset under running workers would be overwritten by their next commit, or
worse, half-applied, so it refuses while the group has members (Kafka's DescribeGroups).
Planning is pure (:func:`plan_beginning`, :func:`plan_offset`, :func:`plan_timestamp`); the
Kafka calls go through an ``AdminClient``-like object so tests can pass a fake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]  # re-exported without __all__

from connectors.debezium import topic_pattern
from pipeline.core.offsets import partition_lag
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from sinks.base import Target

TP = tuple[str, int]


class GroupActiveError(Exception):
    """The consumer group has active members (running workers): offsets must not be changed.

    ``group`` is the group id, ``members`` one ``client_id@host`` text per member.
    """

    def __init__(self, group: str, members: Sequence[str]) -> None:
        self.group = group
        self.members = list(members)
        super().__init__(
            f"consumer group {group!r} has {len(members)} active member(s) ({', '.join(members)}): "
            "stop every worker of the pipeline (cdc-pipeline run) first, then retry"
        )


class OffsetPlanError(ValueError):
    """A reset that cannot be planned (no partition selected, an offset outside the watermarks)."""


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One partition of a pipeline's change topics: the next offset stored in the target
    (None: never written, the workers start at the beginning) and Kafka's low/high watermarks
    (None when the topic no longer exists in Kafka). Offsets are Kafka offsets."""

    topic: str
    partition: int
    stored: int | None
    low: int | None
    high: int | None

    @property
    def lag(self) -> int | None:
        """Messages still to consume (:func:`pipeline.core.offsets.partition_lag`); None without watermarks."""
        if self.low is None or self.high is None:
            return None
        return partition_lag(self.low, self.high, self.stored)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "stored_next_offset": self.stored,
            "low": self.low,
            "high": self.high,
            "lag": self.lag,
        }


@dataclass(frozen=True, slots=True)
class OffsetChange:
    """A planned change of one partition's stored next offset; ``new`` None deletes the row (the
    workers then start at the beginning of the partition)."""

    topic: str
    partition: int
    old: int | None
    new: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"topic": self.topic, "partition": self.partition, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class Selection:
    """Which partitions a reset touches: ``topics`` (empty: every topic) and ``partitions``
    (empty: every partition of the selected topics)."""

    topics: frozenset[str] = frozenset()
    partitions: frozenset[int] = frozenset()

    def matches(self, topic: str, partition: int) -> bool:
        """True when ``topic``/``partition`` is selected."""
        return (not self.topics or topic in self.topics) and (not self.partitions or partition in self.partitions)


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch from ``text``: digits are taken as epoch ms, anything else as
    ISO 8601 (``2026-12-03T13:00:00Z``, ``2026-12-03 13:00:00+01:00``; no zone means UTC).
    Raises ValueError naming the accepted forms."""
    value = text.strip()
    if re.fullmatch(r"\d+", value):
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# --------------------------------------------------------------------------- Kafka reads


def active_members(admin: Any, group: str, timeout_s: float = 10.0) -> list[str]:
    """``client_id@host`` of every member of ``group`` (Kafka DescribeGroups through
    ``AdminClient.describe_consumer_groups``); empty for an empty or unknown group (state Dead).
    Raises KafkaException when Kafka cannot answer."""
    description = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result()
    return [f"{m.client_id}@{m.host}" for m in description.members or []]


def ensure_idle(admin: Any, group: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`GroupActiveError` when ``group`` has members (see :func:`active_members`)."""
    members = active_members(admin, group, timeout_s)
    if members:
        raise GroupActiveError(group, members)


def change_partitions(
    admin: Any, source: SourceSettings, pipeline: PipelineSettings, timeout_s: float = 10.0
) -> list[TP]:
    """Every partition of the topics ``pipeline``'s workers subscribe to (the source's
    ``^<prefix>\\..+`` pattern, :func:`connectors.debezium.topic_pattern`), without internal
    topics and the pipeline's DLQ topic, sorted. Raises KafkaException."""
    pattern = re.compile(topic_pattern(source))
    dlq = pipeline.resolved_dlq_topic
    metadata = admin.list_topics(timeout=timeout_s)
    return sorted(
        (name, p)
        for name, topic in metadata.topics.items()
        if pattern.match(name) and name != dlq and not name.startswith("__") and topic.error is None
        for p in topic.partitions
    )


def watermarks(admin: Any, partitions: Iterable[TP], timeout_s: float = 10.0) -> dict[TP, tuple[int, int]]:
    """``(topic, partition) -> (low, high)``: the first retained offset and the next offset to be
    written (Kafka ListOffsets, earliest and latest, via ``AdminClient.list_offsets``)."""
    wanted = [TopicPartition(t, p) for t, p in partitions]
    if not wanted:
        return {}
    found: dict[TP, list[int]] = {}
    for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):  # type: ignore[no-untyped-call]
        futures = admin.list_offsets(dict.fromkeys(wanted, spec), request_timeout=timeout_s)
        for tp, fut in futures.items():
            found.setdefault((tp.topic, tp.partition), []).append(int(fut.result().offset))
    return {k: (v[0], v[1]) for k, v in found.items()}


def offsets_for_time(admin: Any, partitions: Iterable[TP], ts_ms: int, timeout_s: float = 10.0) -> dict[TP, int | None]:
    """Per partition, the earliest offset whose message timestamp is >= ``ts_ms`` (epoch ms), or
    None when no message is that new. Kafka ListOffsets by timestamp (KIP-79; the same request
    as ``Consumer.offsets_for_times``), via ``AdminClient.list_offsets`` with
    ``OffsetSpec.for_timestamp``. Raises KafkaException."""
    wanted = [TopicPartition(t, p) for t, p in partitions]
    if not wanted:
        return {}
    spec = OffsetSpec.for_timestamp(ts_ms)
    futures = admin.list_offsets(dict.fromkeys(wanted, spec), request_timeout=timeout_s)
    out: dict[TP, int | None] = {}
    for tp, fut in futures.items():
        offset = int(fut.result().offset)
        out[(tp.topic, tp.partition)] = offset if offset >= 0 else None
    return out


def show(
    admin: Any, target: Target, source: SourceSettings, pipeline: PipelineSettings, timeout_s: float = 10.0
) -> list[PartitionOffsets]:
    """Every partition of the pipeline's change topics plus every partition with an offset
    stored in ``target`` for its group (a deleted topic shows without watermarks), sorted.
    Raises KafkaException, TransientSinkError."""
    stored = target.group_offsets(pipeline.resolved_consumer_group)
    live = change_partitions(admin, source, pipeline, timeout_s)
    marks = watermarks(admin, live, timeout_s)
    rows = []
    for tp in sorted(set(live) | set(stored)):
        low, high = marks.get(tp, (None, None))
        rows.append(PartitionOffsets(tp[0], tp[1], stored.get(tp), low, high))
    return rows


# --------------------------------------------------------------------------- planning (pure)


def _selected(rows: Sequence[PartitionOffsets], selection: Selection) -> list[PartitionOffsets]:
    chosen = [r for r in rows if selection.matches(r.topic, r.partition)]
    if not chosen:
        what = ", ".join(sorted(selection.topics)) or "any topic"
        raise OffsetPlanError(f"no partition matches the selection ({what}; partitions {sorted(selection.partitions)})")
    return chosen


def plan_beginning(rows: Sequence[PartitionOffsets], selection: Selection) -> list[OffsetChange]:
    """Delete the stored offset of every selected partition that has one (workers then start at
    the beginning). Raises OffsetPlanError when nothing is selected."""
    return [
        OffsetChange(r.topic, r.partition, r.stored, None) for r in _selected(rows, selection) if r.stored is not None
    ]


def plan_offset(rows: Sequence[PartitionOffsets], selection: Selection, offset: int) -> list[OffsetChange]:
    """Set the next offset of every selected partition to ``offset``. Raises OffsetPlanError when
    nothing is selected, or when ``offset`` is outside a partition's ``[low, high]`` (below low the
    messages are gone; above high they do not exist yet) or the partition has no watermarks."""
    changes = []
    for r in _selected(rows, selection):
        if r.low is None or r.high is None:
            raise OffsetPlanError(f"{r.topic}[{r.partition}] is not in Kafka any more: select other partitions")
        if not r.low <= offset <= r.high:
            raise OffsetPlanError(f"offset {offset} is outside {r.topic}[{r.partition}]'s range [{r.low}, {r.high}]")
        if r.stored != offset:
            changes.append(OffsetChange(r.topic, r.partition, r.stored, offset))
    return changes


def plan_timestamp(
    rows: Sequence[PartitionOffsets], selection: Selection, found: Mapping[TP, int | None]
) -> list[OffsetChange]:
    """Set each selected partition's next offset to ``found`` (see :func:`offsets_for_time`); a
    partition with nothing that new goes to its high watermark (nothing is re-read). Partitions
    without watermarks are skipped. Raises OffsetPlanError when nothing is selected."""
    changes = []
    for r in _selected(rows, selection):
        if r.high is None:
            continue
        at = found.get((r.topic, r.partition))
        new = r.high if at is None else at
        if r.stored != new:
            changes.append(OffsetChange(r.topic, r.partition, r.stored, new))
    return changes


# --------------------------------------------------------------------------- applying


def apply_reset(
    admin: Any,
    target: Target,
    group: str,
    changes: Sequence[OffsetChange],
    rows: Sequence[PartitionOffsets],
    timeout_s: float = 10.0,
) -> str | None:
    """Apply ``changes``: check again that ``group`` is idle (raises :class:`GroupActiveError`),
    write the target in one transaction, then commit the same offsets to Kafka's group (a
    deleted row commits the low watermark), best effort. Returns None, or why the Kafka commit
    failed (the target, the source of truth, is already written). Raises KafkaException when the
    idle check cannot be made, TransientSinkError when the target cannot be written."""
    if not changes:
        return None
    ensure_idle(admin, group, timeout_s)
    target.set_offsets(group, {(c.topic, c.partition): c.new for c in changes})
    return commit_to_kafka(admin, group, changes, rows, timeout_s)


def commit_to_kafka(
    admin: Any,
    group: str,
    changes: Sequence[OffsetChange],
    rows: Sequence[PartitionOffsets],
    timeout_s: float = 10.0,
) -> str | None:
    """Commit the new offsets to Kafka's consumer group (``AdminClient.alter_consumer_group_offsets``,
    which Kafka only allows for an empty group); None, or the error text. Never raises."""
    lows = {(r.topic, r.partition): r.low for r in rows}
    parts = []
    for c in changes:
        offset = c.new if c.new is not None else lows.get((c.topic, c.partition))
        if offset is not None:
            parts.append(TopicPartition(c.topic, c.partition, offset))
    if not parts:
        return None
    try:
        futures = admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, parts)], request_timeout=timeout_s
        )
        futures[group].result()
    except KafkaException as exc:
        return f"committing to Kafka's group {group!r} failed (lag tools may show old offsets): {exc}"
    return None
