"""Issue 3 acceptance against the real local stack: `source check|prepare` and
`connectors apply|status|restart|pause|resume|stop|delete` through the CLI.

Each test gets its own database, connector role (with a distinctive password that must never
be printed), source name, slot, publication, topic prefix and connector; connectors are
deleted before the `databases` fixture drops the database.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka import Consumer
from psycopg import sql

from pipeline.localstack.services import pg_bindir
from tests.conftest import REPO
from tests.integration.sources import TEST_OVERRIDES, Cli, Env, wait_status


def consume(
    env: Env, topic: str, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 60
) -> list[dict[str, Any]]:
    """Payloads of ``topic`` from the beginning until ``done(payloads)``; fails at the timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": env.stack.settings.bootstrap_servers,
            "group.id": f"{env.name}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    payloads: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(payloads):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met in {timeout_s}s; got {payloads}")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            payloads.append(json.loads(msg.value())["payload"])
    finally:
        consumer.close()
    return payloads


def has(op: str, **after: Any) -> Callable[[list[dict[str, Any]]], bool]:
    def check(payloads: list[dict[str, Any]]) -> bool:
        return any(
            p.get("op") == op and all((p.get("after") or {}).get(k) == v for k, v in after.items()) for p in payloads
        )

    return check


# --------------------------------------------------------------------------- apply, idempotence, table changes


def test_apply_twice_is_unchanged_and_new_tables_reach_kafka(env: Env, cli: Cli) -> None:
    cli.secrets.add(env.password)
    env.tables_owned_by_role(
        "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL)",
        "CREATE TABLE public.extra (id int PRIMARY KEY, note text)",
        "INSERT INTO public.extra VALUES (1, 'before capture')",
    )
    first = env.config(["public.items"])
    res = cli("source", "prepare", "-c", first)
    assert res.exit_code == 0, res.output
    assert "done: create publication" in res.output

    res = cli("connectors", "apply", "-c", first)
    assert res.exit_code == 0, res.output
    assert f"{env.connector}: created" in res.output
    assert "task 0: RUNNING" in res.output
    pid = env.slot_pid()
    assert pid is not None

    # Second apply: nothing is sent, the task (and its walsender) keeps running.
    res = cli("connectors", "apply", "-c", first)
    assert res.exit_code == 0, res.output
    assert f"{env.connector}: unchanged" in res.output
    assert env.slot_pid() == pid

    # A new table: apply refuses until the publication covers it, then --prepare does both.
    second = env.config(["public.items", "public.extra"])
    res = cli("connectors", "apply", "-c", second)
    assert res.exit_code == 1, res.output
    assert "FAIL publication" in res.output
    assert "missing public.extra" in res.output
    assert "cdc-pipeline source prepare" in res.output

    res = cli("connectors", "apply", "-c", second, "--prepare")
    assert res.exit_code == 0, res.output
    assert f"{env.connector}: updated (table.include.list)" in res.output

    env.run_sql("INSERT INTO public.extra VALUES (2, 'streamed')", "INSERT INTO public.items VALUES (1, 'item')")
    consume(env, f"{env.name}.public.extra", has("c", id=2, note="streamed"))
    consume(env, f"{env.name}.public.items", has("c", id=1, name="item"))

    # Rows that existed before the table was added come through an incremental snapshot,
    # requested in the signal table; progress arrives on the notification topic.
    signal_id = f"snap-{env.name}"
    env.run_sql(
        sql.SQL("INSERT INTO {} (id, type, data) VALUES ({}, 'execute-snapshot', {})").format(
            sql.Identifier("cdc", f"debezium_signal_{env.name}"),
            sql.Literal(signal_id),
            sql.Literal(json.dumps({"data-collections": ["public.extra"], "type": "incremental"})),
        )
    )
    consume(env, f"{env.name}.public.extra", has("r", id=1, note="before capture"))
    notes = consume(
        env,
        f"__debezium-notification.{env.name}",
        lambda ps: any(p["id"] == signal_id and p["type"] == "COMPLETED" for p in ps),
    )
    assert any(p["aggregate_type"] == "Incremental Snapshot" for p in notes)

    # Heartbeats are change events of the heartbeat table (for lag measurement).
    beats = consume(env, f"{env.name}.cdc.heartbeat", lambda ps: any(p["op"] in ("c", "u") for p in ps))
    assert {p["after"]["source"] for p in beats if p["after"]} == {env.name}


