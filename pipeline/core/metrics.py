"""Every Prometheus metric the service exports: name, type, labels and meaning, in one place.

The README's metrics reference lists the same names (a test keeps them in sync). Hot-loop
code accumulates per batch and records once per batch, not per message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300, 600)

UP = Gauge("cdc_up", "1 while the process runs.", registry=REGISTRY)
READY = Gauge(
    "cdc_ready",
    "1 while the worker has partitions assigned and is not backing off a transient failure.",
    ["pipeline"],
    registry=REGISTRY,
)
MESSAGES_CONSUMED = Counter(
    "cdc_messages_consumed_total", "Kafka messages consumed (all kinds).", ["pipeline"], registry=REGISTRY
)
EVENTS_APPLIED = Counter(
    "cdc_events_applied_total",
    "Change events applied to the target, by target table and op (stale events excluded: see cdc_events_stale_total).",
    ["pipeline", "table", "op"],
    registry=REGISTRY,
)
EVENTS_STALE = Counter(
    "cdc_events_stale_total",
    "Change events the target already held at the same or a newer position (replays, duplicates), so the version"
    " guard, a tombstone or the truncate watermark made them no-ops; by target table and op.",
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
    "Seconds from the source commit (source.ts_ms) to the target commit, per source transaction applied.",
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

# --------------------------------------------------------------------------- consumer lag (set by the runner)

CONSUMER_LAG_MESSAGES = Gauge(
    "cdc_consumer_lag_messages",
    "Messages behind per partition: high watermark minus the next offset stored in the target.",
    ["pipeline", "topic", "partition"],
    registry=REGISTRY,
)
CONSUMER_LAG_SECONDS = Gauge(
    "cdc_consumer_lag_seconds",
    "Seconds behind per partition: age of the oldest message not yet applied (0 when caught up).",
    ["pipeline", "topic", "partition"],
    registry=REGISTRY,
)

# --- slot-lag monitor (pipeline.control.monitor)

MONITOR_UP = Gauge(
    "cdc_monitor_up",
    "1 when the monitor's last poll of its target (slot: the source database, connect: the REST API) succeeded.",
    ["monitor", "source"],
    registry=REGISTRY,
)
MONITOR_POLL_ERRORS = Counter(
    "cdc_monitor_poll_errors_total",
    "Monitor polls that failed (logged; retried next interval), by monitor and check.",
    ["monitor", "source", "check"],
    registry=REGISTRY,
)
SOURCE_WAL_POSITION = Gauge(
    "cdc_source_wal_position_bytes",
    "The source's current WAL write position, pg_current_wal_lsn(), as bytes since 0/0.",
    ["source"],
    registry=REGISTRY,
)
SOURCE_WAL_RATE = Gauge(
    "cdc_source_wal_rate_bytes_per_second",
    "WAL generation rate of the source server over the monitor's sliding window, bytes/s.",
    ["source"],
    registry=REGISTRY,
)
SLOT_UNLIMITED_RETENTION = Gauge(
    "cdc_source_slot_wal_unlimited",
    "1 when max_slot_wal_keep_size = -1: a stalled slot retains WAL until the source's disk fills.",
    ["source"],
    registry=REGISTRY,
)
SLOT_EXISTS = Gauge(
    "cdc_replication_slot_exists",
    "1 when the source's replication slot exists in pg_replication_slots.",
    ["source", "slot"],
    registry=REGISTRY,
)
SLOT_ACTIVE = Gauge(
    "cdc_replication_slot_active",
    "1 when a consumer (the Debezium connector) is streaming from the slot.",
    ["source", "slot"],
    registry=REGISTRY,
)
SLOT_WAL_RETAINED = Gauge(
    "cdc_replication_slot_wal_retained_bytes",
    "WAL the slot keeps on the source's disk: pg_current_wal_lsn() - restart_lsn, bytes.",
    ["source", "slot"],
    registry=REGISTRY,
)
SLOT_BYTES_BEHIND = Gauge(
    "cdc_replication_slot_bytes_behind",
    "WAL not yet confirmed by the consumer: pg_current_wal_lsn() - confirmed_flush_lsn, bytes.",
    ["source", "slot"],
    registry=REGISTRY,
)
SLOT_WAL_STATUS = Gauge(
    "cdc_replication_slot_wal_status",
    "1 for the slot's current wal_status (reserved, extended, unreserved, lost), 0 for the others.",
    ["source", "slot", "status"],
    registry=REGISTRY,
)
SLOT_SAFE_WAL_SIZE = Gauge(
    "cdc_replication_slot_safe_wal_size_bytes",
    "WAL that can still be written before the slot is lost (safe_wal_size); +Inf without a limit, 0 once lost.",
    ["source", "slot"],
    registry=REGISTRY,
)
SLOT_SECONDS_UNTIL_LOST = Gauge(
    "cdc_replication_slot_seconds_until_lost",
    "Estimated seconds until the slot is lost: safe_wal_size / WAL rate; +Inf without a limit or WAL, 0 once lost.",
    ["source", "slot"],
    registry=REGISTRY,
)
SLOT_INACTIVE_SINCE = Gauge(
    "cdc_replication_slot_inactive_since_timestamp_seconds",
    "When the slot became inactive (epoch seconds; PostgreSQL 17+ inactive_since, absent elsewhere).",
    ["source", "slot"],
    registry=REGISTRY,
)
SLOT_INVALIDATED = Gauge(
    "cdc_replication_slot_invalidated",
    "1 with the reason when the slot is invalidated (PostgreSQL 17+ invalidation_reason, absent elsewhere).",
    ["source", "slot", "reason"],
    registry=REGISTRY,
)
SCHEMA_CHANGES = Counter(
    "cdc_schema_changes_total",
    "Source schema changes applied to a target table (added, widened, source_type, dropped_at_source, dropped,"
    " restored, renamed), counted at commit.",
    ["table", "change"],
    registry=REGISTRY,
)
PUBLICATION_HEALTHY = Gauge(
    "cdc_publication_healthy",
    "1 when the publication exists and holds exactly the captured, heartbeat and signal tables, all operations.",
    ["source", "publication"],
    registry=REGISTRY,
)
HEARTBEAT_AGE = Gauge(
    "cdc_heartbeat_age_seconds",
    "Source now() minus the source heartbeat row's ts as applied in the target: end-to-end lag, true when idle.",
    ["pipeline", "source"],
    registry=REGISTRY,
)

# --- Kafka Connect (pipeline.control.monitor)

CONNECTOR_STATE = Gauge(
    "cdc_connector_state",
    "1 for the connector's current state (RUNNING, PAUSED, STOPPED, FAILED, ...; ABSENT when not found).",
    ["source", "connector", "state"],
    registry=REGISTRY,
)
CONNECTOR_TASK_STATE = Gauge(
    "cdc_connector_task_state",
    "1 for each task's current state (UNASSIGNED, RUNNING, PAUSED, FAILED, RESTARTING).",
    ["source", "connector", "task", "state"],
    registry=REGISTRY,
)
CONNECTOR_TASK_RESTARTS = Counter(
    "cdc_connector_task_restarts_total",
    "FAILED connector tasks (or the connector itself) restarted by the monitor's auto-restart.",
    ["source", "connector"],
    registry=REGISTRY,
)

# --- pg_stat_replication_slots (pipeline.control.monitor)

SLOT_STAT_COUNTERS: dict[str, tuple[str, str]] = {
    # pg_stat_replication_slots column -> (exported counter name, meaning)
    "spill_txns": (
        "cdc_replication_slot_spill_txns_total",
        "Transactions spilled to disk by logical decoding of the slot (logical_decoding_work_mem exceeded).",
    ),
    "spill_count": ("cdc_replication_slot_spill_count_total", "Times decoding of the slot spilled to disk."),
    "spill_bytes": ("cdc_replication_slot_spill_bytes_total", "Bytes decoding of the slot spilled to disk."),
    "stream_txns": (
        "cdc_replication_slot_stream_txns_total",
        "In-progress transactions streamed to the slot's consumer (streaming enabled only).",
    ),
    "stream_count": ("cdc_replication_slot_stream_count_total", "Times in-progress changes were streamed."),
    "stream_bytes": ("cdc_replication_slot_stream_bytes_total", "Bytes of in-progress changes streamed."),
    "total_txns": ("cdc_replication_slot_decoded_txns_total", "Transactions decoded and sent through the slot."),
    "total_bytes": ("cdc_replication_slot_decoded_bytes_total", "Bytes of decoded changes sent through the slot."),
}
SLOT_STAT_LABELS = ("source", "slot")


class SlotStatsCollector(Collector):
    """Exports the cumulative ``pg_stat_replication_slots`` counters last read per slot.

    PostgreSQL owns these counters (they reset with ``pg_stat_reset_replication_slot`` or a
    crash, which Prometheus' ``rate()`` treats as a counter reset), so they are mirrored as
    read rather than incremented. :meth:`update` replaces one slot's values; :meth:`forget`
    drops them (slot gone, or the server has no such view: PostgreSQL < 14).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], dict[str, float]] = {}

    def update(self, source: str, slot: str, values: Mapping[str, float]) -> None:
        """Set the counters of ``(source, slot)`` from a ``column -> value`` mapping (unknown columns ignored)."""
        with self._lock:
            self._values[(source, slot)] = {k: float(v) for k, v in values.items() if k in SLOT_STAT_COUNTERS}

    def forget(self, source: str, slot: str) -> None:
        """Stop exporting the counters of ``(source, slot)``."""
        with self._lock:
            self._values.pop((source, slot), None)

    def describe(self) -> Iterable[Metric]:
        """The counter families, without samples."""
        for name, doc in SLOT_STAT_COUNTERS.values():
            yield CounterMetricFamily(name.removesuffix("_total"), doc, labels=SLOT_STAT_LABELS)

    def collect(self) -> Iterable[Metric]:
        """One counter family per ``pg_stat_replication_slots`` column, a sample per slot."""
        with self._lock:
            snapshot = {key: dict(vals) for key, vals in self._values.items()}
        for column, (name, doc) in SLOT_STAT_COUNTERS.items():
            family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=SLOT_STAT_LABELS)
            for (source, slot), vals in sorted(snapshot.items()):
                if column in vals:
                    family.add_metric([source, slot], vals[column])
            yield family


