"""Security checks (issue 11): secrets never reach logs (debug level), CLI output, /metrics or
/readyz; Kafka TLS/SASL and Connect basic-auth/TLS settings pass through from the configuration.

SQL injection: hostile schema/table/column names from events go through every statement of the
PostgreSQL sink as quoted identifiers (:func:`test_hostile_identifiers_in_events_are_quoted`;
see also ``test_postgres_sink.py::test_hostile_identifiers`` and the e2e ``Odd Schema`` test).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from connectors.connect_client import ConnectClient, ConnectError, RetryPolicy
from pipeline.core.events import ChangeEvent, Column, Op, Position, TableId
from pipeline.core.reduce import reduce_events
from pipeline.core.settings.loading import load_settings
from pipeline.core.settings.models import ConnectSettings, KafkaSettings
from pipeline.localstack import LocalStack
from sinks.postgres.sink import PostgresSink
from tests.conftest import Databases

SECRET_SOURCE = f"SrcPw-{uuid.uuid4().hex}"
SECRET_TARGET = f"TgtPw-{uuid.uuid4().hex}"
SECRET_CONNECT = f"ConPw-{uuid.uuid4().hex}"
SECRET_SASL = f"SaslPw-{uuid.uuid4().hex}"
SECRETS = [SECRET_SOURCE, SECRET_TARGET, SECRET_CONNECT, SECRET_SASL]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- pass-through


def test_kafka_client_config_passes_tls_and_sasl_through(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    pw_file = tmp_path / "sasl.pw"
    pw_file.write_text(SECRET_SASL + "\n", encoding="utf-8")
    kafka = KafkaSettings(
        bootstrap_servers="b1:9093,b2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password_file=pw_file,
        ssl_ca_location=ca,
        client_properties={
            "ssl.endpoint.identification.algorithm": "https",
            "enable.ssl.certificate.verification": True,
        },
    )
    assert kafka.client_config() == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": SECRET_SASL,  # read from the file, trailing newline stripped
        "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
        "enable.ssl.certificate.verification": "true",
    }
    assert SECRET_SASL not in repr(kafka) and SECRET_SASL not in kafka.model_dump_json()


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []  # noqa: RUF012 - shared by the server's handler instances

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        auth = base64.b64decode((self.headers.get("Authorization") or "Basic ").split(" ", 1)[1]).decode()
        body = json.dumps({"error_code": 500, "message": f"cannot serve {auth}: backend down"})
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_args: Any) -> None:
        return


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_connect_client_sends_basic_auth_and_redacts_errors(recorder: str) -> None:
    """Basic auth reaches the Connect REST server; an error body echoing the credentials is
    redacted from the raised error."""
    settings = ConnectSettings(url=recorder, username="ops", password=SECRET_CONNECT, timeout_s=5, verify_tls=False)
    with ConnectClient(settings, retry=RetryPolicy(max_attempts=1)) as client, pytest.raises(ConnectError) as info:
        client.list_connectors()
    expected = "Basic " + base64.b64encode(f"ops:{SECRET_CONNECT}".encode()).decode()
    assert _Recorder.seen and _Recorder.seen[0].get("Authorization") == expected
    assert "ops:" in str(info.value) and SECRET_CONNECT not in str(info.value)


# --------------------------------------------------------------------------- no secret anywhere


def _roles(stack: LocalStack, db: Databases) -> Iterator[None]:
    made = []
    for role, name, secret in (("source", "sec_src", SECRET_SOURCE), ("target", "sec_tgt", SECRET_TARGET)):
        with psycopg.connect(stack.settings.pg_dsn(role), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER REPLICATION PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(secret)
                )
            )
        made.append((role, name))
    try:
        yield
    finally:
        for role, name in made:  # what the role created in the test database goes first
            with psycopg.connect(stack.settings.pg_dsn(role, db.name), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            with psycopg.connect(stack.settings.pg_dsn(role), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def secret_roles(local_stack: LocalStack, databases: Databases) -> Iterator[None]:
    """Login roles on both clusters whose passwords are the test's secrets."""
    yield from _roles(local_stack, databases)


