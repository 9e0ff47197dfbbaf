"""``cdc-pipeline lag``: replication slots and consumer lag, as a table or ``--json``.

Slots (per source): existence, ``active``, ``wal_status``, WAL retained and bytes behind
(bytes), ``safe_wal_size`` (bytes), the WAL rate (bytes/s, from two samples
``--wal-rate-sample`` seconds apart) and the estimated seconds until the slot is lost, the
publication's health and each pipeline's heartbeat age (seconds) read from its target. See
:mod:`pipeline.control.monitor` for the definitions.

Consumer lag (per pipeline, per partition of its change topics): ``high watermark - next
offset``. The next offset is taken from the **target's** control table
``<target.control_schema>.offsets`` (the pipeline's source of truth, written in the same
transaction as the rows) when the target is reachable; only when it is not, from the offsets
the workers commit to Kafka (asynchronously, so possibly a little behind). A partition with
no stored offset is read by the runner from the beginning, so its lag counts from the low
watermark. The column ``from`` says which source each row used.

Exit code 0 when everything could be read, 1 when a source, target or Kafka could not (the
rest is still printed).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Annotated, Any

import psycopg
import sqlalchemy.exc
import typer
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # OffsetSpec: re-exported without __all__
    AdminClient,
    OffsetSpec,
)

from connectors.debezium import topic_pattern
from connectors.source_prep import check_publication, redactor
from connectors.source_prep import conninfo as source_conninfo
from pipeline.cli.common import ConfigOption, fail, load_or_exit, unreachable
from pipeline.control.monitor.heartbeat import heartbeat_target_table
from pipeline.control.monitor.slot_model import SlotReport, WalRateWindow, evaluate_slot, heartbeat_age_seconds
from pipeline.control.monitor.source_sql import connect_read_only, read_server_sample, view_columns
from pipeline.core.logs import kafka_logging
from pipeline.core.offsets import partition_lag
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import TransientSinkError
from sinks.factory import UnsupportedTargetError, make_target

TARGET_ERRORS = (TransientSinkError, UnsupportedTargetError, psycopg.Error, sqlalchemy.exc.SQLAlchemyError)
"""What reading a target may raise (unreachable, unsupported scheme, a driver error)."""

PipelineOption = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="Only this pipeline (and its source); all by default.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
RateOption = Annotated[
    float,
    typer.Option("--wal-rate-sample", min=0.0, help="Seconds between the two WAL samples of the rate (0: no rate)."),
]


@dataclass
class SlotLine:
    """One source's slot: ``report`` None when the source could not be read (``error`` says why)."""

    source: str
    slot: str
    report: SlotReport | None = None
    publication: str | None = None
    publication_ok: bool | None = None
    heartbeat_age_s: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "source": self.source,
            "slot": self.slot,
            **(self.report.to_dict() if self.report is not None else {}),
            "publication": self.publication,
            "publication_ok": self.publication_ok,
            "heartbeat_age_s": self.heartbeat_age_s,
            "error": self.error,
        }


@dataclass
class PartitionLagLine:
    """Lag of one partition of a pipeline's change topics (offsets are Kafka offsets)."""

    pipeline: str
    group: str
    topic: str
    partition: int
    low: int
    high: int
    target_offset: int | None
    kafka_offset: int | None
    offsets_from: str  # "target", "kafka" or "none"
    lag: int


@dataclass
class LagReport:
    """Everything ``lag`` prints; ``errors`` lists what could not be read (messages redacted)."""

    slots: list[SlotLine] = field(default_factory=list)
    partitions: list[PartitionLagLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "slots": [s.to_dict() for s in self.slots],
            "consumer_lag": [asdict(p) for p in self.partitions],
            "errors": self.errors,
        }


# --------------------------------------------------------------------------- slots


def collect_slot(settings: Settings, source: SourceSettings, rate_sample_s: float = 1.0) -> SlotLine:
    """Read ``source``'s slot (twice, ``rate_sample_s`` seconds apart, for the WAL rate), its
    publication and its pipelines' heartbeat ages. Errors are returned in ``error``, redacted."""
    line = SlotLine(source.name, source.resolved_slot_name, publication=source.resolved_publication_name)
    red = redactor(source)
    try:
        with connect_read_only(source_conninfo(source, "cdc-pipeline lag")) as conn:
            slot_cols = view_columns(conn, "pg_replication_slots")
            stat_cols = view_columns(conn, "pg_stat_replication_slots")
            window = WalRateWindow(max(rate_sample_s, 1.0) * 10)
            sample = read_server_sample(conn, line.slot, slot_cols, stat_cols)
            window.add(time.monotonic(), sample.current_lsn)
            if rate_sample_s > 0:
                time.sleep(rate_sample_s)
                sample = read_server_sample(conn, line.slot, slot_cols, stat_cols)
                window.add(time.monotonic(), sample.current_lsn)
            line.report = evaluate_slot(line.slot, sample, window.rate())
            pub = check_publication(source, conn)
            line.publication_ok = pub.ok
            if not pub.ok:
                line.error = f"publication: {pub.detail}"
    except psycopg.Error as exc:
        line.error = red(f"{type(exc).__name__}: {str(exc).strip()}")
        return line
    for pipe in settings.pipelines:
        if pipe.source != source.name:
            continue
        try:
            ts = read_target_heartbeat(source, pipe)
        except TARGET_ERRORS as exc:
            line.heartbeat_age_s[pipe.name] = None
            line.error = (line.error + "; " if line.error else "") + f"heartbeat of {pipe.name}: {exc}".strip()
            continue
        line.heartbeat_age_s[pipe.name] = None if ts is None else heartbeat_age_seconds(ts, sample.server_now)
    return line