SLOT_STATS = SlotStatsCollector()
REGISTRY.register(SLOT_STATS)

# --- snapshot coordinator (pipeline.control.snapshot)

SNAPSHOT_SIGNALS = Counter(
    "cdc_snapshot_signals",
    "Debezium signals inserted into the source's signal table, by type (execute-snapshot, pause-snapshot...).",
    ["source", "type"],
    registry=REGISTRY,
)
SNAPSHOT_REQUESTS = Gauge(
    "cdc_snapshot_requests",
    "Snapshot requests in the source's durable queue, by state (queued, sent, running, completed, failed, stopped).",
    ["source", "state"],
    registry=REGISTRY,
)
SNAPSHOT_TABLE_STATE = Gauge(
    "cdc_snapshot_table_state",
    "1 for the table's state in its latest snapshot request (queued, running, paused, completed, empty, failed...).",
    ["source", "table", "state"],
    registry=REGISTRY,
)
SNAPSHOT_ROWS = Gauge(
    "cdc_snapshot_rows",
    "Rows of the table's latest snapshot: Debezium's total_rows_scanned once scanned, else snapshot reads applied.",
    ["source", "table"],
    registry=REGISTRY,
)
SNAPSHOT_PROGRESS = Gauge(
    "cdc_snapshot_progress_ratio",
    "Progress of the table's latest snapshot: rows / pg_class.reltuples while running (max 0.99), 1 once scanned.",
    ["source", "table"],
    registry=REGISTRY,
)
SNAPSHOT_DURATION = Gauge(
    "cdc_snapshot_duration_seconds",
    "Seconds the table's latest snapshot request has run (started to finished, or to now).",
    ["source", "table"],
    registry=REGISTRY,
)
SNAPSHOT_THROTTLED = Gauge(
    "cdc_snapshot_throttled",
    "1 while the coordinator holds the running incremental snapshot paused because of lag.",
    ["source"],
    registry=REGISTRY,
)
SNAPSHOT_THROTTLE_PAUSES = Counter(
    "cdc_snapshot_throttle_pauses",
    "Incremental snapshots paused by the lag throttle, by reason (wal_retained, consumer_lag).",
    ["source", "reason"],
    registry=REGISTRY,
)

