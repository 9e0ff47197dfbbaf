"""``cdc-pipeline offsets``' planning and applying (pipeline/control/offsets.py): the pure plans,
the refusal while the group has members, and ``Target.set_offsets`` on a real SQLite target."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException

from pipeline.control.offsets import (
    GroupActiveError,
    OffsetChange,
    OffsetPlanError,
    PartitionOffsets,
    Selection,
    apply_reset,
    commit_to_kafka,
    ensure_idle,
    parse_timestamp,
    plan_beginning,
    plan_offset,
    plan_timestamp,
)
from pipeline.core.batch import ReducedBatch
from pipeline.core.settings.loading import load_settings
from sinks.base import Target
from sinks.factory import make_target

ROWS = [
    PartitionOffsets("p.public.a", 0, 40, 0, 50),
    PartitionOffsets("p.public.a", 1, None, 5, 9),
    PartitionOffsets("p.public.b", 0, 7, 3, 7),
    PartitionOffsets("p.public.gone", 0, 12, None, None),
]


def test_lag_counts_from_the_stored_offset_or_the_low_watermark() -> None:
    assert [r.lag for r in ROWS] == [10, 4, 0, None]
    assert ROWS[1].to_dict() == {
        "topic": "p.public.a",
        "partition": 1,
        "stored_next_offset": None,
        "low": 5,
        "high": 9,
        "lag": 4,
    }


def test_parse_timestamp_takes_epoch_ms_and_iso_8601() -> None:
    assert parse_timestamp("1700000000123") == 1700000000123
    assert parse_timestamp("2026-12-03T13:00:00Z") == 1796302800000
    assert parse_timestamp("2026-12-03T13:00:00") == 1796302800000  # no zone: UTC
    assert parse_timestamp("2026-12-03T14:00:00+01:00") == 1796302800000
    with pytest.raises(ValueError, match="neither epoch milliseconds nor an ISO 8601"):
        parse_timestamp("yesterday")


def test_to_beginning_deletes_only_stored_offsets_of_the_selection() -> None:
    assert plan_beginning(ROWS, Selection()) == [
        OffsetChange("p.public.a", 0, 40, None),
        OffsetChange("p.public.b", 0, 7, None),
        OffsetChange("p.public.gone", 0, 12, None),
    ]
    assert plan_beginning(ROWS, Selection(frozenset({"p.public.a"}), frozenset({0}))) == [
        OffsetChange("p.public.a", 0, 40, None)
    ]
    with pytest.raises(OffsetPlanError, match="no partition matches"):
        plan_beginning(ROWS, Selection(frozenset({"nope"})))


def test_to_offset_stays_within_the_watermarks() -> None:
    sel = Selection(frozenset({"p.public.a"}), frozenset({1}))
    assert plan_offset(ROWS, sel, 6) == [OffsetChange("p.public.a", 1, None, 6)]
    assert plan_offset(ROWS, sel, 9) == [OffsetChange("p.public.a", 1, None, 9)]  # the high watermark: skip all
    with pytest.raises(OffsetPlanError, match=r"outside p.public.a\[1\]'s range \[5, 9\]"):
        plan_offset(ROWS, sel, 4)  # below low: gone by retention
    with pytest.raises(OffsetPlanError, match="outside"):
        plan_offset(ROWS, sel, 10)
    assert plan_offset(ROWS, Selection(frozenset({"p.public.b"})), 7) == []  # already there: no change
    with pytest.raises(OffsetPlanError, match="not in Kafka any more"):
        plan_offset(ROWS, Selection(frozenset({"p.public.gone"})), 1)


def test_to_timestamp_uses_the_found_offsets_and_the_high_watermark_when_nothing_is_newer() -> None:
    found = {("p.public.a", 0): 20, ("p.public.a", 1): None, ("p.public.b", 0): 7}
    assert plan_timestamp(ROWS, Selection(), found) == [
        OffsetChange("p.public.a", 0, 40, 20),
        OffsetChange("p.public.a", 1, None, 9),  # nothing that new: nothing is re-read
    ]


@dataclass
class FakeFuture:
    value: Any = None
    error: Exception | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class Member:
    client_id: str
    host: str


@dataclass
class Description:
    members: list[Member]


@dataclass
class FakeAdmin:
    """The two AdminClient calls of a reset: describe the group, alter its offsets."""

    members: list[Member] = field(default_factory=list)
    alter_error: Exception | None = None
    altered: list[dict[tuple[str, int], int]] = field(default_factory=list)

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, FakeFuture]:
        return {g: FakeFuture(Description(list(self.members))) for g in groups}

    def alter_consumer_group_offsets(self, requests: list[Any], request_timeout: float) -> dict[str, FakeFuture]:
        (req,) = requests
        self.altered.append({(tp.topic, tp.partition): tp.offset for tp in req.topic_partitions})
        return {req.group_id: FakeFuture(error=self.alter_error)}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    (tmp_path / "c.yaml").write_text(
        "sources: [{name: s, host: h, database: d, user: u, tables: [public.a]}]\n"
        f"pipelines: [{{name: p, source: s, target: {{url: 'sqlite:///{tmp_path / 't.db'}'}}}}]\n",
        encoding="utf-8",
    )
    t = make_target(load_settings(tmp_path / "c.yaml", {}).pipelines[0], purpose="test")
    yield t
    t.close()


def test_set_offsets_stores_and_deletes_in_one_call_and_leaves_the_rest(target: Target) -> None:
    target.apply(ReducedBatch(), "g", {("a", 0): 40, ("a", 1): 3, ("b", 0): 7})
    target.apply(ReducedBatch(), "other", {("a", 0): 99})
    assert target.set_offsets("g", {("a", 0): None, ("a", 1): 8, ("c", 0): 1}) == 3
    assert target.group_offsets("g") == {("a", 1): 8, ("b", 0): 7, ("c", 0): 1}
    assert target.group_offsets("other") == {("a", 0): 99}
    assert target.set_offsets("g", {("zzz", 0): None}) == 0  # deleting what is absent changes nothing


def test_reset_refuses_while_the_group_has_members_and_changes_nothing(target: Target) -> None:
    target.apply(ReducedBatch(), "g", {("p.public.a", 0): 40})
    admin = FakeAdmin(members=[Member("cdc-pipeline-p-host1", "/10.0.0.7")])
    with pytest.raises(GroupActiveError) as err:
        apply_reset(admin, target, "g", [OffsetChange("p.public.a", 0, 40, None)], ROWS)
    assert "'g'" in str(err.value) and "cdc-pipeline-p-host1@/10.0.0.7" in str(err.value)
    assert "stop every worker" in str(err.value)
    assert target.group_offsets("g") == {("p.public.a", 0): 40}
    assert admin.altered == []
    with pytest.raises(GroupActiveError):
        ensure_idle(admin, "g")


def test_reset_writes_the_target_then_commits_to_kafka_with_low_watermarks_for_deletes(target: Target) -> None:
    target.apply(ReducedBatch(), "g", {("p.public.a", 0): 40, ("p.public.b", 0): 7})
    admin = FakeAdmin()
    changes = [OffsetChange("p.public.a", 0, 40, None), OffsetChange("p.public.b", 0, 7, 5)]
    assert apply_reset(admin, target, "g", changes, ROWS) is None
    assert target.group_offsets("g") == {("p.public.b", 0): 5}
    assert admin.altered == [{("p.public.a", 0): 0, ("p.public.b", 0): 5}]


def test_a_failed_kafka_commit_is_reported_not_raised(target: Target) -> None:
    admin = FakeAdmin(alter_error=KafkaException("GROUP_SUBSCRIBED_TO_TOPIC"))
    warning = commit_to_kafka(admin, "g", [OffsetChange("p.public.a", 0, 40, 3)], ROWS)
    assert warning is not None and "'g'" in warning and "GROUP_SUBSCRIBED_TO_TOPIC" in warning
    assert commit_to_kafka(admin, "g", [OffsetChange("p.public.gone", 0, 12, None)], ROWS) is None  # nothing known


def test_cli_argument_errors_exit_2_before_any_connection(tmp_path: Path) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from pipeline.cli import app  # noqa: PLC0415

    cfg = tmp_path / "two.yaml"
    cfg.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:1'}\n"
        "sources: [{name: s, host: h, database: d, user: u, tables: [public.a]}]\n"
        "pipelines: [{name: p1, source: s, target: {url: 'sqlite:///x.db'}},"
        " {name: p2, source: s, target: {url: 'sqlite:///y.db'}}]\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    cases = {
        ("offsets", "reset"): "exactly one of --to-beginning",
        ("offsets", "reset", "--to-beginning", "--to-offset", "3"): "exactly one of",
        ("offsets", "reset", "--to-offset", "3"): "--to-offset needs --topic",
        ("offsets", "reset", "--to-beginning", "--partition", "1"): "--partition needs --topic",
        ("offsets", "show"): "--pipeline is required (defined: p1, p2)",
        ("offsets", "show", "-p", "nope"): "no pipeline 'nope'",
        ("dlq", "replay", "-p", "p1"): "give --offset N (repeatable) or --all",
        ("dlq", "replay", "-p", "p1", "--all", "--offset", "1"): "give --offset N",
        ("dlq", "replay", "-p", "p1", "--offset", "x"): "is not OFFSET or PARTITION:OFFSET",
        ("dlq", "show", "-p", "p1", "1:"): "is not OFFSET or PARTITION:OFFSET",
    }
    for args, message in cases.items():
        result = runner.invoke(app, [*args, "-c", str(cfg)])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
