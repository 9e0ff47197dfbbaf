"""Helpers for the snapshot/verify acceptance: the coordinator as a subprocess, config changes,
topic reads, the verify CLI in-process, bounded waits on the request queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import typer
import yaml
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql
from typer.testing import CliRunner

from connectors import source_prep
from connectors.connect_client import ConnectClient
from connectors.debezium import build_connector_config, notification_topic, signal_table
from pipeline.cli.snapshot_cmd import app as snapshot_app
from pipeline.cli.verify_cmd import verify
from pipeline.control.snapshot.model import Notification, SnapshotRequest
from pipeline.control.snapshot.notifications import parse_notification
from pipeline.control.snapshot.sql import SnapshotQueue
from pipeline.core.logs import configure_logging
from pipeline.core.settings.loading import load_settings
from pipeline.core.settings.root import Settings
from tests.e2e.conftest import E2EPipeline


def queue(p: E2EPipeline) -> SnapshotQueue:
    """A queue client of the pipeline's source (close it after use)."""
    return SnapshotQueue(p.settings.sources[0])


def start_coordinator(p: E2EPipeline, *args: str, config: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m pipeline.cli.snapshot_cmd coordinate -c CONFIG ARGS`` with its log in the
    pipeline's log folder (``coordinator-N.log``)."""
    n = len(list(p.log_dir.glob("coordinator-*.log")))
    log = (p.log_dir / f"coordinator-{n}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.snapshot_cmd", "coordinate", "-c", str(config or p.config_path), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def coordinator_logs(p: E2EPipeline) -> str:
    return "\n".join(f.read_text(errors="replace")[-8000:] for f in sorted(p.log_dir.glob("coordinator-*.log")))


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, p: E2EPipeline | None = None, every: float = 0.5
) -> Any:
    """Call ``check`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    logs = f"\n--- coordinator ---\n{coordinator_logs(p)}\n--- workers ---\n{p.worker_logs()}" if p else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r}){logs}")


def request_state(p: E2EPipeline, request_id: uuid.UUID) -> SnapshotRequest:
    q = queue(p)
    try:
        found = q.get(request_id)
    finally:
        q.close()
    assert found is not None
    return found


def write_config(p: E2EPipeline, tables: list[str]) -> Path:
    """A copy of the pipeline's YAML with the source's ``tables`` changed (nothing applied)."""
    doc = yaml.safe_load(p.config_path.read_text(encoding="utf-8"))
    doc["sources"][0]["tables"] = tables
    path = p.config_path.with_name(p.config_path.stem + f"-{len(tables)}.yaml")
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def apply_config(path: Path) -> None:
    """``source prepare`` then ``connectors apply`` with the YAML at ``path`` (as an operator would)."""
    settings = load_settings(path, {})
    src = settings.sources[0]
    source_prep.prepare(src)
    with ConnectClient(settings.connect) as client:
        client.apply(src.resolved_connector_name, build_connector_config(src))
        client.wait_for(src.resolved_connector_name, lambda st: st.healthy, timeout_s=90)


def target(p: E2EPipeline, statement: str, params: Any = None) -> int:
    """Run ``statement`` on the target behind the pipeline's back; returns the row count."""
    with psycopg.connect(p.target_dsn, autocommit=True) as conn:
        return conn.execute(statement, params).rowcount


def target_count(p: E2EPipeline, table: str) -> int:
    schema, _, name = table.partition(".")
    try:
        with psycopg.connect(p.target_dsn) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return -1
    return int(row[0]) if row else 0


def signal_rows(p: E2EPipeline, request_id: uuid.UUID) -> list[tuple[str, str, str | None]]:
    """Rows of the source's signal table with id ``request_id``."""
    sig = signal_table(p.settings.sources[0])
    with psycopg.connect(p.source_dsn) as conn:
        return conn.execute(
            sql.SQL("SELECT id, type, data FROM {} WHERE id = %s").format(sig.identifier()), (str(request_id),)
        ).fetchall()


def read_topic(settings: Settings, topic: str, timeout: float = 20) -> list[Any]:
    """Every message of ``topic`` from the beginning (until no message for 2 s, at most ``timeout``)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = meta.topics[topic].partitions if topic in meta.topics else {}
        consumer.assign([TopicPartition(topic, n, 0) for n in parts])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 2:
            msgs = consumer.consume(500, 0.5)
            for msg in msgs:
                if msg.error() is None:
                    out.append(msg)
            if msgs:
                quiet_since = time.monotonic()
        return out
    finally:
        consumer.close()


def notifications(p: E2EPipeline) -> list[Notification]:
    """Every notification of the pipeline's source so far."""
    msgs = read_topic(p.settings, notification_topic(p.settings.sources[0]))
    return [n for n in (parse_notification(m.value()) for m in msgs) if n is not None]


def incremental_reads(p: E2EPipeline, table: str, limit: int = 3) -> list[dict[str, Any]]:
    """``source`` blocks of the first ``limit`` incremental-snapshot reads of ``table``'s topic."""
    topic = f"{p.settings.sources[0].resolved_topic_prefix}.{table}"
    out: list[dict[str, Any]] = []
    for msg in read_topic(p.settings, topic):
        if not msg.value():
            continue
        payload = json.loads(msg.value())["payload"]
        if payload.get("op") == "r" and payload["source"].get("snapshot") == "incremental":
            out.append({k: payload["source"].get(k) for k in ("snapshot", "lsn", "sequence", "txId", "ts_ms")})
            if len(out) >= limit:
                break
    return out


def run_snapshot(config: Path, *args: str) -> tuple[int, str]:
    """``cdc-pipeline snapshot ARGS[0] -c CONFIG ARGS[1:]`` in-process; returns (exit code,
    output): stdout alone with ``--json`` (logs go to stderr), else stdout and stderr."""
    configure_logging("console", "info")
    result = CliRunner().invoke(snapshot_app, [args[0], "-c", str(config), *args[1:]])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout if "--json" in args else result.stdout + result.stderr


_VERIFY_APP = typer.Typer()
_VERIFY_APP.command()(verify)


def run_verify_text(config: Path, *args: str) -> tuple[int, str]:
    """``cdc-pipeline verify -c CONFIG ARGS`` in-process, human output; returns (exit code, stdout)."""
    configure_logging("console", "info")
    result = CliRunner().invoke(_VERIFY_APP, ["-c", str(config), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def run_verify(config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """``cdc-pipeline verify -c CONFIG --json ARGS`` in-process; returns (exit code, JSON, stderr)."""
    configure_logging("console", "info")  # as the CLI's root callback does: logs on stderr, not stdout
    result = CliRunner().invoke(_VERIFY_APP, ["-c", str(config), "--json", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    try:
        doc = json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"verify printed no JSON (exit {result.exit_code}):\n{result.output}") from exc
    return result.exit_code, doc, result.stderr