# --- verifier and cutover (pipeline.control.verify)

VERIFY_ROWS = Gauge(
    "cdc_verify_rows",
    "Rows counted by the last verification, per table and side (source, target).",
    ["pipeline", "table", "side"],
    registry=REGISTRY,
)
VERIFY_CHUNKS = Gauge(
    "cdc_verify_chunks",
    "Key-range chunks compared by the last verification of the table.",
    ["pipeline", "table"],
    registry=REGISTRY,
)
VERIFY_MISMATCHED_CHUNKS = Gauge(
    "cdc_verify_mismatched_chunks",
    "Chunks whose row count or checksum differed in the last verification (confirmed, not in flight).",
    ["pipeline", "table"],
    registry=REGISTRY,
)
VERIFY_LAST_RUN = Gauge(
    "cdc_verify_last_run_timestamp_seconds",
    "When the table was last verified (epoch seconds).",
    ["pipeline", "table"],
    registry=REGISTRY,
)
VERIFY_OK = Gauge(
    "cdc_verify_ok",
    "1 when the table's last verification matched, 0 otherwise (mismatch, in flight, not verifiable).",
    ["pipeline", "table"],
    registry=REGISTRY,
)
CUTOVER_READY = Gauge(
    "cdc_cutover_ready",
    "1 while lag has stayed below the cutover threshold for the hold time and the last verification was clean.",
    ["pipeline"],
    registry=REGISTRY,
)
CUTOVER_LAG_GATE = Gauge(
    "cdc_cutover_lag_ok",
    "1 while the heartbeat lag is below cutover.max_lag_s (the lag half of the gate, before the hold time).",
    ["pipeline"],
    registry=REGISTRY,
)
CUTOVER_PHASE = Gauge(
    "cdc_cutover_phase",
    "1 for the phase the pipeline's cutover is in (idle, gate, fenced, drained, verified, sequences_synced,"
    " reverse_started, done, aborted, finished), 0 for the others; from the durable cutover state.",
    ["pipeline", "phase"],
    registry=REGISTRY,
)
CUTOVER_WRITE_PAUSE = Gauge(
    "cdc_cutover_write_pause_seconds",
    "Measured write pause of the last cutover: from the fence until the target was ready for writes (seconds).",
    ["pipeline"],
    registry=REGISTRY,
)
CUTOVER_PHASE_DURATION = Gauge(
    "cdc_cutover_phase_duration_seconds",
    "Seconds the last cutover spent in each phase.",
    ["pipeline", "phase"],
    registry=REGISTRY,
)