# --------------------------------------------------------------------------- consumer lag


def change_topics(all_topics: Sequence[str], source: SourceSettings, pipeline: PipelineSettings) -> list[str]:
    """The topics ``pipeline``'s workers subscribe to (the source's ``^<prefix>\\..+`` pattern,
    :func:`connectors.debezium.topic_pattern`), without internal topics and the DLQ topic."""
    pattern = re.compile(topic_pattern(source))
    dlq = pipeline.resolved_dlq_topic
    return sorted(t for t in all_topics if pattern.match(t) and t != dlq and not t.startswith("__"))


def read_target_heartbeat(source: SourceSettings, pipeline: PipelineSettings) -> datetime | None:
    """The heartbeat ``ts`` of ``source`` applied in ``pipeline``'s target (any backend), None
    before the first one. Raises one of :data:`TARGET_ERRORS`."""
    target = make_target(pipeline, purpose="lag")
    try:
        return target.read_heartbeat(heartbeat_target_table(source, pipeline), source.name)
    finally:
        target.close()


def target_offsets(pipeline: PipelineSettings) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> next offset`` stored in the target (any backend) for the
    pipeline's group; empty for a group that stored none. Raises one of :data:`TARGET_ERRORS`."""
    target = make_target(pipeline, purpose="lag")
    try:
        return target.group_offsets(pipeline.resolved_consumer_group)
    finally:
        target.close()