# --------------------------------------------------------------------------- source checks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def replica_cluster() -> Iterator[int]:
    """A throwaway PostgreSQL cluster with ``wal_level = replica`` (trust auth); yields its port."""
    root = Path(tempfile.mkdtemp(prefix="cdc-walreplica-", dir="/var/tmp"))  # the postgres user must reach it
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, port = root / "data", _free_port()
    bindir = pg_bindir()
    init = _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    assert init.returncode == 0, init.stderr
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c wal_level=replica"
    start = _as_postgres(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "-t", "60", "start"]
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield port
    finally:
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_wal_level_replica_fails_the_check_with_the_fix(replica_cluster: int, cli: Cli, tmp_path: Path) -> None:
    password = "Pw-replica-cluster-Zq9"
    cli.secrets.add(password)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{replica_cluster}/postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
    path = tmp_path / "replica.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {
                        "name": "replica",
                        "host": "127.0.0.1",
                        "port": replica_cluster,
                        "database": "postgres",
                        "user": "postgres",
                        "password": password,
                        "sslmode": "disable",
                        "tables": ["public.t"],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    res = cli("source", "check", "-c", path)
    assert res.exit_code == 1, res.output
    assert "FAIL wal_level: wal_level is 'replica'" in res.output
    assert "fix: ALTER SYSTEM SET wal_level = logical;" in res.output
    assert "restart PostgreSQL" in res.output
    assert "PASS replica identity" in res.output

    res = cli("source", "check", "-c", path, "--json")
    assert res.exit_code == 1
    checks = {c["name"]: c for c in json.loads(res.stdout)[0]["checks"]}
    assert checks["wal_level"]["ok"] is False
    assert checks["wal_level"]["fix"].startswith("ALTER SYSTEM SET wal_level = logical;")


def test_table_without_primary_key_is_reported_and_not_published(env: Env, cli: Cli) -> None:
    cli.secrets.add(env.password)
    env.tables_owned_by_role(
        "CREATE TABLE public.keyed (id int PRIMARY KEY)",
        'CREATE TABLE public."Log Lines" (at timestamptz, line text)',
    )
    path = env.config(["public.keyed", "public.Log Lines", "public.absent"])
    res = cli("source", "check", "-c", path)
    assert res.exit_code == 1, res.output
    assert "FAIL tables exist: missing: public.absent" in res.output
    assert (
        "FAIL replica identity: no primary key and no REPLICA IDENTITY FULL/USING INDEX: public.Log Lines" in res.output
    )
    assert 'fix: ALTER TABLE "public"."Log Lines" REPLICA IDENTITY FULL;' in res.output
    assert "FAIL publication" in res.output
    assert "PASS wal_level: logical" in res.output
    assert "PASS replication role" in res.output

    path = env.config(["public.keyed", "public.Log Lines"])
    res = cli("source", "prepare", "-c", path)
    assert res.exit_code == 1, res.output
    assert "UPDATE and DELETE on them would fail on the source" in res.output
    with env.superuser() as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)

    env.tables_owned_by_role('ALTER TABLE public."Log Lines" REPLICA IDENTITY FULL')
    res = cli("source", "prepare", "-c", path, "--dry-run")
    assert res.exit_code == 0, res.output
    assert 'CREATE SCHEMA IF NOT EXISTS "cdc";' in res.output
    assert (
        f'CREATE PUBLICATION "cdc_{env.name}" FOR TABLE "public"."keyed", "public"."Log Lines", "cdc"."heartbeat", '
        f'"cdc"."debezium_signal_{env.name}" WITH (publish = \'insert, update, delete, truncate\');'
    ) in res.output
    with env.superuser() as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    res = cli("source", "prepare", "-c", path)
    assert res.exit_code == 0, res.output
    assert "PASS replica identity" in res.output
    assert "PASS publication" in res.output
    res = cli("source", "prepare", "-c", path)
    assert res.exit_code == 0, res.output
    assert "nothing to do: already prepared" in res.output


# --------------------------------------------------------------------------- failures and restart


