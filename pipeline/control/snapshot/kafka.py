"""Kafka clients of the coordinator, never the pipeline's consumer: :class:`NotificationReader`
reads a source's notification topic with hand-assigned partitions (nothing committed), and
:class:`ConsumerLagProbe` measures the pipelines' consumer lag from a metadata client and the
offsets each pipeline stored in its target (read through the ``Target`` seam)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from pipeline.control.snapshot.lag import UNKNOWN_NO_OFFSETS, ConsumerLag, lag_per_partition
from pipeline.control.snapshot.model import Notification
from pipeline.control.snapshot.notifications import parse_notification
from pipeline.core.logs import get_logger, kafka_logging

log = get_logger(__name__)


class KafkaConsumerLike(Protocol):
    """The part of ``confluent_kafka.Consumer`` used here."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...
    def get_watermark_offsets(self, partition: Any, timeout: float | None = None, cached: bool = False) -> Any: ...
    def offsets_for_times(self, partitions: list[Any], timeout: float | None = None) -> list[Any]: ...
    def assign(self, partitions: list[Any]) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]: ...
    def close(self) -> None: ...


def _new_consumer(config: dict[str, Any]) -> KafkaConsumerLike:
    return cast(KafkaConsumerLike, Consumer(kafka_logging(config)))


class NotificationReader:
    """The coordinator's own consumer of a source's notification topic (no group
    subscription: partitions are assigned by hand, nothing is committed).

    :meth:`seek` sets where reading (re)starts (epoch ms, resolved with ``offsets_for_times``;
    the end of the topic when nothing is that new); :meth:`read` returns the notifications
    available within ``timeout_s``. The topic is created by Connect with the first
    notification, so a missing topic is retried at the next read.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, str],
        topic: str,
        client_id: str,
        factory: Callable[[dict[str, Any]], KafkaConsumerLike] = _new_consumer,
        avro_reader: Callable[[bytes], dict[str, Any]] | None = None,
    ) -> None:
        self.topic = topic
        self._avro = avro_reader
        self._config: dict[str, Any] = {
            **kafka_config,
            "group.id": f"{client_id}-notifications",
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
        }
        self._factory = factory
        self._consumer: KafkaConsumerLike | None = None
        self._since_ms: int | None = None
        self._assigned = False

    def seek(self, since_ms: int) -> None:
        """Restart reading at the first notification at or after ``since_ms`` (next :meth:`read`)."""
        self._since_ms = since_ms
        self._assigned = False

    def _assign(self) -> bool:
        if self._consumer is None:
            self._consumer = self._factory(self._config)
        meta = self._consumer.list_topics(self.topic, timeout=10)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        since = self._since_ms if self._since_ms is not None else int(time.time() * 1000)
        wanted = [TopicPartition(self.topic, p, since) for p in sorted(topic.partitions)]
        found = self._consumer.offsets_for_times(wanted, timeout=10)
        for tp in found:
            if tp.offset < 0:
                tp.offset = OFFSET_END
        self._consumer.assign(found)
        self._assigned = True
        return True

    def read(self, max_messages: int = 500, timeout_s: float = 0.5) -> list[Notification]:
        """Notifications available now (bounded by ``timeout_s``), in topic order."""
        if not self._assigned and not self._assign():
            return []
        assert self._consumer is not None
        out: list[Notification] = []
        for msg in self._consumer.consume(max_messages, timeout_s):
            if msg.error() is not None:
                log.debug("notification consumer error", error=str(msg.error()))
                continue
            note = parse_notification(self._value(msg.value()))
            if note is not None:
                out.append(note)
        return out

    def _value(self, raw: bytes | None) -> bytes | dict[str, Any] | None:
        """``raw``, or the record decoded from it when it is Confluent-wire-format Avro (an Avro
        source's connector writes its notifications with its value converter). A notification
        that cannot be decoded (registry unreachable, unknown schema) is logged and skipped:
        notifications are progress reports; requests time out without them."""
        if self._avro is None or not raw or raw[:1] != b"\x00":
            return raw
        try:
            return self._avro(raw)
        except Exception as exc:  # any decoding failure: skip this notification
            log.warning("undecodable Avro notification skipped", topic=self.topic, error=str(exc)[:300])
            return None

    def close(self) -> None:
        """Close the consumer; idempotent."""
        consumer, self._consumer = self._consumer, None
        self._assigned = False
        if consumer is not None:
            consumer.close()


class OffsetStore(Protocol):
    """The part of :class:`sinks.base.Target` the probe reads (tests pass a fake)."""

    def group_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """Every ``(topic, partition) -> next offset`` stored for ``group``; empty for a new group."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class PipelineOffsets:
    """Where one pipeline stores its offsets: its consumer ``group`` and ``open_target``, which
    returns its target (:func:`sinks.factory.make_target`; opened on first read, any kind)."""

    pipeline: str
    group: str
    open_target: Callable[[], OffsetStore]


class ConsumerLagProbe:
    """Consumer lag of pipelines, measured from outside the runner: for every partition of
    the topics matching ``topic_regex`` (the pipeline's subscription), the high watermark minus
    the next offset the pipeline stored in its target (the source of truth, design invariant 1,
    read with ``Target.group_offsets``; a partition without a stored offset counts from its low
    watermark, and a group that stored none at all has an unknown lag).

    Uses its own metadata client (never subscribes); each pipeline's target is opened on first
    use and kept until :meth:`close`. Kafka failures raise KafkaException; :meth:`read` also
    raises the target's error (:class:`sinks.base.TransientSinkError` when unreachable),
    :meth:`survey` reports it as an unknown lag.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, str],
        topic_regex: str,
        targets: Sequence[PipelineOffsets],
        factory: Callable[[dict[str, Any]], KafkaConsumerLike] = _new_consumer,
    ) -> None:
        self._regex = re.compile(topic_regex)
        self._targets = list(targets)
        self._config: dict[str, Any] = {
            **kafka_config,
            "group.id": f"cdc-lag-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
        self._factory = factory
        self._consumer: KafkaConsumerLike | None = None
        self._open: dict[str, OffsetStore] = {}

    def watermarks(self, timeout_s: float = 10.0) -> dict[tuple[str, int], tuple[int, int]]:
        """``(topic, partition) -> (low, high)`` for every matching topic."""
        if self._consumer is None:
            self._consumer = self._factory(self._config)
        meta = self._consumer.list_topics(timeout=timeout_s)
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for name, topic in meta.topics.items():
            if not self._regex.match(name) or topic.error is not None:
                continue
            for p in topic.partitions:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(name, p), timeout=timeout_s, cached=False
                )
                out[(name, p)] = (int(low), int(high))
        return out

    def _stored(self, target: PipelineOffsets) -> dict[tuple[str, int], int]:
        store = self._open.get(target.pipeline)
        if store is None:
            store = self._open[target.pipeline] = target.open_target()
        return store.group_offsets(target.group)

    def _lag(self, target: PipelineOffsets, marks: Mapping[tuple[str, int], tuple[int, int]]) -> ConsumerLag:
        stored = self._stored(target)
        return ConsumerLag(target.pipeline, lag_per_partition(marks, stored), None if stored else UNKNOWN_NO_OFFSETS)

    def read(self) -> list[ConsumerLag]:
        """The lag of every pipeline (one :class:`ConsumerLag` each); raises on the first
        target that cannot be read."""
        marks = self.watermarks()
        return [self._lag(target, marks) for target in self._targets]

    def survey(self) -> list[ConsumerLag]:
        """Like :meth:`read`, but a pipeline whose target cannot be read gets a
        :class:`ConsumerLag` with no partitions and ``unknown`` = the error (logged); raises
        only when Kafka cannot be read."""
        marks = self.watermarks()
        lags: list[ConsumerLag] = []
        for target in self._targets:
            try:
                lags.append(self._lag(target, marks))
            except Exception as exc:  # any target failure: this pipeline's lag is unknown, never "zero"
                reason = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("consumer lag not measured", pipeline=target.pipeline, error=reason)
                lags.append(ConsumerLag(target.pipeline, {}, reason))
        return lags

    def close(self) -> None:
        """Close the metadata client and the targets; idempotent."""
        consumer, self._consumer = self._consumer, None
        stores, self._open = list(self._open.values()), {}
        for store in stores:
            try:
                store.close()
            except Exception as exc:  # closing must reach every client
                log.debug("target close failed", error=str(exc)[:300])
        if consumer is not None:
            consumer.close()