def _config(
    stack: LocalStack, db: Databases, tmp_path: Path, port: int, target_secret: str, source_secret: str = SECRET_SOURCE
) -> Path:
    s = stack.settings
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": s.bootstrap_servers},
        "connect": {"url": s.connect_url, "username": "ops", "password": SECRET_CONNECT},
        "sources": [
            {
                "name": "sec",
                "host": s.host,
                "port": s.source_pg_port,
                "database": db.name,
                "user": "sec_src",
                "password": source_secret,
                "tables": ["public.items"],
            }
        ],
        "pipelines": [
            {
                "name": "sec",
                "source": "sec",
                "target": {
                    "url": f"postgresql://sec_tgt@{s.host}:{s.target_pg_port}/{db.name}",
                    "password": target_secret,
                },
                "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 0.5, "max_elapsed_s": 3},
            }
        ],
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": port},
    }
    path = tmp_path / f"sec-{port}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _cli(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--log-level", "debug", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc.stdout + proc.stderr


def _assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret appears in {where}:\n{text[-3000:]}"


def test_no_secret_in_debug_logs_cli_metrics_or_readyz(
    local_stack: LocalStack, databases: Databases, secret_roles: None, tmp_path: Path
) -> None:
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.items (id int PRIMARY KEY, secret_note text)")
        conn.execute("INSERT INTO public.items VALUES (1, 'row')")
    port = _free_port()
    config = _config(local_stack, databases, tmp_path, port, SECRET_TARGET)
    assert load_settings(config, {}).kafka.client_config()  # the file is valid

    shown = _cli("config", "show", "-c", str(config))
    assert "sec_tgt" in shown  # the command did print the configuration
    _assert_clean("config show", shown)
    _assert_clean("config show --json", _cli("config", "show", "--json", "-c", str(config)))
    _assert_clean("connectors status", _cli("connectors", "status", "-c", str(config)))
    _assert_clean("source check", _cli("source", "check", "-c", str(config)))

    log = tmp_path / "worker.log"
    worker = _start_worker(config, log)
    try:
        bodies: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(bodies) < 3:
            for path in ("/metrics", "/readyz", "/healthz"):
                try:
                    bodies[path] = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=3).text
                except httpx.HTTPError:
                    time.sleep(0.5)
        assert set(bodies) == {"/metrics", "/readyz", "/healthz"}, log.read_text()
        time.sleep(3)  # let the monitors run a round
        bodies["/metrics"] = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
        assert "cdc_" in bodies["/metrics"]
        for path, body in bodies.items():
            _assert_clean(path, body)
    finally:
        worker.terminate()
        worker.wait(60)
    _assert_clean("worker debug log", log.read_text(errors="replace"))

    # Failure path: wrong passwords (the wrong ones contain the right ones, so echoing what
    # was attempted would show up). The control plane's monitors log authentication errors for
    # both: the source (slot monitor) and the target (heartbeat read); the worker runs beside it.
    bad = _config(local_stack, databases, tmp_path, _free_port(), "wrong-" + SECRET_TARGET, "wrong-" + SECRET_SOURCE)
    log = tmp_path / "worker-bad.log"
    control_log = tmp_path / "control-bad.log"
    worker = _start_worker(bad, log)
    control = _start_worker(bad, control_log, "control", {"CDC_METRICS__PORT": str(_free_port())})
    try:
        deadline = time.monotonic() + 90
        while control_log.read_text(errors="replace").count("authentication failed") < 2:
            assert time.monotonic() < deadline and control.poll() is None, control_log.read_text(errors="replace")[
                -3000:
            ]
            time.sleep(0.5)
    finally:
        for proc in (worker, control):
            proc.terminate()
            proc.wait(60)
    text = control_log.read_text(errors="replace")
    assert "sec_src" in text, text[-3000:]  # the source login was refused and logged
    _assert_clean("worker log with wrong passwords", log.read_text(errors="replace"))
    _assert_clean("control log with wrong passwords", text)
    # The target login, refused: `lag` reads the target's offsets and heartbeat through the Target seam.
    lag = _cli("lag", "-c", str(bad), "--wal-rate-sample", "0")
    assert "sec_tgt" in lag and "authentication failed" in lag, lag[-3000:]
    _assert_clean("lag with wrong passwords", lag)


