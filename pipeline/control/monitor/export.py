"""Turning the monitors' findings into the Prometheus series of :mod:`pipeline.core.metrics`: gauges set
from a slot report or a connector status, and series removed once what they describe is gone, so that
no stale value lingers on a dashboard.
"""

from __future__ import annotations

import contextlib
from typing import Any

from connectors.connect_client import ConnectorStatus
from pipeline.control.monitor.slot_model import WAL_STATUSES, SlotReport
from pipeline.core import metrics

CONNECTOR_STATES = ("UNASSIGNED", "RUNNING", "PAUSED", "STOPPED", "FAILED", "RESTARTING", "ABSENT")
"""Connector states of the Kafka Connect REST API, plus ``ABSENT`` (HTTP 404)."""

TASK_STATES = ("UNASSIGNED", "RUNNING", "PAUSED", "FAILED", "RESTARTING")
"""Task states of the Kafka Connect REST API."""


def remove_series(gauge: Any, *labels: str) -> None:
    """Drop one labelled series of ``gauge`` (a prometheus-client metric); absent series are fine."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


_SLOT_GAUGES = (
    metrics.SLOT_ACTIVE,
    metrics.SLOT_WAL_RETAINED,
    metrics.SLOT_BYTES_BEHIND,
    metrics.SLOT_SAFE_WAL_SIZE,
    metrics.SLOT_SECONDS_UNTIL_LOST,
    metrics.SLOT_INACTIVE_SINCE,
)


def export_slot_report(source: str, report: SlotReport, previous: SlotReport | None = None) -> None:
    """Set the slot gauges of ``source`` from ``report``; a missing slot's series are removed
    (only ``cdc_replication_slot_exists`` = 0 stays) so that no stale value lingers.
    ``previous`` (the last report) lets an invalidation reason that no longer holds be removed."""
    slot = report.slot_name
    if (
        previous is not None
        and previous.invalidation_reason
        and previous.invalidation_reason != report.invalidation_reason
    ):
        remove_series(metrics.SLOT_INVALIDATED, source, previous.slot_name, previous.invalidation_reason)
    metrics.SOURCE_WAL_POSITION.labels(source).set(report.current_lsn)
    metrics.SLOT_UNLIMITED_RETENTION.labels(source).set(1 if report.unlimited else 0)
    if report.wal_rate_bytes_per_s is not None:
        metrics.SOURCE_WAL_RATE.labels(source).set(report.wal_rate_bytes_per_s)
    metrics.SLOT_EXISTS.labels(source, slot).set(1 if report.exists else 0)
    if report.exists:
        _export_slot_state(source, report)
    else:
        _forget_slot(source, slot)


def _forget_slot(source: str, slot: str) -> None:
    for gauge in _SLOT_GAUGES:
        remove_series(gauge, source, slot)
    for status in WAL_STATUSES:
        remove_series(metrics.SLOT_WAL_STATUS, source, slot, status)
    metrics.SLOT_STATS.forget(source, slot)


def _export_slot_state(source: str, report: SlotReport) -> None:
    slot = report.slot_name
    metrics.SLOT_ACTIVE.labels(source, slot).set(1 if report.active else 0)
    _set_or_remove(metrics.SLOT_WAL_RETAINED, (source, slot), report.retained_bytes)
    _set_or_remove(metrics.SLOT_BYTES_BEHIND, (source, slot), report.behind_bytes)
    _set_or_remove(metrics.SLOT_SAFE_WAL_SIZE, (source, slot), report.safe_wal_size_bytes)
    metrics.SLOT_SECONDS_UNTIL_LOST.labels(source, slot).set(report.seconds_until_lost)
    for status in WAL_STATUSES:
        metrics.SLOT_WAL_STATUS.labels(source, slot, status).set(1 if report.wal_status == status else 0)
    if report.inactive_since is not None and not report.active:
        metrics.SLOT_INACTIVE_SINCE.labels(source, slot).set(report.inactive_since.timestamp())
    else:
        remove_series(metrics.SLOT_INACTIVE_SINCE, source, slot)
    if report.invalidation_reason:
        metrics.SLOT_INVALIDATED.labels(source, slot, report.invalidation_reason).set(1)


def _set_or_remove(gauge: Any, labels: tuple[str, ...], value: float | None) -> None:
    if value is None:
        remove_series(gauge, *labels)
    else:
        gauge.labels(*labels).set(value)


def export_connector_status(source: str, status: ConnectorStatus | None, connector: str) -> set[str]:
    """Set the state gauges of ``connector`` (``status`` None: ABSENT); returns the task ids exported."""
    state = "ABSENT" if status is None else status.state
    for known in CONNECTOR_STATES:
        metrics.CONNECTOR_STATE.labels(source, connector, known).set(1 if known == state else 0)
    if state not in CONNECTOR_STATES:
        metrics.CONNECTOR_STATE.labels(source, connector, state).set(1)
    tasks: set[str] = set()
    for task in status.tasks if status is not None else ():
        tid = str(task.id)
        tasks.add(tid)
        for known in TASK_STATES:
            metrics.CONNECTOR_TASK_STATE.labels(source, connector, tid, known).set(1 if task.state == known else 0)
    return tasks


def clear_connector_status(source: str, connector: str, tasks: set[str]) -> None:
    """Zero the connector's state gauges and drop the series of ``tasks`` (state unknown)."""
    for known in CONNECTOR_STATES:
        metrics.CONNECTOR_STATE.labels(source, connector, known).set(0)
    forget_tasks(source, connector, tasks)


def forget_tasks(source: str, connector: str, tasks: set[str]) -> None:
    """Drop every state series of the connector's task ids ``tasks`` (tasks that are gone)."""
    for tid in tasks:
        for known in TASK_STATES:
            remove_series(metrics.CONNECTOR_TASK_STATE, source, connector, tid, known)


def export_heartbeat_age(pipeline: str, source: str, age_s: float | None) -> None:
    """Set ``cdc_heartbeat_age_seconds`` (seconds) of ``pipeline``/``source``; None (no heartbeat
    applied yet) removes the series."""
    _set_or_remove(metrics.HEARTBEAT_AGE, (pipeline, source), age_s)
