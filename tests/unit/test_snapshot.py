"""Pure logic of the snapshot coordinator: signal JSON, key-range filters, notifications and the
request state machine, throttle hysteresis, include-list matching, lag arithmetic, metrics."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from pipeline.control.snapshot.kafka import ConsumerLagProbe
from pipeline.control.snapshot.lag import (
    UNKNOWN_NO_OFFSETS,
    ConsumerLag,
    LagReading,
    Throttle,
    ThrottleAction,
    lag_per_partition,
    lag_reader,
)
from pipeline.control.snapshot.loop import SnapshotCoordinator
from pipeline.control.snapshot.model import (
    Condition,
    Notification,
    RequestState,
    SnapshotKind,
    SnapshotRequest,
    SnapshotSettings,
    TableProgress,
    TableState,
)
from pipeline.control.snapshot.notifications import apply_notification, notification_matches, parse_notification
from pipeline.control.snapshot.progress import export_snapshot_metrics
from pipeline.control.snapshot.signals import (
    SIGNAL_DATA_MAX,
    captured_by_include_list,
    execute_snapshot_data,
    key_range_filters,
    merge_ranges,
    split_include_list,
    stop_snapshot_data,
)
from pipeline.control.snapshot.wiring import pipeline_offsets, topic_regex
from pipeline.core import metrics
from pipeline.core.batch import ReducedBatch
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from sinks.base import TransientSinkError
from sinks.factory import make_target

RID = uuid.UUID("c0dfd0ad-d023-407d-be30-f3a3fa0a2f46")

# A notification exactly as the sink channel wrote it on the local stack (Debezium 3.6.3).
REAL_IN_PROGRESS = (
    b'{"schema":{"type":"struct","fields":[],"optional":false,"name":"io.debezium.connector.common.Notification"},'
    b'"payload":{"id":"c0dfd0ad-d023-407d-be30-f3a3fa0a2f46","type":"IN_PROGRESS",'
    b'"aggregate_type":"Incremental Snapshot","additional_data":{"current_collection_in_progress":"public.items",'
    b'"connector_name":"s_exp","maximum_key":"2200","last_processed_key":"600","data_collections":"public.items"},'
    b'"timestamp":1795287145633}}'
)


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: object) -> str:
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def request(**kw: object) -> SnapshotRequest:
    base: dict[str, object] = {
        "id": RID,
        "source": "s",
        "seq": 1,
        "kind": SnapshotKind.INCREMENTAL,
        "origin": "cli",
        "tables": ("public.items", "public.other"),
        "state": RequestState.SENT,
        "sent_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    base.update(kw)
    return SnapshotRequest(**base)  # type: ignore[arg-type]


def note(kind: str, ts: int, **data: str) -> Notification:
    return Notification(str(RID), kind, "Incremental Snapshot", dict(data), ts)


# --------------------------------------------------------------------------- signals


def test_execute_snapshot_data_shape() -> None:
    text = execute_snapshot_data(
        ["public.items", "Odd Schema.T"],
        SnapshotKind.INCREMENTAL,
        [Condition("public.items", '("id") > (10)')],
        surrogate_key="id",
    )
    assert json.loads(text) == {
        "data-collections": ["public.items", '"Odd Schema".T'],
        "type": "incremental",
        "additional-conditions": [{"data-collection": "(?-i)public\\.items", "filter": '("id") > (10)'}],
        "surrogate-key": "id",
    }
    assert json.loads(execute_snapshot_data(["public.items"], SnapshotKind.BLOCKING)) == {
        "data-collections": ["public.items"],
        "type": "blocking",
    }


def test_execute_snapshot_data_rejects_bad_requests() -> None:
    with pytest.raises(ValueError, match="at least one table"):
        execute_snapshot_data([])
    with pytest.raises(ValueError, match="not requested"):
        execute_snapshot_data(["public.a"], conditions=[Condition("public.b", "x > 1")])
    with pytest.raises(ValueError, match=str(SIGNAL_DATA_MAX)):
        execute_snapshot_data(["public.a"], conditions=[Condition("public.a", "x > 1 OR " * 300 + "true")])


def test_stop_snapshot_data() -> None:
    assert json.loads(stop_snapshot_data(SnapshotKind.INCREMENTAL)) == {"type": "incremental"}
    assert json.loads(stop_snapshot_data(SnapshotKind.INCREMENTAL, ["public.a"])) == {
        "type": "incremental",
        "data-collections": ["public.a"],
    }


# --------------------------------------------------------------------------- key-range filters


def test_merge_ranges_joins_adjacent_chunks_only() -> None:
    ranges = [(None, (10,)), ((10,), (20,)), ((30,), (40,)), ((40,), None)]
    assert merge_ranges(ranges) == [(None, (20,)), ((30,), None)]


def test_key_range_filters_single_and_composite_keys() -> None:
    assert key_range_filters(["id"], [((10,), (20,))], ident, literal) == ['(("id") > (10) AND ("id") <= (20))']
    assert key_range_filters(["id"], [(None, (5,)), ((50,), None)], ident, literal) == [
        '(("id") <= (5)) OR (("id") > (50))'
    ]
    assert key_range_filters(["a", "b"], [(("x", 1), ("y", 2))], ident, literal) == [
        '(("a", "b") > (\'x\', 1) AND ("a", "b") <= (\'y\', 2))'
    ]
    assert key_range_filters(["id"], [(None, None)], ident, literal) == [None]


def test_key_range_filters_split_to_fit() -> None:
    ranges = [((i * 100,), (i * 100 + 10,)) for i in range(60)]
    filters = key_range_filters(["id"], ranges, ident, literal, max_length=300)
    assert len(filters) > 1
    assert all(f is not None and len(f) <= 300 for f in filters)
    joined = " OR ".join(f for f in filters if f is not None)
    assert all(f'("id") > ({i * 100})' in joined for i in range(60))


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True))
def test_filters_cover_exactly_the_ranges(bounds: list[int]) -> None:
    bounds.sort()
    ranges = [((b,), (b + 1,)) for b in bounds]
    filters = key_range_filters(["id"], ranges, ident, literal, max_length=200)
    covered = set()
    for f in filters:
        assert f is not None
        for part in f.split(" OR "):
            low = int(part.split("> (")[1].split(")")[0])
            high = int(part.split("<= (")[1].split(")")[0])
            covered |= set(range(low + 1, high + 1))
    assert covered == {b + 1 for b in bounds}


# --------------------------------------------------------------------------- notifications


def test_parse_real_notification() -> None:
    n = parse_notification(REAL_IN_PROGRESS)
    assert n == Notification(
        str(RID),
        "IN_PROGRESS",
        "Incremental Snapshot",
        {
            "current_collection_in_progress": "public.items",
            "connector_name": "s_exp",
            "maximum_key": "2200",
            "last_processed_key": "600",
            "data_collections": "public.items",
        },
        1795287145633,
    )
    assert n.collections("data_collections") == ["public.items"]


@pytest.mark.parametrize("value", [None, b"", b"not json", b"[]", b'{"payload": {"type": "X"}}'])
def test_parse_notification_ignores_other_shapes(value: bytes | None) -> None:
    assert parse_notification(value) is None


def test_matching_by_correlation_id_and_blocking_by_time() -> None:
    r = request()
    assert notification_matches(r, note("STARTED", 1))
    assert not notification_matches(r, Notification(str(uuid.uuid4()), "STARTED", "Incremental Snapshot", {}, 1))
    blocking = request(kind=SnapshotKind.BLOCKING)
    sent_ms = int(blocking.sent_at.timestamp() * 1000)  # type: ignore[union-attr]
    assert notification_matches(blocking, Notification("x", "COMPLETED", "Initial Snapshot", {}, sent_ms + 10))
    assert not notification_matches(blocking, Notification("x", "COMPLETED", "Initial Snapshot", {}, sent_ms - 60000))
    assert not notification_matches(blocking, note("COMPLETED", sent_ms + 10))


def run(r: SnapshotRequest, notes: list[Notification]) -> SnapshotRequest:
    for n in notes:
        u = apply_notification(r, n)
        if u is None:
            continue
        r = SnapshotRequest(
            **{
                **{f: getattr(r, f) for f in SnapshotRequest.__dataclass_fields__},
                "state": u.state,
                "progress": u.progress,
                "detail": u.detail,
                "last_notification_ms": u.last_notification_ms,
                "paused_by": None if u.clear_pause else r.paused_by,
            }
        )
    return r


HAPPY = [
    note("STARTED", 100, data_collections="public.items,public.other"),
    note(
        "IN_PROGRESS",
        101,
        current_collection_in_progress="public.items",
        last_processed_key="600",
        maximum_key="2200",
    ),
    note("TABLE_SCAN_COMPLETED", 102, scanned_collection="public.items", total_rows_scanned="2100", status="SUCCEEDED"),
    note("TABLE_SCAN_COMPLETED", 103, scanned_collection="public.other", total_rows_scanned="0", status="EMPTY"),
    note("COMPLETED", 103),
]


def test_happy_path() -> None:
    r = run(request(), HAPPY[:2])
    assert r.state is RequestState.RUNNING
    assert r.table_progress("public.items") == TableProgress(TableState.RUNNING, "600", "2200")
    assert r.table_progress("public.other").state is TableState.QUEUED
    done = run(request(), HAPPY)
    assert done.state is RequestState.COMPLETED
    assert done.table_progress("public.items").rows_scanned == 2100
    assert done.table_progress("public.other").state is TableState.EMPTY


def test_started_moves_sent_to_running_and_reports_started() -> None:
    u = apply_notification(request(), HAPPY[0])
    assert u is not None
    assert u.state is RequestState.RUNNING
    assert u.started


def test_replays_change_nothing() -> None:
    done = run(request(), HAPPY)
    assert run(done, HAPPY) == done  # terminal requests are immune
    mid = run(request(), HAPPY[:3])
    assert run(mid, HAPPY[:3]) == mid  # re-applying what was seen is idempotent
    assert apply_notification(mid, note("IN_PROGRESS", 50, current_collection_in_progress="public.items")) is None


@given(st.integers(0, len(HAPPY)))
def test_a_restart_at_any_point_converges(cut: int) -> None:
    """A coordinator that dies after ``cut`` notifications and re-reads them all ends the same."""
    first = run(request(), HAPPY[:cut])
    assert run(first, HAPPY) == run(request(), HAPPY)


def test_failed_scan_fails_the_request() -> None:
    notes = [
        HAPPY[0],
        note("TABLE_SCAN_COMPLETED", 101, scanned_collection="public.items", status="NO_PRIMARY_KEY"),
        note("TABLE_SCAN_COMPLETED", 102, scanned_collection="public.other", status="SUCCEEDED"),
        note("COMPLETED", 103),
    ]
    r = run(request(), notes)
    assert r.state is RequestState.FAILED
    assert r.detail == "public.items: NO_PRIMARY_KEY"


def test_pause_resume_and_abort() -> None:
    r = run(request(paused_by="throttle"), HAPPY[:2])
    assert r.table_progress("public.items").state is TableState.PAUSED  # paused by us: shown paused
    r = run(request(), [*HAPPY[:2], note("PAUSED", 102)])
    assert r.table_progress("public.items").state is TableState.PAUSED
    r = run(r, [note("RESUMED", 103)])
    assert r.table_progress("public.items").state is TableState.RUNNING
    stopped = run(request(stop_requested=True), [*HAPPY[:2], note("ABORTED", 110, data_collections="")])
    assert stopped.state is RequestState.STOPPED
    assert {p.state for p in stopped.progress.values()} == {TableState.STOPPED}


# --------------------------------------------------------------------------- throttle


def test_throttle_hysteresis() -> None:
    t = Throttle(max_wal_retained_bytes=1000, max_consumer_lag=100, resume_ratio=0.5)
    assert t.decide(LagReading(10, 10), paused_by_throttle=False) is ThrottleAction.NONE
    assert t.decide(LagReading(10, 101), paused_by_throttle=False) is ThrottleAction.PAUSE
    assert t.reasons(LagReading(2000, 101)) == ["wal_retained", "consumer_lag"]
    assert t.decide(LagReading(10, 101), paused_by_throttle=False, paused_by_user=True) is ThrottleAction.NONE
    assert t.decide(LagReading(10, 60), paused_by_throttle=True) is ThrottleAction.NONE  # below limit, above 50 %
    assert t.decide(LagReading(10, 49), paused_by_throttle=True) is ThrottleAction.RESUME
    assert t.decide(LagReading(None, 0), paused_by_throttle=True) is ThrottleAction.NONE  # unknown: stay paused
    assert t.decide(LagReading(None, None), paused_by_throttle=False) is ThrottleAction.NONE


def test_throttle_with_one_check_disabled() -> None:
    t = Throttle(max_wal_retained_bytes=None, max_consumer_lag=100)
    assert t.decide(LagReading(None, 500), paused_by_throttle=False) is ThrottleAction.PAUSE
    assert t.decide(LagReading(None, 0), paused_by_throttle=True) is ThrottleAction.RESUME
    with pytest.raises(ValueError, match="resume_ratio"):
        Throttle(1, 1, resume_ratio=0)


# --------------------------------------------------------------------------- include list, lag


def test_captured_by_include_list() -> None:
    include = "(?-i)public\\.items,(?-i)cdc\\.heartbeat,inv\\..*,(?-i)a\\,b\\.c"
    assert split_include_list(include) == ["(?-i)public\\.items", "(?-i)cdc\\.heartbeat", "inv\\..*", "(?-i)a\\,b\\.c"]
    tables = ["public.items", "public.Items", "INV.x", "public.other", "a,b.c"]
    assert captured_by_include_list(include, tables) == {"public.items", "INV.x", "a,b.c"}


def test_lag_per_partition() -> None:
    marks = {("t", 0): (0, 10), ("t", 1): (5, 8), ("u", 0): (0, 0)}
    assert lag_per_partition(marks, {("t", 0): 4, ("t", 1): 2}) == {("t", 0): 6, ("t", 1): 3, ("u", 0): 0}


# --------------------------------------------------------------------------- metrics


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_export_snapshot_metrics() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    done = run(request(source="msrc", started_at=started, tables=("public.items",)), [HAPPY[0], *HAPPY[2:]])
    running = run(
        request(id=uuid.uuid4(), seq=2, source="msrc", started_at=started, tables=("public.other",)),
        [note("IN_PROGRESS", 1, current_collection_in_progress="public.other")],
    )
    queued = request(id=uuid.uuid4(), seq=3, source="msrc", tables=("public.q",), state=RequestState.QUEUED)
    export_snapshot_metrics(
        "msrc",
        [done, running, queued],
        {"public.other": 200.0},
        {"public.other": 50.0},
        started + timedelta(seconds=30),
        throttled=True,
    )
    assert sample("cdc_snapshot_requests", source="msrc", state="completed") == 1
    assert sample("cdc_snapshot_requests", source="msrc", state="queued") == 1
    assert sample("cdc_snapshot_table_state", source="msrc", table="public.items", state="completed") == 1
    assert sample("cdc_snapshot_table_state", source="msrc", table="public.items", state="running") == 0
    assert sample("cdc_snapshot_table_state", source="msrc", table="public.other", state="running") == 1
    assert sample("cdc_snapshot_rows", source="msrc", table="public.items") == 2100
    assert sample("cdc_snapshot_rows", source="msrc", table="public.other") == 50
    assert sample("cdc_snapshot_progress_ratio", source="msrc", table="public.items") == 1.0
    assert sample("cdc_snapshot_progress_ratio", source="msrc", table="public.other") == 0.25
    assert sample("cdc_snapshot_progress_ratio", source="msrc", table="public.q") == 0.0
    assert sample("cdc_snapshot_duration_seconds", source="msrc", table="public.other") == 30
    assert sample("cdc_snapshot_throttled", source="msrc") == 1


# --------------------------------------------------------------------------- the coordinator's poll (fakes)


class FakeQueue:
    """The queue methods a poll uses, in memory."""

    def __init__(self, inflight: SnapshotRequest | None) -> None:
        self.inflight = inflight
        self.calls: list[str] = []

    def in_flight(self) -> SnapshotRequest | None:
        return self.inflight

    def pause(self, by: str = "user") -> SnapshotRequest:
        self.calls.append(f"pause:{by}")
        assert self.inflight is not None
        self.inflight = request(state=RequestState.RUNNING, paused_by=by)
        return self.inflight

    def resume(self, by: str | None = None) -> SnapshotRequest:
        self.calls.append(f"resume:{by}")
        self.inflight = request(state=RequestState.RUNNING)
        return self.inflight

    def send_next(self) -> None:
        self.calls.append("send")

    def close(self) -> None:
        self.calls.append("close")


class BrokenConnect:
    def get_config(self, name: str) -> dict[str, str] | None:
        raise ConnectionError("Connect is down")

    def status(self, name: str) -> object:
        raise AssertionError("not reached")


def coordinator(q: FakeQueue, readings: list[LagReading]) -> SnapshotCoordinator:
    src = SourceSettings(name="fake", database="d", user="u", tables=["public.items"])
    c = SnapshotCoordinator(
        src,
        q,  # type: ignore[arg-type]
        None,
        config=SnapshotSettings(max_consumer_lag=100, max_wal_retained_bytes=None, resume_ratio=0.5),
        connect=BrokenConnect(),
        lag=lambda: readings.pop(0),
    )
    c.is_leader = lambda: True  # type: ignore[method-assign]
    c._export = lambda: None  # type: ignore[method-assign]
    return c


def test_poll_throttles_and_a_failing_step_does_not_stop_the_others() -> None:
    q = FakeQueue(request(state=RequestState.RUNNING))
    c = coordinator(q, [LagReading(None, 500), LagReading(None, 80), LagReading(None, 10)])
    c.poll_once()  # Connect is down (auto-snapshot fails) but the lag still pauses
    assert q.calls == ["pause:throttle", "send"]
    assert not c.healthy and c.last_error is not None and "auto_snapshot" in c.last_error
    before = sample("cdc_monitor_poll_errors_total", monitor="snapshot", source="fake", check="auto_snapshot")
    assert before is not None and before >= 1
    c.poll_once()  # 80 is below the limit but above 50 %: stay paused
    assert q.calls == ["pause:throttle", "send", "send"]
    c.poll_once()
    assert q.calls == ["pause:throttle", "send", "send", "resume:throttle", "send"]


def test_poll_leaves_a_user_pause_and_idle_queues_alone() -> None:
    q = FakeQueue(request(state=RequestState.RUNNING, paused_by="user"))
    c = coordinator(q, [LagReading(None, 0)])
    c.config = SnapshotSettings(auto_snapshot_new_tables=False, max_consumer_lag=100)
    c.poll_once()
    assert q.calls == ["send"]
    assert c.healthy
    idle = FakeQueue(None)
    c = coordinator(idle, [])
    c.config = SnapshotSettings(auto_snapshot_new_tables=False)
    c.poll_once()  # nothing in flight: no lag reading, just the next request
    assert idle.calls == ["send"]


# --------------------------------------------------------------------------- bug 4: unknown consumer lag is never 0


class FakeProbe:
    """A lag probe with canned per-pipeline lags (``survey``) or a Kafka failure."""

    def __init__(self, lags: list[ConsumerLag] | None) -> None:
        self.lags = lags

    def survey(self) -> list[ConsumerLag]:
        if self.lags is None:
            raise ConnectionError("Kafka is down")
        return self.lags


def test_unknown_consumer_lag_never_reads_as_zero() -> None:
    throttle = Throttle(max_wal_retained_bytes=None, max_consumer_lag=100, resume_ratio=0.5)
    # No pipeline measured (all targets skipped or unreadable) and a Kafka failure: unknown, not 0.
    for probe in (FakeProbe([]), FakeProbe(None)):
        reading = lag_reader("src", None, probe)()
        assert reading.consumer_lag is None and not reading.consumer_lag_known
        assert throttle.decide(reading, paused_by_throttle=True) is ThrottleAction.NONE  # stays paused
        assert throttle.unknown(reading) == ["consumer_lag"]
    # One pipeline caught up, one not measured (no offsets yet / target down): no resume ...
    partial = lag_reader(
        "src", None, FakeProbe([ConsumerLag("a", {("t", 0): 3}), ConsumerLag("b", {}, UNKNOWN_NO_OFFSETS)])
    )()
    assert partial.consumer_lag == 3 and partial.unmeasured == ("b",)
    assert throttle.decide(partial, paused_by_throttle=True) is ThrottleAction.NONE
    # ... but a measured lag above the limit pauses even when another pipeline is unknown.
    behind = lag_reader(
        "src", None, FakeProbe([ConsumerLag("a", {("t", 0): 500}), ConsumerLag("b", {}, "TransientSinkError: down")])
    )()
    assert throttle.decide(behind, paused_by_throttle=False) is ThrottleAction.PAUSE
    # Every pipeline measured and low: resume.
    low = lag_reader("src", lambda: 7, FakeProbe([ConsumerLag("a", {("t", 0): 3}), ConsumerLag("b", {})]))()
    assert low == LagReading(7, 3) and low.consumer_lag_known
    assert throttle.decide(low, paused_by_throttle=True) is ThrottleAction.RESUME


def test_poll_keeps_a_throttle_pause_while_consumer_lag_is_unknown() -> None:
    q = FakeQueue(request(state=RequestState.RUNNING, paused_by="throttle"))
    c = coordinator(q, [LagReading(None, None), LagReading(None, 0, ("b",)), LagReading(None, 10)])
    c.config = SnapshotSettings(auto_snapshot_new_tables=False, max_consumer_lag=100)
    before = sample("cdc_monitor_poll_errors_total", monitor="snapshot", source="fake", check="consumer_lag") or 0
    c.poll_once()
    c.poll_once()
    assert q.calls == ["send", "send"]  # no resume on an unknown lag
    assert c.lag_unknown == ("consumer_lag",) and c.last_lag == LagReading(None, 0, ("b",))
    after = sample("cdc_monitor_poll_errors_total", monitor="snapshot", source="fake", check="consumer_lag")
    assert after == before + 2
    c.poll_once()  # measured and low again: resume
    assert q.calls == ["send", "send", "resume:throttle", "send"]
    assert c.lag_unknown == ()


def settings_with_targets(tmp_path: Path) -> tuple[Settings, SourceSettings]:
    src = SourceSettings(name="lagsrc", database="d", user="u", tables=["public.items"])
    urls = {
        "pg": "postgresql://u@127.0.0.1:1/db",
        "maria": "mariadb+pymysql://u@127.0.0.1:1/db",
        "lite": f"sqlite:///{tmp_path / 'target.db'}",
        "fresh": f"sqlite:///{tmp_path / 'fresh.db'}",
    }
    pipes = [PipelineSettings(name=n, source="lagsrc", target={"url": u}) for n, u in urls.items()]
    other = PipelineSettings(name="other", source="elsewhere", target={"url": urls["pg"]})
    elsewhere = SourceSettings(name="elsewhere", database="d", user="u", tables=["public.items"])
    return Settings(sources=[src, elsewhere], pipelines=[*pipes, other]), src


def test_pipeline_offsets_cover_every_target_kind(tmp_path: Path) -> None:
    settings, src = settings_with_targets(tmp_path)
    found = pipeline_offsets(settings, src)
    assert [(p.pipeline, p.group) for p in found] == [
        ("pg", "cdc.pg"),
        ("maria", "cdc.maria"),
        ("lite", "cdc.lite"),
        ("fresh", "cdc.fresh"),
    ]


class FakeTopic:
    def __init__(self, partitions: int) -> None:
        self.error = None
        self.partitions = dict.fromkeys(range(partitions))


class FakeMetadataConsumer:
    """``list_topics`` and ``get_watermark_offsets`` of a Kafka consumer, from a dict."""

    def __init__(self, marks: dict[tuple[str, int], tuple[int, int]]) -> None:
        self.marks = marks
        self.closed = False

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        topics: dict[str, FakeTopic] = {}
        for name, _ in self.marks:
            topics[name] = FakeTopic(sum(1 for t, _ in self.marks if t == name))

        class Meta:
            pass

        meta = Meta()
        meta.topics = topics  # type: ignore[attr-defined]
        return meta

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float | None = None, cached: bool = False):  # type: ignore[no-untyped-def]
        return self.marks[(partition.topic, partition.partition)]

    def close(self) -> None:
        self.closed = True


def test_lag_probe_reads_offsets_stored_in_a_sqlite_target(tmp_path: Path) -> None:
    """The SQLite target's ``group_offsets`` (a real file, no server) feeds the consumer lag."""
    settings, src = settings_with_targets(tmp_path)
    lite = next(p for p in settings.pipelines if p.name == "lite")
    writer = make_target(lite, purpose="test")
    try:
        writer.apply(ReducedBatch(), "cdc.lite", {("lagsrc.public.items", 0): 40, ("lagsrc.public.items", 1): 7})
    finally:
        writer.close()
    marks = {("lagsrc.public.items", 0): (0, 100), ("lagsrc.public.items", 1): (5, 7), ("unrelated", 0): (0, 9)}
    consumer = FakeMetadataConsumer(marks)
    offsets = [p for p in pipeline_offsets(settings, src) if p.pipeline in ("lite", "fresh")]
    probe = ConsumerLagProbe({}, topic_regex(src), offsets, factory=lambda _config: consumer)
    try:
        lite_lag, fresh_lag = probe.read()
        assert lite_lag == ConsumerLag("lite", {("lagsrc.public.items", 0): 60, ("lagsrc.public.items", 1): 0})
        assert lite_lag.total == 60
        # A group that stored nothing yet: counted from the low watermarks, but unknown as a lag.
        assert fresh_lag.unknown == UNKNOWN_NO_OFFSETS and fresh_lag.total == 102
        reading = lag_reader("lagsrc", None, probe)()
        assert reading == LagReading(None, 60, ("fresh",))
    finally:
        probe.close()
    assert consumer.closed


def test_lag_probe_survey_reports_an_unreachable_target_as_unknown(tmp_path: Path) -> None:
    settings, src = settings_with_targets(tmp_path)
    offsets = [p for p in pipeline_offsets(settings, src) if p.pipeline in ("pg", "lite")]
    consumer = FakeMetadataConsumer({("lagsrc.public.items", 0): (0, 10)})
    probe = ConsumerLagProbe({}, topic_regex(src), offsets, factory=lambda _config: consumer)
    try:
        pg, lite = probe.survey()  # nothing listens on 127.0.0.1:1
        assert pg.pipeline == "pg" and pg.unknown is not None and pg.partitions == {}
        assert lite.unknown == UNKNOWN_NO_OFFSETS
        with pytest.raises(TransientSinkError):
            probe.read()
        assert lag_reader("lagsrc", None, probe)().consumer_lag is None  # nothing known: not 0
    finally:
        probe.close()
