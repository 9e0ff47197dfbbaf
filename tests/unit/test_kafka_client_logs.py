"""librdkafka's log lines go through structlog (JSON), rate-limited (issue 22, defect 8).

A unit test of the handler, and subprocesses that reproduce the report: ``cdc-pipeline lag``
and a polled consumer against a closed local port (no broker). Before the fix, librdkafka
printed ``%3|...|FAIL|...`` lines straight to stderr, ~12 a second, which broke JSON logs.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.core.logs import configure_logging, kafka_logger

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert not [line for line in lines if line.startswith("%")], text[:2000]
    return [json.loads(line) for line in lines]  # every line is JSON (raises otherwise)


def test_repeats_are_logged_once_per_window_with_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    configure_logging("json", "debug")
    logger = kafka_logger(repeat_s=0.3)
    fail = (
        "FAIL",
        "rdkafka#consumer-1",
        "[thrd:h:1/bootstrap]: h:1/bootstrap: Connect failed (after {}ms in state CONNECT)",
    )
    for i in range(5):  # the same message (durations differ): logged once, then counted
        logger.log(40, "%s [%s] %s", fail[0], fail[1], fail[2].format(i))
    logger.log(30, "%s [%s] %s", "REQTMOUT", "rdkafka#consumer-1", "other")  # another message: logged
    time.sleep(0.35)
    logger.log(40, "%s [%s] %s", fail[0], fail[1], fail[2].format(9))  # window over: logged with the count
    records = _json_lines(err.getvalue())
    assert [(r["level"], r["facility"], r.get("repeated")) for r in records] == [
        ("error", "FAIL", None),
        ("warning", "REQTMOUT", None),
        ("error", "FAIL", 4),
    ]
    assert records[0]["event"] == "kafka client log"
    assert records[0]["client"] == "rdkafka#consumer-1"
    assert "after 0ms" in str(records[0]["message"])


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO, check=False)


def _config(tmp_path: Path, kafka: int, connect: int, pg: int) -> Path:
    cfg = tmp_path / "cdc.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            kafka: {{bootstrap_servers: "127.0.0.1:{kafka}"}}
            connect: {{url: "http://127.0.0.1:{connect}"}}
            sources:
              - {{name: app, host: 127.0.0.1, port: {pg}, database: app, user: postgres, password: pw,
                  tables: [public.t]}}
            pipelines:
              - name: p
                source: app
                target: {{url: "postgresql://postgres@127.0.0.1:{pg}/app", password: pw, schema: public}}
            """
        )
    )
    return cfg


@pytest.mark.timeout(120)
def test_lag_against_an_unreachable_broker_prints_one_error_naming_the_host(tmp_path: Path) -> None:
    kafka, connect, pg = _closed_port(), _closed_port(), _closed_port()
    cfg = _config(tmp_path, kafka, connect, pg)
    cli = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "--log-format",
        "json",
        "lag",
        "-c",
        str(cfg),
        "--wal-rate-sample",
        "0",
    ]
    started = time.monotonic()
    done = _run(cli, 90)
    assert time.monotonic() - started >= 5  # librdkafka had time to retry the broker many times
    assert done.returncode == 1, done.stderr[-2000:]
    _json_lines(done.stderr)
    kafka_errors = [line for line in done.stdout.splitlines() if "kafka" in line.lower()]
    assert kafka_errors == [
        f"  kafka: cannot reach Kafka at 127.0.0.1:{kafka}: Failed to get metadata: Local: Broker transport failure"
    ]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.timeout(60)
def test_snapshot_status_with_the_source_down_logs_one_json_error_naming_the_host(tmp_path: Path) -> None:
    pg = _closed_port()
    cfg = _config(tmp_path, _closed_port(), _closed_port(), pg)
    done = _run([sys.executable, "-m", "pipeline.cli", "snapshot", "status", "-c", str(cfg)], 45)
    assert done.returncode == 1
    [record] = _json_lines(done.stderr)
    assert record["level"] == "error" and record["host"] == f"127.0.0.1:{pg}"
    assert str(record["event"]).startswith(f"cannot reach source app (PostgreSQL) at 127.0.0.1:{pg}: ")


@pytest.mark.timeout(60)
def test_a_polled_consumer_logs_json_rate_limited() -> None:
    port = _closed_port()
    script = textwrap.dedent(
        f"""\
        import time
        from confluent_kafka import Consumer
        from pipeline.core.logs import configure_logging, kafka_logging
        configure_logging("json", "info")
        c = Consumer(kafka_logging({{"bootstrap.servers": "127.0.0.1:{port}", "group.id": "g"}}))
        end = time.monotonic() + 6
        while time.monotonic() < end:
            c.poll(0.2)
        c.close()
        """
    )
    done = _run([sys.executable, "-c", script], 45)
    assert done.returncode == 0, done.stderr[-2000:]
    records = _json_lines(done.stderr)
    fails = [r for r in records if r.get("facility") == "FAIL"]
    # Unlimited, librdkafka retries the connection about 12 times a second (reconnect.backoff.ms).
    assert 1 <= len(fails) <= 2, records
    assert f"127.0.0.1:{port}" in str(fails[0]["message"])
