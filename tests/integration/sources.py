"""A per-test source for integration tests that register real connectors: a database, a connector
role with a distinctive password (never to be printed), names, and the CLI runner that checks it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql
from typer.testing import CliRunner, Result

from connectors.connect_client import ConnectClient, ConnectorStatus
from pipeline.cli import app
from pipeline.core.settings.models import ConnectSettings
from pipeline.localstack import LocalStack
from tests.conftest import Databases

# Topics of these tests: 2 partitions, 1 replica; quick heartbeats.
TEST_OVERRIDES = {"topic.creation.default.partitions": 2, "topic.creation.default.replication.factor": 1}


class Cli:
    """Runs `cdc-pipeline ...` in-process and keeps every output to check for secrets."""

    def __init__(self) -> None:
        self.outputs: list[str] = []
        self.secrets: set[str] = set()

    def __call__(self, *args: str | Path) -> Result:
        result = CliRunner().invoke(app, [str(a) for a in args])
        self.outputs.append(result.output)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"cdc-pipeline {args} raised {result.exception!r}\n{result.output}")
        return result

    def assert_no_secret(self) -> None:
        for output in self.outputs:
            for secret in self.secrets:
                assert secret not in output, f"a password was printed:\n{output}"


@pytest.fixture
def cli() -> Iterator[Cli]:
    """The CLI runner; after the test, no registered password may appear in any output."""
    runner = Cli()
    yield runner
    runner.assert_no_secret()


@dataclass
class Env:
    """One test's source: database, connector role and names."""

    stack: LocalStack
    db: Databases
    name: str
    role: str
    password: str
    tmp: Path
    configs: list[Path] = field(default_factory=list)

    @property
    def connector(self) -> str:
        return f"cdc-{self.name.replace('_', '-')}"

    @property
    def slot(self) -> str:
        return f"cdc_{self.name}"

    def superuser(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.db.source_dsn, autocommit=True)

    def run_sql(self, *statements: str | sql.Composable) -> None:
        with self.superuser() as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def tables_owned_by_role(self, *ddl: str) -> None:
        """Run ``ddl`` as the connector role (so it owns the tables, as Debezium's docs set it up)."""
        with self.superuser() as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.role)))
            for statement in ddl:
                conn.execute(statement)  # type: ignore[arg-type]

    def config(self, tables: list[str], **source: Any) -> Path:
        s = self.stack.settings
        entry: dict[str, Any] = {
            "name": self.name,
            "host": s.host,
            "port": s.source_pg_port,
            "database": self.db.name,
            "user": self.role,
            "password": self.password,
            "sslmode": "disable",
            "tables": tables,
            "heartbeat_interval_ms": 1000,
            "connector_overrides": dict(TEST_OVERRIDES),
        }
        entry.update(source)
        doc = {
            "kafka": {"bootstrap_servers": s.bootstrap_servers},
            "connect": {"url": s.connect_url, "timeout_s": 60},
            "sources": [entry],
        }
        path = self.tmp / f"config-{len(self.configs)}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        self.configs.append(path)
        return path

    def client(self) -> ConnectClient:
        return ConnectClient(ConnectSettings(url=self.stack.settings.connect_url))

    def slot_pid(self) -> int | None:
        with self.superuser() as conn:
            row = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
            ).fetchone()
        return None if row is None else row[0]


@pytest.fixture
def env(local_stack: LocalStack, databases: Databases, unique: Callable[[str], str], tmp_path: Path) -> Iterator[Env]:
    """A connector role owning the test's tables; its connector is deleted and the role dropped after."""
    role = unique("cdc")
    password = f"Pw-{role}-Zq9"  # distinctive: the tests assert it is never printed
    e = Env(local_stack, databases, unique("src"), role, password, tmp_path)
    with psycopg.connect(local_stack.settings.pg_dsn("source"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(databases.name), sql.Identifier(role))
        )
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    yield e
    with e.client() as client:
        client.delete(e.connector)
    with psycopg.connect(databases.source_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(local_stack.settings.pg_dsn("source"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def wait_status(env: Env, done: Callable[[ConnectorStatus], bool], timeout_s: float = 60) -> ConnectorStatus:
    with env.client() as client:
        status = client.wait_for(env.connector, done, timeout_s=timeout_s, interval_s=0.5)
    assert done(status), f"connector never reached the expected state: {status}"
    return status
