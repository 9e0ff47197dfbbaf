"""The wait before (and between) comparisons until the pipeline has applied everything the
source had committed when the wait began: a heartbeat written on the source must show in the
target (:meth:`sinks.base.Target.read_heartbeat`), then the offsets stored in the target
(:meth:`sinks.base.Target.group_offsets`) must reach the Kafka high watermarks of every change
topic *read once, after the heartbeat was seen* (under load the live watermarks move on forever;
the ones read then already cover every change committed before the heartbeat). What is still
behind is reported, never a mismatch."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime

from pipeline.control.monitor.heartbeat import heartbeat_target_table
from pipeline.control.snapshot.kafka import ConsumerLagProbe
from pipeline.control.snapshot.lag import lag_per_partition
from pipeline.control.snapshot.wiring import topic_regex
from pipeline.control.verify.model import CatchUp
from pipeline.control.verify.source import connect_source, write_heartbeat
from pipeline.core.events import TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import Target, TopicPartition


def wait_for_heartbeat(read: Callable[[], datetime | None], written: datetime, deadline: float, sleep_s: float) -> bool:
    """Poll ``read`` (the heartbeat time the target holds) every ``sleep_s`` seconds until it
    reaches ``written`` (True) or ``time.monotonic()`` passes ``deadline`` (False)."""
    while True:
        seen = read()
        if seen is not None and seen >= written:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(sleep_s)


def wait_pending(
    read_pending: Callable[[], dict[str, int]],
    applied: bool,
    written: datetime,
    hb_target: TableId,
    start: float,
    max_wait_s: float,
    sleep_s: float,
) -> CatchUp:
    """Poll ``read_pending`` (messages not yet applied, by topic; only counts > 0) every
    ``sleep_s`` seconds until nothing is pending and the heartbeat ``written`` was ``applied``
    to ``hb_target``, or ``start + max_wait_s`` (monotonic seconds) passes; the outcome."""
    deadline = start + max_wait_s
    while True:
        pending = read_pending()
        if (not pending and applied) or time.monotonic() >= deadline:
            break
        time.sleep(sleep_s)
    parts = []
    if not applied:
        parts.append(f"heartbeat {written.isoformat()} not applied to {hb_target} within {max_wait_s:.0f} s")
    if pending:
        parts.append(f"{sum(pending.values())} message(s) not applied")
    return CatchUp(applied and not pending, applied, time.monotonic() - start, pending, "; ".join(parts))


def pending_by_topic(marks: Mapping[TopicPartition, tuple[int, int]], target: Target, group: str) -> dict[str, int]:
    """Messages not yet applied per change topic (only counts > 0): the high watermarks
    ``marks`` (``(topic, partition) -> (low, high)``) minus the next offsets ``group`` stored in
    ``target``. Raises TransientSinkError."""
    stored = target.group_offsets(group)
    pending: dict[str, int] = {}
    for (topic, _), lag in lag_per_partition(marks, stored).items():
        if lag > 0:
            pending[topic] = pending.get(topic, 0) + lag
    return pending


def wait_caught_up(
    settings: Settings,
    pipeline: PipelineSettings,
    target: Target,
    max_wait_s: float,
    probe: ConsumerLagProbe | None = None,
    sleep_s: float = 0.5,
) -> CatchUp:
    """Wait (at most ``max_wait_s`` seconds) until ``pipeline`` has applied into ``target``
    everything the source had committed when this was called (see the module docstring): the
    heartbeat is written first, so every source read finished before the call is covered.
    ``probe`` (watermarks only) defaults to one of its own, closed afterwards. Never raises for
    lag: the outcome says what is still behind. Raises psycopg.Error when the source is
    unreachable, TransientSinkError when the target is."""
    source = settings.source(pipeline.source)
    start = time.monotonic()
    with connect_source(source, "verify heartbeat", 30) as sconn:
        written = write_heartbeat(sconn, source)
    hb_target = heartbeat_target_table(source, pipeline)
    applied = wait_for_heartbeat(
        lambda: target.read_heartbeat(hb_target, source.name), written, start + max_wait_s, sleep_s
    )
    own = probe is None
    lag_probe = probe or ConsumerLagProbe(settings.kafka.client_config(), topic_regex(source), [])
    group = pipeline.resolved_consumer_group
    try:
        marks = lag_probe.watermarks()  # read once, after the heartbeat was seen (or the wait ran out)
        return wait_pending(
            lambda: pending_by_topic(marks, target, group), applied, written, hb_target, start, max_wait_s, sleep_s
        )
    finally:
        if own:
            lag_probe.close()