# --- bulk initial load (pipeline.control.bulkload.progress; exported by `cdc-pipeline load run`)

BULK_LOAD_ROWS = Counter(
    "cdc_bulk_load_rows",
    "Rows a bulk initial load copied into the target table so far.",
    ["pipeline", "table"],
    registry=REGISTRY,
)
BULK_LOAD_TABLE_ROWS = Gauge(
    "cdc_bulk_load_table_rows",
    "Rows the bulk load expects to copy into the target table (pg_class.reltuples of the source table).",
    ["pipeline", "table"],
    registry=REGISTRY,
)
BULK_LOAD_PROGRESS = Gauge(
    "cdc_bulk_load_progress_ratio",
    "Progress of the table's bulk load: rows copied / expected rows while copying (max 0.99), 1 once copied.",
    ["pipeline", "table"],
    registry=REGISTRY,
)
BULK_LOAD_RATE = Gauge(
    "cdc_bulk_load_rows_per_second",
    "Rows per second the pipeline's bulk load copies, averaged from its first copied row to now (or to the end).",
    ["pipeline"],
    registry=REGISTRY,
)

# --- data-plane backoff and control-plane lease (pipeline.dataplane.runner, pipeline.control.lease)

IN_BACKOFF = Gauge(
    "cdc_in_backoff",
    "1 while the worker is backing off a transient failure (consumer paused, offsets not moving).",
    ["pipeline"],
    registry=REGISTRY,
)
CONTROL_ACTIVE = Gauge(
    "cdc_control_active",
    "1 while this control-plane replica holds the lease and runs the control loops, 0 while it stands by.",
    ["lease", "replica"],
    registry=REGISTRY,
)
CONTROL_LEASE_ACQUIRED = Counter(
    "cdc_control_lease_acquired",
    "Times this control-plane replica became the active one.",
    ["lease", "replica"],
    registry=REGISTRY,
)

