"""Fault-injection suite (issue 11): its own local stack, the e2e factory bound to it, a
resilient workload, and the checks every scenario ends with (verify, keyless duplicates, DLQ).

The suite restarts the broker, Connect and both PostgreSQL clusters, so it runs on a stack of
its own (``.local-stack-faults``, ports shifted by +500 from the test stack) and never disturbs
the session stack. ``CDC_FAULTS_PROFILE=long`` selects the long profile (more kills, longer
load); the default short profile keeps each scenario to a few minutes on two cores.
``CDC_TEST_KEEP_STACK=1`` leaves the stack running after the session.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.control.verify.model import Status, VerifySettings
from pipeline.control.verify.run import verify_pipeline
from pipeline.localstack import LocalStack, LocalStackSettings
from pipeline.localstack.services import Health, Service
from tests.conftest import REPO
from tests.e2e.conftest import E2EPipeline, e2e, table_rows  # noqa: F401 - e2e is a fixture re-exported here
from tests.e2e.workload import Workload

FAULTS_SHIFT = 500


@dataclass(frozen=True)
class Profile:
    """Sizes of a profile: worker kills, seconds of load per phase, workload clients."""

    name: str
    kills: int
    load_s: float
    clients: int
    rebalance_hold_s: float


PROFILES = {
    "short": Profile("short", kills=3, load_s=4.0, clients=3, rebalance_hold_s=4.0),
    "long": Profile("long", kills=10, load_s=20.0, clients=5, rebalance_hold_s=20.0),
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``faults`` marker (the run uses ``--strict-markers``)."""
    config.addinivalue_line("markers", "faults: fault-injection scenarios on their own local stack")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the suite ``faults`` (``-m "not faults"`` skips it)."""
    for item in items:
        if "faults" in item.path.parts:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def profile() -> Profile:
    """The profile chosen by ``CDC_FAULTS_PROFILE`` (``short`` by default)."""
    name = os.environ.get("CDC_FAULTS_PROFILE", "short") or "short"
    if name not in PROFILES:
        raise pytest.UsageError(f"CDC_FAULTS_PROFILE={name!r}: use one of {sorted(PROFILES)}")
    return PROFILES[name]


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """The suite's own stack (overrides the session stack for tests under ``tests/faults``)."""
    ports: dict[str, Any] = {
        "source_pg_port": 15433 + FAULTS_SHIFT,
        "target_pg_port": 15434 + FAULTS_SHIFT,
        "kafka_port": 19092 + FAULTS_SHIFT,
        "controller_port": 19093 + FAULTS_SHIFT,
        "connect_port": 18083 + FAULTS_SHIFT,
    }
    if "mariadb_port" in LocalStackSettings.model_fields:  # stacks that can also run MariaDB
        ports["mariadb_port"] = 15435 + FAULTS_SHIFT
    # Optional services (MariaDB, schema registry, ...): no scenario needs them; off, they bind
    # no port and cannot collide with another stack's.
    for name in LocalStackSettings.model_fields:
        if name.endswith("_enabled"):
            ports[name] = False
    settings = LocalStackSettings(state_dir=REPO / ".local-stack-faults", **ports)
    stack = LocalStack(settings, report=lambda line: print(f"[faults stack] {line}"))
    stack.up()
    yield stack
    if os.environ.get("CDC_TEST_KEEP_STACK") != "1":
        stack.down()


# --------------------------------------------------------------------------- workload


class FaultWorkload(Workload):
    """:class:`tests.e2e.workload.Workload` (the same transactions on ``public.items`` and the
    keyless ``public.history``) whose clients reconnect after a connection loss, so the load
    survives a restart of the source cluster; a context manager (start on enter, stop on exit)."""

    def __init__(self, dsn: str, clients: int = 3, seed: int = 11) -> None:
        super().__init__(dsn, clients, seed)
        self.reconnects = 0

    def __enter__(self) -> FaultWorkload:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=False, connect_timeout=5) as conn:
                    while not self._stop.is_set():
                        self._one(conn, rng)
                        time.sleep(0.003)
            except psycopg.OperationalError:
                self.reconnects += 1
                time.sleep(0.5)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Outcome:
    """What a scenario measured: rows compared per table, rows lost, duplicates, DLQ contents."""

    rows: dict[str, int]
    lost: int
    duplicates: int
    dead_letters: list[tuple[bytes | None, dict[str, str]]]


