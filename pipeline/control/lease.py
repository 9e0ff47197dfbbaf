"""The control plane's lease: membership of a Kafka consumer group on a one-partition topic.

Whichever replica the group coordinator assigns the partition to is the active one. The lease
dies with the process (a clean close leaves the group at once; after a ``kill -9`` or a vanished
node the broker expires the member after ``session.timeout.ms``), and a replica cut off from the
coordinator drops it by itself after the same timeout (librdkafka's local session check calls
``on_lost``). Nothing is ever produced to the topic; it only carries the assignment. Why a group
rather than a PostgreSQL advisory lock: docs/architecture.md.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported without __all__

from pipeline.core import metrics
from pipeline.core.logs import get_logger, kafka_logging

log = get_logger(__name__)

LEASE_TOPIC_PREFIX = "__cdc-control."
LEASE_GROUP_PREFIX = "cdc.control."
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def lease_name(names: list[str]) -> str:
    """The lease of a control plane acting for the sources ``names``: their sorted names joined
    with ``.``, reduced to Kafka's topic characters. Two control planes for the same sources share
    it, so only one of them acts; planes for different sources never exclude each other."""
    return _UNSAFE.sub("_", ".".join(sorted(names)))[:200] or "default"


def replica_id() -> str:
    """``<hostname>-<pid>``: this replica's label in metrics and logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_lease_topic(
    client_config: Mapping[str, str | int | float | bool], topic: str, timeout_s: float = 30.0
) -> None:
    """Create the one-partition lease ``topic`` if it does not exist (broker-default replication).

    Raises KafkaException when the broker refuses for another reason than "already exists".
    """
    admin = AdminClient(kafka_logging(client_config))
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=-1)], request_timeout=timeout_s)
    try:
        futures[topic].result(timeout_s)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise


class KafkaLease:
    """One replica's membership of the lease group; ``poll()`` drives it (call every ≤ 1 s).

    ``on_acquired()`` runs when this replica becomes active, ``on_lost()`` when it stops being
    so (revoked or lost); both run on the polling thread, inside ``poll``. Exports
    ``cdc_control_active{lease,replica}`` and ``cdc_control_lease_acquired_total``.
    """

    def __init__(
        self,
        client_config: dict[str, str],
        name: str,
        *,
        on_acquired: Callable[[], None],
        on_lost: Callable[[], None],
        session_timeout_ms: int = 10_000,
        replica: str | None = None,
    ) -> None:
        self.name = name
        self.topic = LEASE_TOPIC_PREFIX + name
        self.group = LEASE_GROUP_PREFIX + name
        self.replica = replica or replica_id()
        self._client_config = client_config
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self.active = False
        self._consumer: Any = None
        self._session_timeout_ms = session_timeout_ms
        metrics.CONTROL_ACTIVE.labels(self.name, self.replica).set(0)

    def join(self) -> None:
        """Create the lease topic if needed and subscribe (membership starts with the next poll).

        Raises KafkaException when the topic cannot be created.
        """
        ensure_lease_topic(self._client_config, self.topic)
        self._consumer = Consumer(
            kafka_logging(
                {
                    **self._client_config,
                    "group.id": self.group,
                    "client.id": f"cdc-control-{self.replica}",
                    "enable.auto.commit": False,
                    # Cooperative and sticky: a replica joining or leaving never takes the partition
                    # from the one that holds it (an eager rebalance would revoke it from everyone).
                    "partition.assignment.strategy": "cooperative-sticky",
                    "session.timeout.ms": self._session_timeout_ms,
                    "heartbeat.interval.ms": max(500, self._session_timeout_ms // 5),
                    "max.poll.interval.ms": 300_000,
                }
            )
        )
        self._consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)
        log.info("lease joined", lease=self.name, group=self.group, replica=self.replica)

    def poll(self, timeout_s: float = 0.5) -> None:
        """Serve the group membership for up to ``timeout_s`` (rebalance callbacks run here).

        Raises KafkaException on a fatal consumer error.
        """
        msg = self._consumer.poll(timeout_s)
        if msg is not None and msg.error() is not None:
            err = msg.error()
            if err.fatal():
                raise KafkaException(err)
            log.warning("lease consumer error", lease=self.name, error=err.str())

    def close(self) -> None:
        """Leave the group (the lease moves to a standby at once) and close the consumer."""
        if self._consumer is None:
            return
        try:
            self._consumer.close()  # runs on_revoke first when active
        except (KafkaException, RuntimeError) as exc:
            log.warning("lease consumer close failed", error=str(exc))
        self._consumer = None
        self._set_active(False)

    def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        if any(p.topic == self.topic for p in partitions) and not self.active:
            self._set_active(True)
            metrics.CONTROL_LEASE_ACQUIRED.labels(self.name, self.replica).inc()
            log.info("lease acquired: this replica is active", lease=self.name, replica=self.replica)
            self._on_acquired()

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if any(p.topic == self.topic for p in partitions) and self.active:
            self._set_active(False)
            log.warning("lease lost: this replica stops acting", lease=self.name, replica=self.replica)
            self._on_lost()

    def _set_active(self, active: bool) -> None:
        self.active = active
        metrics.CONTROL_ACTIVE.labels(self.name, self.replica).set(1 if active else 0)
