"""``cdc-pipeline offsets`` and ``cdc-pipeline dlq`` against the real stack: Debezium, Kafka, the
PostgreSQL target and workers as real ``cdc-pipeline run`` processes; the commands run as
subprocesses too (stdin not a terminal, like a script)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.core.events import ChangeEvent
from pipeline.transform.hooks import RejectedEventError

if TYPE_CHECKING:
    from tests.e2e.conftest import E2EPipeline

ITEMS_DDL = "CREATE TABLE public.items (id int PRIMARY KEY, v text NOT NULL)"


def reject_poison(event: ChangeEvent) -> ChangeEvent:
    """Transform hook of the DLQ test (imported by the worker): ``v = 'poison'`` is a bad event."""
    if event.after is not None and event.after.get("v") == "poison":
        raise RejectedEventError(event, "poison value refused by the test hook")
    return event


def cli(p: E2EPipeline, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``cdc-pipeline <args> -c <the pipeline's config>`` with stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--log-level", "warning", *args, "-c", str(p.config_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def data_topic(p: E2EPipeline) -> str:
    return f"{p.settings.sources[0].resolved_topic_prefix}.public.items"


def group(p: E2EPipeline) -> str:
    return p.settings.pipelines[0].resolved_consumer_group


def kafka_conf(p: E2EPipeline) -> dict[str, Any]:
    return {"bootstrap.servers": p.settings.kafka.bootstrap_servers}


def high_watermark(p: E2EPipeline, topic: str) -> int:
    consumer = Consumer({**kafka_conf(p), "group.id": f"test-{uuid.uuid4().hex[:8]}"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)[1])
    finally:
        consumer.close()


def stored(p: E2EPipeline) -> dict[tuple[str, int], int]:
    sink = p.make_sink()
    try:
        return dict(sink.group_offsets(group(p)))
    finally:
        sink.close()


def wait_for(check: Callable[[], bool], what: str, p: E2EPipeline, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:g}s:\n{p.worker_logs()}")
        time.sleep(0.5)


def wait_members(p: E2EPipeline, count: int, timeout: float = 60) -> None:
    admin = AdminClient(kafka_conf(p))

    def members() -> int:
        return len(admin.describe_consumer_groups([group(p)], request_timeout=10)[group(p)].result().members)

    wait_for(lambda: members() == count, f"{count} member(s) in {group(p)}", p, timeout)


def messages(p: E2EPipeline, topic: str) -> list[Any]:
    """Every message of partition 0 of ``topic`` up to its high watermark."""
    end = high_watermark(p, topic)
    consumer = Consumer({**kafka_conf(p), "group.id": f"test-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    out: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        while len(out) < end and time.monotonic() < deadline:
            out += [m for m in consumer.consume(100, 1.0) if m.error() is None]
    finally:
        consumer.close()
    return out


def test_offsets_show_reset_refusal_and_timestamp(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e([ITEMS_DDL, "INSERT INTO public.items VALUES (1, 'a'), (2, 'b'), (3, 'c')"], ["public.items"])
    topic = data_topic(p)
    worker = p.start_worker()
    p.wait_converged()
    p.source("UPDATE public.items SET v = v || '2'")  # three more messages: offsets 3..5
    time.sleep(1.5)
    cut_ms = int(time.time() * 1000)
    time.sleep(1.5)
    p.source("INSERT INTO public.items VALUES (4, 'd'), (5, 'e')")  # offsets 6..7, after cut_ms
    p.wait_converged()
    wait_for(lambda: stored(p).get((topic, 0)) == 8, "stored offset 8", p)

    shown = cli(p, "offsets", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["group"] == group(p)
    (line,) = [r for r in doc["partitions"] if r["topic"] == topic]
    assert line == {"topic": topic, "partition": 0, "stored_next_offset": 8, "low": 0, "high": 8, "lag": 0}
    assert topic in cli(p, "offsets", "show").stdout  # the table form

    refused = cli(p, "offsets", "reset", "--to-beginning", "--yes")
    assert refused.returncode == 1
    assert f"consumer group '{group(p)}'" in refused.stderr and "stop every worker" in refused.stderr
    assert stored(p).get((topic, 0)) == 8  # nothing changed

    assert p.stop_worker(worker) == 0
    wait_members(p, 0)
    before = p.target_snapshot("public.items")

    # --to-timestamp: the first message at or after cut_ms is the first insert of rows 4 and 5.
    expected = next(m.offset() for m in messages(p, topic) if m.timestamp()[1] >= cut_ms)
    assert expected == 6
    not_confirmed = cli(p, "offsets", "reset", "--to-timestamp", str(cut_ms), "--topic", topic)
    assert not_confirmed.returncode == 2 and "--yes" in not_confirmed.stderr
    assert stored(p).get((topic, 0)) == 8
    by_time = cli(p, "offsets", "reset", "--to-timestamp", str(cut_ms), "--topic", topic, "--yes", "--json")
    assert by_time.returncode == 0, by_time.stderr
    assert json.loads(by_time.stdout)["changes"] == [{"topic": topic, "partition": 0, "old": 8, "new": 6}]
    assert stored(p)[(topic, 0)] == 6

    out_of_range = cli(p, "offsets", "reset", "--to-offset", "9", "--topic", topic, "--yes")
    assert out_of_range.returncode == 2 and "outside" in out_of_range.stderr

    # --to-beginning: the stored offsets go; Kafka's group copy is set to the low watermark.
    reset = cli(p, "offsets", "reset", "--to-beginning", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert f"{topic}[0]: 6 -> beginning" in reset.stdout
    assert (topic, 0) not in stored(p)
    admin = AdminClient(kafka_conf(p))
    committed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group(p))], request_timeout=10)
    kafka = {(tp.topic, tp.partition): tp.offset for tp in committed[group(p)].result().topic_partitions}
    assert kafka[(topic, 0)] == 0

    # A worker re-applies everything from the beginning; the version guard keeps the target as it was.
    p.start_worker()
    wait_for(lambda: stored(p).get((topic, 0)) == 8, "the replay to the end", p)
    assert p.target_snapshot("public.items") == before
    p.wait_converged()


def _write_config(p: E2EPipeline, transforms: list[dict[str, Any]]) -> None:
    doc = yaml.safe_load(p.config_path.read_text(encoding="utf-8"))
    doc["pipelines"][0]["transforms"] = transforms
    p.config_path.write_text(yaml.safe_dump(doc), encoding="utf-8")


def test_dlq_list_show_and_replay_after_a_fix(e2e) -> None:  # type: ignore[no-untyped-def]
    hook = {"match": "public.items", "hook": f"{__name__}:reject_poison"}
    p: E2EPipeline = e2e([ITEMS_DDL], ["public.items"], pipeline={"transforms": [hook]})
    topic = data_topic(p)
    worker = p.start_worker()
    p.source("INSERT INTO public.items VALUES (1, 'ok')")
    p.source("INSERT INTO public.items VALUES (2, 'poison')")
    p.source("INSERT INTO public.items VALUES (3, 'fine')")
    wait_for(lambda: stored(p).get((topic, 0)) == 3, "stored offset 3", p)
    assert p.target_values("public.items") == [(1, "ok"), (3, "fine")]

    listed = cli(p, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (letter,) = json.loads(listed.stdout)["dead_letters"]
    assert (letter["original_topic"], letter["original_partition"], letter["original_offset"]) == (topic, 0, 1)
    assert "poison value refused by the test hook" in letter["reason"]
    assert letter["error_class"]
    table = cli(p, "dlq", "list").stdout
    assert f"{topic}[0]@1" in table and letter["error_class"] in table
    assert cli(p, "dlq", "list", "--error-class", "NoSuchError", "--json").stdout.count("dlq_offset") == 0

    dlq_offset = str(letter["dlq_offset"])
    shown = cli(p, "dlq", "show", dlq_offset)
    assert shown.returncode == 0, shown.stderr
    for header in ("cdc.error.class", "cdc.error.reason", "cdc.original.topic", "cdc.original.offset: 1"):
        assert header in shown.stdout
    assert '"poison"' in shown.stdout  # the value, pretty-printed JSON
    assert "password" not in shown.stdout
    detail = json.loads(cli(p, "dlq", "show", dlq_offset, "--json").stdout)
    assert json.loads(detail["value"])["payload"]["after"] == {"id": 2, "v": "poison"}
    assert cli(p, "dlq", "show", "999").returncode == 2

    # The fix: the hook goes. Replaying then applies the dead letter.
    assert p.stop_worker(worker) == 0
    _write_config(p, [])
    p.start_worker()
    refused = cli(p, "dlq", "replay", "--offset", dlq_offset)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    replayed = cli(p, "dlq", "replay", "--offset", dlq_offset, "--yes", "--json")
    assert replayed.returncode == 0, replayed.stderr
    (done,) = json.loads(replayed.stdout)["replayed"]
    assert (done["topic"], done["partition"], done["offset"]) == (topic, 0, 3)
    copy = messages(p, topic)[3]
    assert ("cdc.replayed.from", dlq_offset.encode()) in (copy.headers() or [])
    p.wait_converged()
    assert p.target_values("public.items") == [(1, "ok"), (2, "poison"), (3, "fine")]

    # A newer change of row 2, then the old dead letter again: the version guard ignores it.
    p.source("UPDATE public.items SET v = 'fixed' WHERE id = 2")
    p.wait_converged()
    again = cli(p, "dlq", "replay", "--all", "--yes")
    assert again.returncode == 0, again.stderr
    assert f"replayed 0:{dlq_offset} -> {topic}[0]@5" in again.stdout
    wait_for(lambda: stored(p).get((topic, 0)) == 6, "the second replay consumed", p)
    assert p.target_values("public.items") == [(1, "ok"), (2, "fixed"), (3, "fine")]