def wait_ready(service: Service, timeout: float = 180) -> float:
    """Wait until ``service.health().ready``; returns the seconds waited."""
    t0 = time.monotonic()
    health: Health = service.health()
    while not health.ready:
        assert time.monotonic() - t0 < timeout, f"{service.name} not ready after {timeout}s: {health.detail}"
        time.sleep(0.5)
        health = service.health()
    return time.monotonic() - t0


def read_dlq(p: E2EPipeline, settle_s: float = 3.0, timeout: float = 60) -> list[tuple[bytes | None, dict[str, str]]]:
    """Every message of the pipeline's DLQ topic as (value, headers), read from the beginning."""
    pipeline = p.settings.pipelines[0]
    topic = pipeline.resolved_dlq_topic
    consumer = Consumer(
        {
            **p.settings.kafka.client_config(),
            "group.id": f"faults-dlq-reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return []
        consumer.assign([TopicPartition(topic, part, 0) for part in meta.partitions])
        out: list[tuple[bytes | None, dict[str, str]]] = []
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len(eof) == len(meta.partitions) and time.monotonic() - quiet_since > settle_s:
                    break
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition() or 0)
                continue
            quiet_since = time.monotonic()
            headers = {k: (v or b"").decode(errors="replace") for k, v in (msg.headers() or [])}
            out.append((msg.value(), headers))
        return out
    finally:
        consumer.close()


def keyless_duplicates(dsn: str, table: str, columns: list[str]) -> int:
    """Rows beyond the first of each distinct value tuple of ``table`` (copies)."""
    rows = table_rows(dsn, table, columns)
    return len(rows) - len(set(rows))


def check_outcome(p: E2EPipeline, expected_dead: list[bytes] | None = None, max_wait_s: float = 240) -> Outcome:
    """The end of every scenario: ``verify`` (catch-up, row counts, checksums) says every table
    matches; the keyless table holds exactly the source's multiset of rows (no copy added, none
    lost); the DLQ holds exactly ``expected_dead`` (values, any order; none by default)."""
    pipeline = p.settings.pipelines[0]
    result = verify_pipeline(p.settings, pipeline, config=VerifySettings(chunk_size=500, max_wait_s=max_wait_s))
    problems = [
        f"{t.table}: {t.status} {t.reason} source={t.rows_source} target={t.rows_target}"
        for t in result.tables
        if t.status is not Status.MATCH
    ]
    assert not problems and result.ok, f"verify failed: {problems}\n{p.worker_logs()}"
    rows = {str(t.table): t.rows_source for t in result.tables}
    for t in result.tables:
        assert t.rows_source == t.rows_target, t
    cols = ["item", "delta", "at"]
    src_dups = keyless_duplicates(p.source_dsn, "public.history", cols)
    tgt_dups = keyless_duplicates(p.target_dsn, "public.history", cols)
    assert tgt_dups == src_dups, f"keyless table: {tgt_dups} copies in the target, {src_dups} in the source"
    assert table_rows(p.target_dsn, "public.history", cols) == table_rows(p.source_dsn, "public.history", cols)
    dead = read_dlq(p)
    assert sorted(v or b"" for v, _ in dead) == sorted(expected_dead or []), f"unexpected DLQ content: {dead}"
    for _value, headers in dead:
        assert headers.get("cdc.error.class") and headers.get("cdc.error.reason"), headers
    return Outcome(rows, lost=0, duplicates=tgt_dups - src_dups, dead_letters=dead)


def report(name: str, **figures: object) -> None:
    """Print one scenario's measured figures (collected into docs/reliability.md by hand)."""
    print(f"[faults] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