# --------------------------------------------------------------------------- series created at 0

WORKER_RETRY_KINDS = ("decode", "sink", "dlq", "assign")
"""The ``kind`` values of cdc_retries_total (pipeline.dataplane.runner retries these calls)."""


def precreate_worker_series(pipeline: str, error_classes: Iterable[str] = ()) -> None:
    """Export the worker's counters of ``pipeline`` at 0 before anything happens.

    A Prometheus counter child exists only from its first ``labels()`` call, and ``increase()``
    needs two samples: a series born at 1 hides the first dead letter or retry from rules and
    dashboards. This creates ``cdc_messages_consumed_total``, ``cdc_batches_total``, each
    ``cdc_retries_total{kind}`` of :data:`WORKER_RETRY_KINDS` and ``cdc_dlq_messages_total`` for
    each of ``error_classes`` (the exception class names a dead letter can carry), at 0. A class
    never seen before still starts at 1: the alert rules cover that case themselves.
    """
    MESSAGES_CONSUMED.labels(pipeline)
    BATCHES.labels(pipeline)
    for kind in WORKER_RETRY_KINDS:
        RETRIES.labels(pipeline, kind)
    for error_class in error_classes:
        DLQ_MESSAGES.labels(pipeline, error_class)


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One exported metric: ``name`` as scraped (counters with ``_total``), ``type``
    (counter, gauge or histogram), label names and the one-line meaning."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


def catalogue() -> list[MetricInfo]:
    """Every metric this module defines, sorted by name (for the docs and their sync test)."""
    found: list[MetricInfo] = []
    for value in list(globals().values()):
        if isinstance(value, MetricWrapperBase):
            kind = str(value._type)
            name = value._name + ("_total" if kind == "counter" else "")
            found.append(MetricInfo(name, kind, tuple(value._labelnames), value._documentation))
    for name, doc in SLOT_STAT_COUNTERS.values():
        found.append(MetricInfo(name, "counter", SLOT_STAT_LABELS, doc))
    return sorted(found, key=lambda m: m.name)


def series_names(info: MetricInfo) -> tuple[str, ...]:
    """Sample names a metric produces in PromQL (``_bucket``/``_sum``/``_count`` for histograms)."""
    if info.type == "histogram":
        return tuple(info.name + s for s in ("_bucket", "_sum", "_count"))
    return (info.name,)