def kafka_offsets(admin: Any, group: str, timeout_s: float) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> offset`` committed to Kafka by ``group`` (none: empty).

    Raises KafkaException when Kafka cannot answer.
    """
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s)
    result = futures[group].result()
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or [] if tp.offset >= 0}


def watermarks(
    admin: Any, partitions: list[TopicPartition], timeout_s: float
) -> dict[tuple[str, int], tuple[int, int]]:
    """``(topic, partition) -> (low, high)`` watermarks via ``AdminClient.list_offsets``."""
    if not partitions:
        return {}
    out: dict[tuple[str, int], list[int]] = {}
    specs = (OffsetSpec.earliest(), OffsetSpec.latest())  # type: ignore[no-untyped-call]
    for spec in specs:
        futures = admin.list_offsets(dict.fromkeys(partitions, spec), request_timeout=timeout_s)
        for tp, fut in futures.items():
            out.setdefault((tp.topic, tp.partition), []).append(int(fut.result().offset))
    return {k: (v[0], v[1]) for k, v in out.items()}


def collect_consumer_lag(
    settings: Settings, pipelines: Sequence[PipelineSettings], admin: Any = None, timeout_s: float = 10.0
) -> tuple[list[PartitionLagLine], list[str]]:
    """Per-partition lag of ``pipelines`` (see the module doc for which offsets are used);
    returns the lines and the errors met (Kafka unreachable, target unreachable...)."""
    errors: list[str] = []
    conf: dict[str, str | int | float | bool] = {**settings.kafka.client_config()}
    admin = admin or AdminClient(kafka_logging(conf))
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return [], [f"kafka: {unreachable('Kafka', settings.kafka.bootstrap_servers, exc)}"]
    lines: list[PartitionLagLine] = []
    for pipe in pipelines:
        source = settings.source(pipe.source)
        group = pipe.resolved_consumer_group
        topics = change_topics(list(metadata.topics), source, pipe)
        parts = [TopicPartition(t, p) for t in topics for p in sorted(metadata.topics[t].partitions)]
        try:
            marks = watermarks(admin, parts, timeout_s)
        except KafkaException as exc:
            errors.append(f"{pipe.name}: kafka watermarks: {exc}")
            continue
        stored: dict[tuple[str, int], int] | None
        try:
            stored = target_offsets(pipe)
        except TARGET_ERRORS as exc:
            stored = None
            errors.append(f"{pipe.name}: target offsets unreadable, using Kafka's: {type(exc).__name__}: {exc}")
        committed: dict[tuple[str, int], int] = {}
        try:
            committed = kafka_offsets(admin, group, timeout_s)
        except KafkaException as exc:
            errors.append(f"{pipe.name}: kafka group offsets: {exc}")
        for tp in parts:
            key = (tp.topic, tp.partition)
            low, high = marks[key]
            mine = None if stored is None else stored.get(key)
            kafka = committed.get(key)
            if stored is not None:
                used, origin = mine, "target" if mine is not None else "none"
            else:
                used, origin = kafka, "kafka" if kafka is not None else "none"
            lines.append(
                PartitionLagLine(
                    pipe.name,
                    group,
                    tp.topic,
                    tp.partition,
                    low,
                    high,
                    mine,
                    kafka,
                    origin,
                    partition_lag(low, high, used),
                )
            )
    return lines, errors


def collect(
    settings: Settings, pipeline: str | None = None, rate_sample_s: float = 1.0, admin: Any = None
) -> LagReport:
    """Slots of the chosen sources and consumer lag of the chosen pipelines.

    ``pipeline`` None: every source and pipeline. Raises KeyError for an unknown pipeline.
    """
    pipes = [settings.pipeline(pipeline)] if pipeline is not None else list(settings.pipelines)
    source_names = {p.source for p in pipes} if pipeline is not None else {s.name for s in settings.sources}
    report = LagReport()
    for src in settings.sources:
        if src.name in source_names:
            line = collect_slot(settings, src, rate_sample_s)
            report.slots.append(line)
            if line.error:
                report.errors.append(f"source {src.name}: {line.error}")
    if pipes:
        report.partitions, errors = collect_consumer_lag(settings, pipes, admin)
        report.errors.extend(errors)
    return report


# --------------------------------------------------------------------------- output


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "unlimited"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "never"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def render(report: LagReport) -> str:
    """The two tables (slots, consumer lag) and the errors, as text."""
    slot_rows: list[list[str]] = []
    for s in report.slots:
        r = s.report
        hb = ", ".join(f"{p}={_seconds(a)}" for p, a in s.heartbeat_age_s.items()) or "-"
        if r is None:
            slot_rows.append([s.source, s.slot, "?", "?", "-", "-", "-", "-", "-", "?", hb])
            continue
        rate = "-" if r.wal_rate_bytes_per_s is None else _bytes(r.wal_rate_bytes_per_s) + "/s"
        slot_rows.append(
            [
                s.source,
                s.slot,
                ("yes" if r.active else "no") if r.exists else "MISSING",
                r.wal_status or "-",
                _bytes(r.retained_bytes),
                _bytes(r.behind_bytes),
                _bytes(r.safe_wal_size_bytes),
                rate,
                _seconds(r.seconds_until_lost),
                "ok" if s.publication_ok else ("?" if s.publication_ok is None else "BAD"),
                hb,
            ]
        )
    out = [
        "Replication slots",
        _table(
            [
                "SOURCE",
                "SLOT",
                "ACTIVE",
                "WAL_STATUS",
                "RETAINED",
                "BEHIND",
                "SAFE_WAL",
                "WAL_RATE",
                "UNTIL_LOST",
                "PUBLICATION",
                "HEARTBEAT_AGE",
            ],
            slot_rows,
        ),
        "",
        "Consumer lag",
        _table(
            ["PIPELINE", "GROUP", "TOPIC", "PARTITION", "LOW", "HIGH", "NEXT_OFFSET", "FROM", "LAG"],
            [
                [
                    p.pipeline,
                    p.group,
                    p.topic,
                    str(p.partition),
                    str(p.low),
                    str(p.high),
                    "-"
                    if (p.target_offset if p.offsets_from != "kafka" else p.kafka_offset) is None
                    else str(p.target_offset if p.offsets_from != "kafka" else p.kafka_offset),
                    p.offsets_from,
                    str(p.lag),
                ]
                for p in report.partitions
            ],
        ),
    ]
    if report.errors:
        out += ["", "Errors", *(f"  {e}" for e in report.errors)]
    return "\n".join(out)


def lag(
    config: ConfigOption = None,
    pipeline: PipelineOption = None,
    as_json: JsonOption = False,
    wal_rate_sample: RateOption = 1.0,
) -> None:
    """Print replication slots (WAL retained, bytes behind, wal_status, time to loss, heartbeat
    age) and consumer lag per partition; exit 1 when something could not be read."""
    settings = load_or_exit(config)
    try:
        report = collect(settings, pipeline, wal_rate_sample)
    except KeyError as exc:
        fail([f"--pipeline: {exc.args[0]} (defined: {', '.join(p.name for p in settings.pipelines) or 'none'})"])
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else render(report))
    raise typer.Exit(1 if report.errors else 0)