def test_failed_task_shows_in_status_and_restart_recovers(env: Env, cli: Cli) -> None:
    cli.secrets.add(env.password)
    env.tables_owned_by_role("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    # Debezium treats the SQL error as retriable: fail after one retry 1 s later (default: 10 x 10 s).
    overrides = {**TEST_OVERRIDES, "errors.max.retries": 1, "retriable.restart.connector.wait.ms": 1000}
    path = env.config(["public.items"], connector_overrides=overrides)
    assert cli("source", "prepare", "-c", path).exit_code == 0
    res = cli("connectors", "apply", "-c", path)
    assert res.exit_code == 0, res.output

    # The heartbeat table disappears: the next heartbeat.action.query fails the task.
    env.run_sql("DROP TABLE cdc.heartbeat")
    wait_status(env, lambda s: s.failed)
    res = cli("connectors", "status", "-c", path)
    assert res.exit_code == 1, res.output
    assert "task 0: FAILED" in res.output
    assert "Could not execute heartbeat action query (Error: 42P01)" in res.output
    assert '"cdc.heartbeat" does not exist' in res.output
    assert "\tat " not in res.output  # condensed trace by default
    assert "connectors restart" in res.output
    res = cli("connectors", "status", "-c", path, "--json")
    assert res.exit_code == 1
    (state,) = json.loads(res.stdout)
    assert state["healthy"] is False
    assert state["tasks"][0]["state"] == "FAILED"
    assert "\tat " in state["tasks"][0]["trace"]

    res = cli("source", "check", "-c", path)
    assert res.exit_code == 1
    assert "FAIL control tables: cdc.heartbeat missing" in res.output

    # Fix the cause, restart only the failed task.
    assert cli("source", "prepare", "-c", path).exit_code == 0
    res = cli("connectors", "restart", "-c", path)
    assert res.exit_code == 0, res.output
    assert "task 0: RUNNING" in res.output
    env.run_sql("INSERT INTO public.items VALUES (7, 'after restart')")
    consume(env, f"{env.name}.public.items", has("c", id=7))
    res = cli("connectors", "status", "-c", path)
    assert res.exit_code == 0, res.output


def test_validation_errors_per_field_lifecycle_and_no_password_anywhere(
    env: Env, cli: Cli, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong = f"Wrong-{env.password}-X"
    cli.secrets.update({env.password, wrong})
    env.tables_owned_by_role("CREATE TABLE public.items (id int PRIMARY KEY)")

    # A wrong password never gets past validation: the error is reported on its field.
    bad = env.config(["public.items"], connector_overrides={**TEST_OVERRIDES, "database.password": wrong})
    assert cli("source", "prepare", "-c", bad).exit_code == 0
    res = cli("--log-level", "debug", "connectors", "apply", "-c", bad)
    assert res.exit_code == 1, res.output
    assert "invalid connector configuration" in res.output
    assert "database.hostname: Error while validating connector config:" in res.output
    assert "password authentication failed" in res.output
    with env.client() as client:
        assert client.get_config(env.connector) is None
    res = cli("source", "check", "-c", env.config(["public.items"], password=wrong))
    assert res.exit_code == 1, res.output
    assert "FAIL connection:" in res.output
    assert "password authentication failed" in res.output

    # The whole lifecycle, with debug logging.
    path = env.config(["public.items"])
    steps = [
        (["connectors", "apply"], 0, "RUNNING"),
        (["connectors", "pause"], 0, "PAUSED"),
        (["connectors", "resume"], 0, "task 0: RUNNING"),
        (["connectors", "stop"], 0, "STOPPED"),
        (["connectors", "status"], 1, "STOPPED"),
        (["connectors", "resume"], 0, "task 0: RUNNING"),
        (["connectors", "restart", "--all-tasks"], 0, "task 0: RUNNING"),
        (["connectors", "status", "--json"], 0, '"healthy": true'),
        (["connectors", "list"], 0, env.connector),
        (["connectors", "delete"], 2, "pass --all"),
        (["connectors", "delete", "--all"], 2, "pass --yes"),
        (["connectors", "delete", "--all", "--yes"], 0, "deleted"),
        (["connectors", "delete", "--source", env.name], 0, "absent"),
        (["connectors", "status"], 1, "not found"),
    ]
    for args, code, expected in steps:
        res = cli("--log-level", "debug", *args, "-c", path)
        assert res.exit_code == code, (args, res.output)
        assert expected in res.output, (args, res.output)

    # A real process too: stdout, stderr and JSON logs.
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--log-level", "debug", "source", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )
    cli.outputs.append(proc.stdout + proc.stderr)
    assert "PASS connection" in proc.stdout

    captured = capfd.readouterr()
    cli.outputs.append(captured.out + captured.err)
    # Kafka Connect's own log hides PASSWORD-type values too.
    cli.outputs.append((env.stack.settings.state / "connect" / "connect.log").read_text(errors="replace"))
    cli.assert_no_secret()


def test_user_errors_exit_2(tmp_path: Path, cli: Cli) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "connect": {"url": "http://127.0.0.1:9"},
                "sources": [{"name": "s", "database": "d", "user": "u", "tables": ["public.t"]}],
            }
        ),
        encoding="utf-8",
    )
    res = cli("connectors", "apply", "-c", path, "--source", "nope")
    assert res.exit_code == 2
    assert "unknown source 'nope'" in res.output
    bad_mode = tmp_path / "bad-mode.yaml"
    bad_mode.write_text(path.read_text().replace("tables:", "snapshot_mode: recovery\n  tables:"), encoding="utf-8")
    res = cli("connectors", "apply", "-c", bad_mode)
    assert res.exit_code == 2
    assert "sources[0].snapshot_mode: input should be 'initial'" in res.output
    res = cli("source", "check", "-c", tmp_path / "missing.yaml")
    assert res.exit_code == 2
