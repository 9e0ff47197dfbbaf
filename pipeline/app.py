"""The composition root: a data-plane worker (Kafka clients, sink, decoder, transforms) or a
control-plane replica, wired from settings.

This is the only place that turns configuration into live objects; the runner and the steps
receive them ready-made (no client is created at import time).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, Producer

from connectors.debezium import heartbeat_table, signal_table, topic_pattern
from pipeline.checks.naming import require_unique_target_names
from pipeline.control.plane import ControlPlane
from pipeline.core import metrics
from pipeline.core.errors import PoisonMessageError
from pipeline.core.events import ChangeEvent, Skip, TableId
from pipeline.core.health import HealthServer
from pipeline.core.logs import get_logger, kafka_logging
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from pipeline.dataplane.consumer import Message
from pipeline.dataplane.dlq import DeadLetterQueue
from pipeline.dataplane.runner import PipelineRunner
from pipeline.decode.factory import make_decoder
from pipeline.transform.hooks import RejectedEventError
from pipeline.transform.transformer import build_transformer
from sinks.base import BatchRejectedError, Sink
from sinks.factory import make_sink

log = get_logger(__name__)


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


DEAD_LETTER_CLASSES = (PoisonMessageError.__name__, RejectedEventError.__name__, BatchRejectedError.__name__)
"""error_class values of the dead letters the worker knows it can produce (decode/transform, hooks, target)."""


def build_worker(settings: Settings, pipeline: PipelineSettings, *, serve_http: bool = True) -> Worker:
    """Create the Kafka clients, sink, decoder and transforms of one worker of ``pipeline``.

    Raises :class:`~pipeline.checks.naming.TargetNameError` first, before any client exists,
    when target table names of ``settings`` collide (two tables would merge into one).
    """
    require_unique_target_names(settings)
    source = settings.source(pipeline.source)
    client_id = f"cdc-pipeline-{pipeline.name}-{socket.gethostname()}"
    consumer = Consumer(kafka_logging(consumer_config(settings, pipeline, client_id)))
    producer = Producer(kafka_logging(producer_config(settings, client_id)))
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
    # counters at 0 from the start, so the first dead letter or retry is an increase
    metrics.precreate_worker_series(pipeline.name, DEAD_LETTER_CLASSES)
    if serve_http and settings.metrics.enabled:
        health = HealthServer(settings.metrics.host, settings.metrics.port, runner.readiness)
    return Worker(runner, sink, producer, health)


def run_worker(settings: Settings, pipeline: PipelineSettings) -> int:
    """Run one data-plane worker until SIGTERM/SIGINT; returns the process exit code.

    The runner and the HTTP endpoints (``metrics.enabled``) only: the monitors, the snapshot
    coordinator and the cutover monitor belong to ``cdc-pipeline control``. After a stop request
    the worker has ``pipeline.shutdown_timeout_s`` to finish or abandon its batch; past it the
    process exits anyway (offsets live in the target, so nothing is lost).
    """
    worker = build_worker(settings, pipeline)
    if worker.health is not None:
        worker.health.start()
        log.info("http endpoints", port=worker.health.port, paths=["/metrics", "/healthz", "/readyz"])
    watchdog = ShutdownWatchdog(pipeline.shutdown_timeout_s)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        worker.runner.request_stop()
        watchdog.arm()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        worker.close()
        watchdog.disarm()


class ShutdownWatchdog:
    """Bounds a shutdown: once armed, exits the process after ``timeout_s`` seconds unless
    disarmed first (a sink call blocked on a frozen target must not outlive the grace period)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        """Start the countdown (idempotent; signal-safe: starts a thread)."""
        if self._timer is None:
            self._timer = threading.Timer(self.timeout_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        """Cancel the countdown."""
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.warning(
            "shutdown took longer than the timeout; exiting (the batch in flight is abandoned)",
            timeout_s=self.timeout_s,
        )
        os._exit(0)


def run_control(
    settings: Settings,
    sources: Sequence[str] | None = None,
    *,
    lease: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run one control-plane replica until SIGTERM/SIGINT (0) or the loss of its lease
    (:data:`pipeline.control.plane.EXIT_LEASE_LOST`), serving ``/metrics``, ``/healthz`` and
    ``/readyz`` when ``metrics.enabled``. ``stop`` (default: set by the signals when called from
    the main thread) ends it too. Raises KeyError for an unknown source, KafkaException when the
    lease group cannot be joined, OSError when the HTTP port cannot be bound, and
    :class:`~pipeline.checks.naming.TargetNameError` (before anything connects) when target
    table names collide.
    """
    require_unique_target_names(settings)
    for name in sources or ():
        settings.source(name)
    stop = stop or threading.Event()
    plane = ControlPlane(settings, sources, lease=lease)
    health = (
        HealthServer(settings.metrics.host, settings.metrics.port, plane.readiness)
        if settings.metrics.enabled
        else None
    )
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", signal=signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if health is not None:
            health.start()
            log.info("http endpoints", port=health.port, paths=["/metrics", "/healthz", "/readyz"])
        return plane.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if health is not None:
            health.stop()
