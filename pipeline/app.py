"""Wiring of one pipeline worker from settings: Kafka clients, sink, decoder, transforms.

This is the only place that turns configuration into live objects; the runner and the steps
receive them ready-made (no client is created at import time).
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import Consumer, Producer
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from connectors.debezium import heartbeat_table, signal_table
from pipeline.decode import make_decoder
from pipeline.dlq import DeadLetterQueue
from pipeline.events import ChangeEvent, Skip, TableId
from pipeline.health import HealthServer
from pipeline.logs import get_logger
from pipeline.monitor import build_monitors
from pipeline.runner import Message, PipelineRunner
from pipeline.settings import PipelineSettings, Settings, SourceSettings, TargetSettings
from pipeline.transforms import build_transformer
from pipeline.verify import coordination_monitors
from sinks.base import Sink
from sinks.postgres.sink import PostgresSink
from sinks.sqlalchemy.sink import SqlAlchemySink

log = get_logger(__name__)


class UnsupportedTargetError(ValueError):
    """The target URL's scheme names no sink this build has."""


POSTGRES_SCHEMES = ("postgresql", "postgres")
# Scheme -> SQLAlchemy driver name used for it (PyMySQL is the MySQL-family driver we ship).
SQLALCHEMY_SCHEMES = {
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
}
SUPPORTED_SCHEMES = ("postgresql://", "mysql+pymysql://", "mariadb+pymysql://", "sqlite:///")


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def target_kind(target: TargetSettings) -> str:
    """``postgresql`` or ``sqlalchemy``: which sink family ``target.url`` selects.

    Raises UnsupportedTargetError naming the supported schemes.
    """
    scheme = _scheme(target.url)
    if scheme.split("+", 1)[0] in POSTGRES_SCHEMES:
        return "postgresql"
    if scheme in SQLALCHEMY_SCHEMES:
        return "sqlalchemy"
    raise UnsupportedTargetError(
        f"target.url: unsupported scheme {scheme or target.url!r}; supported: {', '.join(SUPPORTED_SCHEMES)}"
    )


def target_conninfo(target: TargetSettings) -> str:
    """libpq conninfo of a ``postgresql://`` (or ``postgresql+driver://``) target, with the
    password from ``target.password`` when the URL has none. Raises UnsupportedTargetError."""
    scheme, sep, rest = target.url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in POSTGRES_SCHEMES:
        raise UnsupportedTargetError(f"target.url: unsupported scheme {scheme!r} (use postgresql://)")
    url = f"postgresql://{rest}"
    if target.password is not None and urlsplit(url).password is None:
        return make_conninfo(url, password=target.password.get_secret_value())
    return url


def target_sqlalchemy_url(target: TargetSettings) -> URL:
    """The SQLAlchemy URL object of a MariaDB/MySQL or SQLite target: plain ``mysql://`` and
    ``mariadb://`` get the PyMySQL driver, and ``target.password`` is set on the URL object when
    the URL has none (the password is never formatted into a string or logged).

    Raises UnsupportedTargetError for another scheme or an unparsable URL.
    """
    scheme = _scheme(target.url)
    if scheme not in SQLALCHEMY_SCHEMES:
        raise UnsupportedTargetError(
            f"target.url: unsupported scheme {scheme or target.url!r}; supported: {', '.join(SUPPORTED_SCHEMES)}"
        )
    try:
        url = make_url(target.url)
    except ArgumentError as exc:
        raise UnsupportedTargetError(f"target.url: not a valid SQLAlchemy URL ({exc})") from None
    url = url.set(drivername=SQLALCHEMY_SCHEMES[scheme])
    if target.password is not None and url.password is None:
        url = url.set(password=target.password.get_secret_value())
    return url


def make_sink(pipeline: PipelineSettings) -> Sink:
    """The sink for ``pipeline.target`` chosen by the URL scheme: ``postgresql://`` -> the
    PostgreSQL fast path (:class:`PostgresSink`); ``mysql[+pymysql]://``,
    ``mariadb[+pymysql]://`` and ``sqlite:///`` -> :class:`SqlAlchemySink`.

    Raises UnsupportedTargetError (naming ``pipelines[<name>].target.url``) for other schemes.
    """
    target = pipeline.target
    try:
        kind = target_kind(target)
        if kind == "postgresql":
            return PostgresSink(
                target_conninfo(target),
                control_schema=target.control_schema,
                create_tables=target.create_tables,
                add_columns=target.add_columns,
                application_name=f"cdc-pipeline:{pipeline.name}",
                stall_timeout_s=target.stall_timeout_s,
            )
        return SqlAlchemySink(
            target_sqlalchemy_url(target),
            control_schema=target.control_schema,
            create_tables=target.create_tables,
            add_columns=target.add_columns,
        )
    except UnsupportedTargetError as exc:
        raise UnsupportedTargetError(f"pipelines[{pipeline.name}].{exc}") from None


def topic_pattern(source: SourceSettings) -> str:
    """librdkafka regex subscription for every change topic of the source
    (``<topic.prefix>.<schema>.<table>``), so tables added later are picked up."""
    return "^" + re.escape(source.resolved_topic_prefix).replace("\\-", "-") + r"\..+"


