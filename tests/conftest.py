"""Shared fixtures: one real local stack per test session, and unique names per test.

The stack runs on test ports (15433/15434 PostgreSQL, 15435 MariaDB, 19092/19093 Kafka, 18083 Connect) under
``.local-stack-test/`` so it never collides with a developer's ``cdc-pipeline local up``.
Set ``CDC_TEST_KEEP_STACK=1`` to leave it running after the session (faster re-runs).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from hypothesis import settings as hypothesis_settings

from pipeline.localstack import LocalStack, LocalStackSettings
from pipeline.localstack.services import drop_database_slots
from tests.containers import ContainerStack, docker_engine_available

REPO = Path(__file__).resolve().parents[1]

# No per-example deadline: the unit tests run while the stack's JVMs still share the CPUs, and
# one GC pause over hypothesis's default 200 ms would fail a correct property. Per-test
# ``@settings(...)`` keep their own values and take this one for what they leave out.
hypothesis_settings.register_profile("cdc", deadline=None)
hypothesis_settings.load_profile("cdc")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder so `-m "not integration"` selects the unit tests."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def stack_settings() -> LocalStackSettings:
    """Ports and state folder of the test stack.

    ``CDC_TEST_STACK_SLOT=N`` (1-9) moves the stack to ``.local-stack-test-N`` with every port
    shifted by ``N * 100``, so several checkouts or developers can run suites side by side.
    """
    slot = int(os.environ.get("CDC_TEST_STACK_SLOT", "0") or "0")
    shift = slot * 100
    return LocalStackSettings(
        state_dir=REPO / (".local-stack-test" if slot == 0 else f".local-stack-test-{slot}"),
        source_pg_port=15433 + shift,
        target_pg_port=15434 + shift,
        kafka_port=19092 + shift,
        controller_port=19093 + shift,
        connect_port=18083 + shift,
        mariadb_port=15435 + shift,
        registry_port=18081 + shift,
    )


@pytest.fixture(scope="session")
def local_stack(stack_settings: LocalStackSettings) -> Iterator[LocalStack]:
    """The real stack, started once per session (idempotent if already running).

    ``CDC_TEST_STACK=containers`` runs the same services from official images through
    testcontainers instead (tests/containers.py; needs a Docker engine, always removed at the
    end); the default, ``local``, runs them as local processes.
    """
    kind = os.environ.get("CDC_TEST_STACK", "local") or "local"
    if kind == "containers":
        if not docker_engine_available():
            pytest.fail("CDC_TEST_STACK=containers needs a Docker engine (docker.from_env().ping() failed)")
        containers = ContainerStack(stack_settings, report=lambda line: print(f"[containers] {line}"))
        containers.up()
        yield containers  # type: ignore[misc]  # same settings and services; data folders excepted
        containers.down()
        return
    if kind != "local":
        pytest.fail(f"CDC_TEST_STACK={kind!r}: expected 'local' (default) or 'containers'")
    stack = LocalStack(stack_settings, report=lambda line: print(f"[local stack] {line}"))
    stack.up()
    yield stack
    if os.environ.get("CDC_TEST_KEEP_STACK") != "1":
        stack.down()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Factory of names unique to this test: ``unique("slot") -> "slot_3f9a1c2b7d"``.

    Lower case, digits and '_' only, so they are valid as slot, publication, topic, group
    and database names.
    """
    token = uuid.uuid4().hex[:10]

    def make(prefix: str) -> str:
        return f"{prefix}_{token}"

    return make


@dataclass(frozen=True)
class Databases:
    """A fresh database of the same name on the source and on the target cluster."""

    name: str
    source_dsn: str
    target_dsn: str


@pytest.fixture
def databases(local_stack: LocalStack, unique: Callable[[str], str]) -> Iterator[Databases]:
    """Create ``t_<token>`` on both clusters; dropped after the test (slots of it first), and
    every Kafka topic whose name holds the test's token deleted, so a session's broker keeps
    only what the running test needs on disk (the e2e load tests write gigabytes)."""
    name = unique("t")
    s = local_stack.settings
    for role in ("source", "target"):
        with psycopg.connect(s.pg_dsn(role), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    yield Databases(name, s.pg_dsn("source", name), s.pg_dsn("target", name))
    for role in ("source", "target"):
        with psycopg.connect(s.pg_dsn(role), autocommit=True) as conn:
            drop_slots(conn, name)
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
            )
    delete_topics_of(s.bootstrap_servers, name.removeprefix("t_"))


def delete_topics_of(bootstrap_servers: str, token: str) -> None:
    """Delete the topics whose names contain ``token`` (best effort: a broker that is down or
    slow only leaves the disk fuller, it never fails the test that has already passed)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    try:
        topics = [t for t in admin.list_topics(timeout=10).topics if token in t]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=30).values():
                future.exception(timeout=60)
    except Exception as exc:  # a cleanup, reported, never a failure
        print(f"[local stack] topics of {token} not deleted: {exc}")


def drop_slots(conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
    """Drop every replication slot of ``database`` (see ``drop_database_slots``)."""
    drop_database_slots(conn, database, timeout_s=30)


def wait_connector_running(connect_url: str, name: str, timeout_s: float = 90) -> None:
    """Poll the Connect REST status of ``name`` until it and its tasks are RUNNING.

    Raises AssertionError on a FAILED task (with its trace) or after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        resp = httpx.get(f"{connect_url}/connectors/{name}/status", timeout=5)
        if resp.status_code == 200:
            body = resp.json()
            tasks = body.get("tasks", [])
            state = (body["connector"]["state"], [t["state"] for t in tasks])
            if state[0] == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks):
                return
            if "FAILED" in state[1]:
                raise AssertionError(f"connector task failed: {tasks[0].get('trace', '')[:2000]}")
        time.sleep(0.5)
    raise AssertionError(f"connector {name} not RUNNING after {timeout_s}s: {state}")


def raw_connector_config(
    stack: LocalStack, database: str, prefix: str, tables: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """A minimal Debezium PostgreSQL connector config for the test stack, written by hand (not
    by ``connectors.debezium``) so foundation and decoder tests exercise Debezium directly.
    ``prefix`` names the topic prefix, slot and publication; ``extra`` adds properties."""
    s = stack.settings
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": s.host,
        "database.port": str(s.source_pg_port),
        "database.user": "postgres",
        "database.password": "postgres",
        "database.dbname": database,
        "topic.prefix": prefix,
        "slot.name": prefix,
        "publication.name": prefix,
        "publication.autocreate.mode": "filtered",
        "table.include.list": tables,
        "snapshot.mode": "initial",
        **(extra or {}),
    }
