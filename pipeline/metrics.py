"""Every Prometheus metric the service exports: name, type, labels and meaning, in one place.

The README's metrics reference lists the same names (a test keeps them in sync). Hot-loop
code accumulates per batch and records once per batch, not per message.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

UP = Gauge("cdc_up", "1 while the process runs.", registry=REGISTRY)
READY = Gauge(
    "cdc_ready",
    "1 while the worker is connected, has an assignment and is not in a backoff storm.",
    ["pipeline"],
    registry=REGISTRY,
)
MESSAGES_CONSUMED = Counter(
    "cdc_messages_consumed_total", "Kafka messages consumed (all kinds).", ["pipeline"], registry=REGISTRY
)
EVENTS_APPLIED = Counter(
    "cdc_events_applied_total",
    "Change events applied to the target, by target table and op.",
    ["pipeline", "table", "op"],
    registry=REGISTRY,
)
MESSAGES_SKIPPED = Counter(
    "cdc_messages_skipped_total",
    "Messages consumed but not applied (tombstone, heartbeat, filtered...).",
    ["pipeline", "reason"],
    registry=REGISTRY,
)
ROWS_WRITTEN = Counter(
    "cdc_rows_written_total",
    "Target rows upserted or deleted after reduction and the version guard.",
    ["pipeline", "kind"],
    registry=REGISTRY,
)
BATCHES = Counter("cdc_batches_total", "Batches committed to the target.", ["pipeline"], registry=REGISTRY)
BATCH_SIZE = Histogram(
    "cdc_batch_messages",
    "Messages per committed batch.",
    ["pipeline"],
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000),
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "cdc_batch_duration_seconds",
    "Seconds from decoding to the target commit of a batch.",
    ["pipeline"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMMIT_TO_APPLY = Histogram(
    "cdc_commit_to_apply_seconds",
    "Seconds from the source commit (source.ts_ms) to the target commit, per written row.",
    ["pipeline"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RETRIES = Counter(
    "cdc_retries_total",
    "Transient failures retried with backoff, by kind (sink, dlq, assign).",
    ["pipeline", "kind"],
    registry=REGISTRY,
)
DLQ_MESSAGES = Counter(
    "cdc_dlq_messages_total",
    "Messages sent to the dead-letter queue, by error class.",
    ["pipeline", "error_class"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "cdc_assigned_partitions", "Partitions assigned to this worker.", ["pipeline"], registry=REGISTRY
)
LAST_APPLIED_SOURCE_TS = Gauge(
    "cdc_last_applied_source_timestamp_seconds",
    "Source commit time (epoch seconds) of the newest change applied, per target table.",
    ["pipeline", "table"],
    registry=REGISTRY,
)