def _start_worker(
    config: Path, log: Path, command: str = "run", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--log-level", "debug", command, "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


# --------------------------------------------------------------------------- SQL injection


def test_hostile_identifiers_in_events_are_quoted(databases: Databases) -> None:
    """Schema, table and column names crafted to break out of SQL go through every statement the
    sink issues (create, add column, upsert, delete, keyless delete, truncate) as quoted
    identifiers: the data lands under those exact names and a canary table survives."""
    with psycopg.connect(databases.target_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.canary (id int)")
    offsets = count()
    keyed = TableId('s"; DROP TABLE public.canary; --', "t' OR '1'='1")
    keyless = TableId("public", 'x"); DELETE FROM public.canary; --')
    key_col, col, new_col = 'id"); DROP TABLE public.canary; --', "v; TRUNCATE public.canary", "n\\'; --"

    def ev(
        table: TableId, op: Op, pos: int, row: dict[str, object], cols: tuple[Column, ...], keys: tuple[str, ...]
    ) -> ChangeEvent:
        return ChangeEvent(
            topic="t",
            partition=0,
            offset=next(offsets),
            table=table,
            op=op,
            position=Position(pos, pos),
            ts_ms=0,
            key={k: row[k] for k in keys} if keys else None,
            after=None if op is Op.DELETE else row,
            before=row if op is Op.DELETE else None,
            columns=cols,
            key_columns=keys,
            target=table,  # written under the hostile schema too, not the default one
        )

    base = (Column(key_col, "int32", optional=False), Column(col, "string"))
    wider = (*base, Column(new_col, "string"))
    sink = PostgresSink(databases.target_dsn)
    try:
        batches = [
            [ev(keyed, Op.CREATE, 1, {key_col: 1, col: "a"}, base, (key_col,)),
             ev(keyed, Op.CREATE, 2, {key_col: 2, col: "b"}, base, (key_col,)),
             ev(keyless, Op.CREATE, 3, {key_col: 7, col: "k"}, base, ()),
             ev(keyless, Op.CREATE, 4, {key_col: 8, col: "k"}, base, ())],
            [ev(keyed, Op.UPDATE, 5, {key_col: 1, col: "a2", new_col: "new"}, wider, (key_col,)),
             ev(keyed, Op.DELETE, 6, {key_col: 2, col: "b", new_col: None}, wider, (key_col,)),
             ev(keyless, Op.DELETE, 7, {key_col: 7, col: "k"}, base, ())],
        ]  # fmt: skip
        for batch in batches:
            sink.apply(reduce_events(batch, "public"), "g", {})
    finally:
        sink.close()
    with psycopg.connect(databases.target_dsn) as conn:
        got = conn.execute(
            sql.SQL("SELECT {}, {}, {} FROM {}.{}").format(
                sql.Identifier(key_col), sql.Identifier(col), sql.Identifier(new_col),
                sql.Identifier(keyed.schema), sql.Identifier(keyed.table),
            )
        ).fetchall()  # fmt: skip
        left = conn.execute(
            sql.SQL("SELECT {} FROM {}.{}").format(
                sql.Identifier(key_col), sql.Identifier(keyless.schema), sql.Identifier(keyless.table)
            )
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM public.canary").fetchone() == (0,)
    assert got == [(1, "a2", "new")]
    assert left == [(8,)]
