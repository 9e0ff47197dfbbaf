"""The Debezium JDBC sink connector for the side-by-side benchmark: config, lifecycle, progress.

Option names and defaults checked against the Debezium 3.6.0.Final JDBC sink jar on the local
stack's ``plugin.path`` (``io.debezium.sink.SinkConnectorConfig`` and
``io.debezium.connector.jdbc.JdbcSinkConnectorConfig``; Debezium documentation, "Debezium
connector for JDBC", "Connector configuration properties"): ``batch.size`` defaults to 500,
``collection.name.format`` to ``${topic}``, ``primary.key.mode`` takes ``record_key``,
``schema.evolution`` ``none|basic``, ``insert.mode`` ``insert|upsert|update``.

Kafka Connect (4.3) facts relied on: a sink connector's consumer group is ``connect-<name>``;
the worker's ``connector.client.config.override.policy`` defaults to ``All`` since Kafka 3.0
(KIP-722), so ``consumer.override.*`` is accepted; ``PUT /connectors/<name>/stop`` and
``DELETE /connectors/<name>/offsets`` (KIP-875, Kafka 3.6+) reset a sink's committed offsets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.localstack.config import PG_PASSWORD, PG_SUPERUSER, LocalStackSettings
from pipeline.localstack.procs import read_pid

JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
DEFAULT_BATCH_SIZE = 500
"""``batch.size`` default of Debezium 3.6 (``SinkConnectorConfig.BATCH_SIZE_FIELD``)."""


class SinkError(Exception):
    """The JDBC sink connector failed or did not reach a state in time; the message says why."""


def sink_config(
    stack: LocalStackSettings, name: str, database: str, topic: str, tasks: int, batch_size: int | None
) -> dict[str, str]:
    """Connector config writing ``topic`` into ``public.bench`` of ``database`` on the target.

    ``batch_size`` None leaves ``batch.size`` at its default (500). With a larger batch the
    consumer's ``max.poll.records`` (500 by default) is raised to match, as the option's own
    documentation recommends, else a batch never holds more than one poll.
    """
    config = {
        "connector.class": JDBC_SINK_CLASS,
        "tasks.max": str(tasks),
        "topics": topic,
        "connection.url": f"jdbc:postgresql://{stack.host}:{stack.target_pg_port}/{database}",
        "connection.username": PG_SUPERUSER,
        "connection.password": PG_PASSWORD,
        "insert.mode": "upsert",
        "delete.enabled": "true",
        "primary.key.mode": "record_key",
        "schema.evolution": "basic",
        "collection.name.format": "bench",  # same table as ours: public.bench
        "consumer.override.auto.offset.reset": "earliest",
        "errors.tolerance": "none",
    }
    if batch_size is not None:
        config["batch.size"] = str(batch_size)
        config["consumer.override.max.poll.records"] = str(batch_size)
    return config


class ConnectSink:
    """One JDBC sink connector on the stack's Kafka Connect worker (REST)."""

    def __init__(self, stack: LocalStackSettings, name: str) -> None:
        self.stack = stack
        self.name = name
        self.group = f"connect-{name}"
        self._http = httpx.Client(base_url=stack.connect_url, timeout=30)

    def create(self, config: dict[str, str]) -> None:
        """``PUT /connectors/<name>/config`` (create); raises SinkError on a non-2xx answer."""
        resp = self._http.put(f"/connectors/{self.name}/config", json=config)
        if resp.status_code >= 300:
            raise SinkError(f"create {self.name}: HTTP {resp.status_code} {resp.text[:500]}")

    def state(self) -> tuple[str, list[str]]:
        """(connector state, task states); FAILED tasks raise SinkError with the trace's head."""
        resp = self._http.get(f"/connectors/{self.name}/status")
        if resp.status_code == 404:
            return "ABSENT", []
        body: dict[str, Any] = resp.json()
        tasks = body.get("tasks", [])
        for task in tasks:
            if task.get("state") == "FAILED":
                raise SinkError(f"{self.name} task {task.get('id')} FAILED: {str(task.get('trace'))[:1500]}")
        return str(body.get("connector", {}).get("state")), [str(t.get("state")) for t in tasks]

    def wait_state(self, wanted: str, timeout_s: float = 120) -> None:
        """Poll the status until the connector is ``wanted`` (RUNNING also waits for its tasks)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state, tasks = self.state()
            if state == wanted and (wanted != "RUNNING" or (tasks and all(t == "RUNNING" for t in tasks))):
                return
            if time.monotonic() > deadline:
                raise SinkError(f"{self.name}: {state} {tasks} after {timeout_s:.0f} s, wanted {wanted}")
            time.sleep(0.5)

    def stop(self) -> None:
        """``PUT /connectors/<name>/stop`` and wait for STOPPED (tasks shut down, config kept)."""
        self._http.put(f"/connectors/{self.name}/stop").raise_for_status()
        self.wait_state("STOPPED")

    def reset_offsets(self) -> None:
        """``DELETE /connectors/<name>/offsets`` (connector must be STOPPED): removes the group's
        committed offsets, so on resume the consumer starts at ``auto.offset.reset`` (earliest)."""
        resp = self._http.delete(f"/connectors/{self.name}/offsets")
        if resp.status_code >= 300:
            raise SinkError(f"reset offsets of {self.name}: HTTP {resp.status_code} {resp.text[:500]}")

    def resume(self) -> None:
        """``PUT /connectors/<name>/resume`` (restarts a STOPPED connector's tasks)."""
        self._http.put(f"/connectors/{self.name}/resume").raise_for_status()

    def delete(self) -> None:
        """``DELETE /connectors/<name>``, then its consumer group (best effort, bounded)."""
        self._http.delete(f"/connectors/{self.name}")
        self._http.close()

    def committed(self, admin: AdminClient, topic: str, partitions: int) -> int:
        """Sum of the group's committed offsets on ``topic`` (0 for partitions without one)."""
        request = ConsumerGroupTopicPartitions(self.group, [TopicPartition(topic, p) for p in range(partitions)])
        result = admin.list_consumer_group_offsets([request], request_timeout=10)[self.group].result(timeout=30)
        return sum(max(0, tp.offset) for tp in result.topic_partitions)


def connect_pid(stack: LocalStackSettings) -> int | None:
    """PID of the stack's Kafka Connect JVM (``<state>/connect/connect.pid``), or None."""
    return read_pid(stack.state / "connect" / "connect.pid")


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (``echo 5 > /proc/<pid>/clear_refs``,
    proc(5)); True when it worked (needs ownership of the process)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