def consumer_config(settings: Settings, pipeline: PipelineSettings, client_id: str) -> dict[str, Any]:
    """confluent-kafka consumer configuration: manual offsets, cooperative rebalancing."""
    poll_interval_ms = int(max(300.0, pipeline.retry.max_elapsed_s + 60) * 1000)
    return {
        **settings.kafka.client_config(),
        "group.id": pipeline.resolved_consumer_group,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "topic.metadata.refresh.interval.ms": 5000,
        "max.poll.interval.ms": poll_interval_ms,
        # A killed worker's partitions move after this long (the broker allows >= 6 s by default).
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 2000,
        # Prefetch at most 32 MB per worker, and refill it quickly: with librdkafka's default
        # fetch.queue.backoff.ms (1 s) a full queue starves a fast worker (docs/benchmarks.md).
        "queued.max.messages.kbytes": 32768,
        "queued.min.messages": 20000,
        "fetch.queue.backoff.ms": 20,
        "fetch.max.bytes": max(pipeline.batch.max_bytes, 1 << 20),
    }


def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """Producer for dead letters: idempotent, acknowledged by all in-sync replicas."""
    return {
        **settings.kafka.client_config(),
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }


def table_filter(source: SourceSettings, pipeline: PipelineSettings) -> Callable[[ChangeEvent], bool]:
    """True for events of tables this pipeline applies.

    With ``pipeline.tables`` set: those tables plus the source's heartbeat table (for time-lag
    measurement). Without it: every table the connector captures, so a table added to the
    source while the worker runs is applied without a restart; only the source's Debezium
    signal table is left out.
    """
    hb = heartbeat_table(source)
    heartbeat = TableId(hb.schema, hb.table)
    if pipeline.tables is None:
        sig = signal_table(source)
        signals = TableId(sig.schema, sig.table)
        return lambda e: e.table != signals
    allowed = {TableId(*name.split(".", 1)) for name in pipeline.tables} | {heartbeat}
    return lambda e: e.table in allowed


@dataclass
class Worker:
    """A wired worker: the runner plus what must be closed with it."""

    runner: PipelineRunner
    sink: Sink
    producer: Producer
    health: HealthServer | None

    def close(self) -> None:
        """Release the sink, flush the producer and stop the HTTP server."""
        self.sink.close()
        self.producer.flush(10)
        if self.health is not None:
            self.health.stop()


def build_worker(settings: Settings, pipeline: PipelineSettings, *, serve_http: bool = True) -> Worker:
    """Create the Kafka clients, sink, decoder and transforms of one worker of ``pipeline``."""
    source = settings.source(pipeline.source)
    client_id = f"cdc-pipeline-{pipeline.name}-{socket.gethostname()}"
    consumer = Consumer(consumer_config(settings, pipeline, client_id))
    producer = Producer(producer_config(settings, client_id))
    sink = make_sink(pipeline)
    decoder = make_decoder(source, pipeline)  # JSON or Avro (Schema Registry) per the settings
    transformer = build_transformer(pipeline.transforms, pipeline.mask_salt)
    wanted = table_filter(source, pipeline)
    dlq_topic = pipeline.resolved_dlq_topic

    def decode(msg: Message) -> ChangeEvent | Skip:
        if msg.topic() == dlq_topic:
            return Skip(dlq_topic, msg.partition() or 0, msg.offset() or 0, "filtered")
        return decoder.decode_message(msg)

    def transform(event: ChangeEvent) -> ChangeEvent | Skip:
        if not wanted(event):
            return Skip(event.topic, event.partition, event.offset, "filtered")
        return transformer(event)

    runner = PipelineRunner(
        pipeline,
        consumer,
        sink,
        DeadLetterQueue(producer, dlq_topic, pipeline.name),
        decode,
        transform,
        [topic_pattern(source)],
        pipeline.target.schema_name,
    )
    health = None
    if serve_http and settings.metrics.enabled:

        def ready() -> tuple[bool, dict[str, object]]:
            assigned = len(runner.assignment)
            return assigned > 0, {"pipeline": pipeline.name, "assigned_partitions": assigned}

        health = HealthServer(settings.metrics.host, settings.metrics.port, ready)
    return Worker(runner, sink, producer, health)


def run_worker(settings: Settings, pipeline: PipelineSettings) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the process exit code.

    Beside the runner: the slot-lag and connector-state monitors of the pipeline's source
    (``monitor.enabled``), the snapshot coordinator and cutover monitor, and the HTTP endpoints
    (``metrics.enabled``).
    """
    worker = build_worker(settings, pipeline)
    monitors = build_monitors(settings, sources=[pipeline.source])
    monitors.start()
    # The snapshot coordinator (only the holder of the source's coordinator lock acts) and the
    # cutover-readiness monitor.
    coordination = coordination_monitors(settings, pipeline)
    for poller in coordination:
        poller.start()
    if worker.health is not None:
        worker.health.start()
        log.info("http endpoints", port=worker.health.port, paths=["/metrics", "/healthz", "/readyz"])

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        worker.runner.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for poller in coordination:
            poller.stop(10)
        monitors.stop()
        worker.close()
