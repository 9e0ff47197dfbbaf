"""Builds a :class:`~pipeline.control.snapshot.loop.SnapshotCoordinator` from the resolved
``Settings``: its queue, its notification reader (JSON or Avro), its Kafka Connect client, its
lag source (the slot's retained WAL and every pipeline's consumer lag, read from each target
through :func:`sinks.factory.make_target`) and its progress reads."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import psycopg

from connectors.connect_client import ConnectClient, RetryPolicy
from connectors.debezium import TableRef, notification_topic, topic_pattern
from connectors.source_prep import conninfo as source_conninfo
from pipeline.control.snapshot.kafka import ConsumerLagProbe, NotificationReader, PipelineOffsets
from pipeline.control.snapshot.lag import LagSource, lag_reader
from pipeline.control.snapshot.loop import ConnectorInfo, SnapshotCoordinator
from pipeline.control.snapshot.model import SnapshotSettings
from pipeline.control.snapshot.sql import SnapshotQueue, read_wal_retained
from pipeline.core import metrics
from pipeline.core.events import TableId
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from pipeline.decode.avro import AvroReader
from pipeline.decode.registry import SchemaRegistryClient
from pipeline.transform.transformer import build_transformer
from sinks.factory import make_target

log = get_logger(__name__)


def pipelines_of(settings: Settings, source: SourceSettings) -> list[PipelineSettings]:
    """The pipelines reading ``source``."""
    return [p for p in settings.pipelines if p.source == source.name]


def pipeline_offsets(settings: Settings, source: SourceSettings) -> list[PipelineOffsets]:
    """Offset locations of every pipeline of ``source``, whatever its target kind: its consumer
    group and an opener of its target (:func:`sinks.factory.make_target`, purpose ``snapshot``;
    nothing is connected until the first read)."""
    return [
        PipelineOffsets(pipe.name, pipe.resolved_consumer_group, partial(make_target, pipe, purpose="snapshot"))
        for pipe in pipelines_of(settings, source)
    ]


def wal_reader(source: SourceSettings) -> Callable[[], int | None]:
    """The slot's retained WAL in bytes (:func:`~pipeline.control.snapshot.sql.read_wal_retained`,
    one short connection to the source per reading); None, logged, when the source cannot be read."""

    def read() -> int | None:
        try:
            with psycopg.connect(source_conninfo(source, "cdc-pipeline snapshot throttle"), autocommit=True) as conn:
                return read_wal_retained(conn, source.resolved_slot_name)
        except psycopg.Error as exc:
            log.warning("slot WAL not measured", source=source.name, error=str(exc)[:300])
            return None

    return read


def topic_regex(source: SourceSettings) -> str:
    """The change-topic regex of the pipelines' subscription (``^<prefix>\\..+``)."""
    return topic_pattern(source)


def applied_reads(settings: Settings, source: SourceSettings) -> Callable[[str], float | None]:
    """Snapshot reads (op ``r``) this process processed per source table, from
    ``cdc_events_applied_total`` plus ``cdc_events_stale_total`` (reads of rows the target already
    held at a newer position count too: they are done) of the first pipeline of ``source``
    (routed target table)."""
    pipes = pipelines_of(settings, source)
    if not pipes:
        return lambda _table: None
    pipe = pipes[0]
    try:
        transformer = build_transformer(pipe.transforms, pipe.mask_salt)
    except ValueError:
        return lambda _table: None

    def read(table: str) -> float | None:
        ref = TableRef.parse(table)
        tid = TableId(ref.schema, ref.table)
        target = transformer.target_for(tid) or TableId(pipe.target.schema_name, ref.table)
        labels = {"pipeline": pipe.name, "table": str(target), "op": "r"}
        counts = [
            metrics.REGISTRY.get_sample_value(n, labels) for n in ("cdc_events_applied_total", "cdc_events_stale_total")
        ]
        found = [c for c in counts if c is not None]
        return sum(found) if found else None

    return read


def _notification_avro(source: SourceSettings) -> Callable[[bytes], dict[str, Any]] | None:
    """For an Avro source (``format: avro``): a reader of its Avro notification records through
    its schema registry; None for JSON sources."""
    if source.format != "avro" or source.schema_registry is None:
        return None
    reader = AvroReader(SchemaRegistryClient(source.schema_registry, retry_budget_s=5.0).schema)

    def read(raw: bytes) -> dict[str, Any]:
        _, _, value = reader.read(raw)
        if not isinstance(value, dict):
            raise ValueError("an Avro notification is not a record")
        return value

    return read


def _lag_source(
    settings: Settings, source: SourceSettings, cfg: SnapshotSettings, hooks: list[Callable[[], None]]
) -> tuple[LagSource, SnapshotSettings]:
    """The lag source of ``source`` and the settings to throttle with: without a pipeline of
    the source there is no consumer lag to check, so ``max_consumer_lag`` is switched off
    (logged) rather than read as unknown forever. The probe's close joins ``hooks``."""
    probe: ConsumerLagProbe | None = None
    if cfg.max_consumer_lag is not None:
        offsets = pipeline_offsets(settings, source)
        if offsets:
            probe = ConsumerLagProbe(settings.kafka.client_config(), topic_regex(source), offsets)
            hooks.append(probe.close)
        else:
            log.info("consumer lag not checked: no pipeline reads this source", source=source.name)
            cfg = replace(cfg, max_consumer_lag=None)
    wal = wal_reader(source) if cfg.max_wal_retained_bytes is not None else None
    return lag_reader(source.name, wal, probe), cfg


def build_coordinator(
    settings: Settings,
    source: SourceSettings,
    config: SnapshotSettings | None = None,
    *,
    connect: ConnectorInfo | None = None,
    with_lag: bool = True,
) -> SnapshotCoordinator:
    """A coordinator for ``source`` wired from ``settings`` (not started): its queue, a
    notification reader on :func:`connectors.debezium.notification_topic`, a lag source
    (slot WAL + pipelines' consumer lag, every target kind) when ``with_lag``, and ``connect``
    (a Kafka Connect client; default: a new :class:`connectors.connect_client.ConnectClient`,
    closed with the coordinator) for auto-snapshots."""
    cfg = config or SnapshotSettings()
    hooks: list[Callable[[], None]] = []
    client_id = f"cdc-snapshot-{source.name}-{uuid.uuid4().hex[:6]}"
    reader = NotificationReader(
        settings.kafka.client_config(), notification_topic(source), client_id, avro_reader=_notification_avro(source)
    )
    if connect is None:
        own = ConnectClient(settings.connect, retry=RetryPolicy(max_attempts=2, max_elapsed_s=5.0))
        hooks.append(own.close)
        connect = own
    lag: LagSource | None = None
    if with_lag and (cfg.max_consumer_lag is not None or cfg.max_wal_retained_bytes is not None):
        lag, cfg = _lag_source(settings, source, cfg, hooks)
    return SnapshotCoordinator(
        source,
        SnapshotQueue(source),
        reader,
        config=cfg,
        connect=connect,
        lag=lag,
        rows_applied=applied_reads(settings, source),
        close_hooks=hooks,
    )
