"""The cutover scenario of issue 21, shared by the acceptance test (tests/e2e/test_cutover.py) and
the write-pause benchmark (bench/cutover_write_pause.py); no pytest in here.

A fresh database of one name on both clusters of the local stack: the SOURCE cluster's is the old
primary, the TARGET cluster's the new one. The old primary holds pgbench's tables (``pgbench -i``,
``pgbench_history`` with ``REPLICA IDENTITY FULL``) plus ``serial_items`` (``serial`` key) and
``identity_items`` (``GENERATED ALWAYS AS IDENTITY``), owned by an application role ``app_<token>``
that pgbench runs as. The new primary is pre-created with ``pg_dump --schema-only`` of the old one
(sequences, identity, defaults and replica identity come along), as a migration tool would.

The configuration has two sources (the old primary; the new primary with fresh slot, publication,
connector and topic prefix, ``snapshot_mode: no_data``) and two pipelines, both with
``target.versions: table``: forward (old -> new, ``cutover.reverse`` naming the other two, the
fence on the application role only) and reverse (new -> old, its own control schema). Workers
and every command are real ``cdc-pipeline`` processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
import yaml
from psycopg import sql

from pipeline.localstack import LocalStackSettings
from pipeline.localstack.config import PG_PASSWORD, PG_SUPERUSER
from pipeline.localstack.services import drop_database_slots, pg_bindir

Side = Literal["old", "new"]
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
KEYED_EXTRA = ("serial_items", "identity_items")
TABLES = [f"public.{t}" for t in (*PGBENCH_TABLES, *KEYED_EXTRA)]
PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
REVERSE_CONTROL_SCHEMA = "cdc_rev"  # heartbeat and signal tables of the new primary as a source
BACK_CONTROL_SCHEMA = "cdc_back"  # the reverse pipeline's control tables on the old primary
FORWARD_CONTROL_SCHEMA = "cdc_control"


@dataclass(frozen=True)
class Names:
    """Every name of one scenario, from a short lower-case token."""

    token: str

    @property
    def database(self) -> str:
        return f"co_{self.token}"

    @property
    def app_role(self) -> str:
        return f"app_{self.token}"

    @property
    def app_password(self) -> str:
        return f"pw_{self.token}"

    @property
    def old_source(self) -> str:
        return f"fs_{self.token}"

    @property
    def new_source(self) -> str:
        return f"rs_{self.token}"

    @property
    def forward(self) -> str:
        return f"pf_{self.token}"

    @property
    def reverse(self) -> str:
        return f"pb_{self.token}"

    def connector(self, source: str) -> str:
        """``cdc-<source>`` with ``_`` as ``-`` (the default connector name)."""
        return f"cdc-{source.replace('_', '-')}"


def config_document(stack: LocalStackSettings, names: Names, *, stable_s: float = 5.0) -> dict[str, Any]:
    """The YAML document of the scenario (heartbeats every second, gate held ``stable_s``)."""

    def source(name: str, port: int, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "host": stack.host,
            "port": port,
            "database": names.database,
            "user": PG_SUPERUSER,
            "password": PG_PASSWORD,
            "tables": TABLES,
            "heartbeat_interval_ms": 1000,
            **extra,
        }

    def target(port: int, control_schema: str) -> dict[str, Any]:
        url = f"postgresql://{PG_SUPERUSER}@{stack.host}:{port}/{names.database}"
        return {"url": url, "password": PG_PASSWORD, "versions": "table", "control_schema": control_schema}

    quick = {"batch": {"max_wait_ms": 200}, "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 2}}
    return {
        "kafka": {"bootstrap_servers": stack.bootstrap_servers},
        "connect": {"url": stack.connect_url},
        "sources": [
            source(names.old_source, stack.source_pg_port),
            source(
                names.new_source,
                stack.target_pg_port,
                snapshot_mode="no_data",
                control_schema=REVERSE_CONTROL_SCHEMA,
            ),
        ],
        "pipelines": [
            {
                "name": names.forward,
                "source": names.old_source,
                "target": target(stack.target_pg_port, FORWARD_CONTROL_SCHEMA),
                "cutover": {
                    "fence": {"method": "read_only", "roles": [names.app_role]},
                    "reverse": {"source": names.new_source, "pipeline": names.reverse},
                },
                **quick,
            },
            {
                "name": names.reverse,
                "source": names.new_source,
                "target": target(stack.source_pg_port, BACK_CONTROL_SCHEMA),
                **quick,
            },
        ],
        "cutover": {"max_lag_s": 5, "stable_s": stable_s, "interval_s": 1, "drain_timeout_s": 120},
        "metrics": {"enabled": False},
    }


def processed(output: str) -> int:
    """pgbench's "number of transactions actually processed" (0 when it printed none)."""
    found = PROCESSED.findall(output)
    return int(found[-1]) if found else 0


def find_number(doc: Any, key_part: str) -> float | None:
    """The first number under a key containing ``key_part`` anywhere in a JSON document."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key_part in str(key) and isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        for value in doc.values():
            found = find_number(value, key_part)
            if found is not None:
                return found
    if isinstance(doc, list):
        for value in doc:
            found = find_number(value, key_part)
            if found is not None:
                return found
    return None


@dataclass
class Scenario:
    """One cutover scenario on the stack; :meth:`setup`, then the steps, then :meth:`cleanup`."""

    stack: LocalStackSettings
    names: Names
    workdir: Path
    log: Callable[[str], None] = print
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    _columns: dict[str, list[str]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "cutover.yaml"

    def dsn(self, side: Side, *, app: bool = False, database: str | None = None) -> str:
        port = self.stack.source_pg_port if side == "old" else self.stack.target_pg_port
        user, password = (self.names.app_role, self.names.app_password) if app else (PG_SUPERUSER, PG_PASSWORD)
        return f"postgresql://{user}:{password}@{self.stack.host}:{port}/{database or self.names.database}"

    def sql(self, side: Side, statement: str | sql.Composable, params: Any = None, *, app: bool = False) -> list[Any]:
        """Run one statement (autocommit); returns its rows (empty for none)."""
        with psycopg.connect(self.dsn(side, app=app), autocommit=True) as conn:
            cur = conn.execute(statement if isinstance(statement, sql.Composable) else statement.encode(), params)
            return cur.fetchall() if cur.description else []

    # ------------------------------------------------------------------ setup

    def setup(self, *, stable_s: float = 5.0) -> None:
        """Databases, role, pgbench tables, the pg_dump'ed new primary, the config, the forward
        source prepared and its connector RUNNING (it snapshots the old primary)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ident = sql.Identifier
        for side in ("old", "new"):
            with psycopg.connect(self.dsn(side, database="postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(self.names.database)))
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        ident(self.names.app_role), sql.Literal(self.names.app_password)
                    )
                )
        self._run([str(pg_bindir() / "pgbench"), "-i", "-s", "1", "-q", self.dsn("old")])
        with psycopg.connect(self.dsn("old"), autocommit=True) as conn:
            conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
            conn.execute("CREATE TABLE serial_items (id serial PRIMARY KEY, v text NOT NULL)")
            conn.execute(
                "CREATE TABLE identity_items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text NOT NULL)"
            )
            for table in (*PGBENCH_TABLES, *KEYED_EXTRA):
                conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident(table), ident(self.names.app_role)))
        for table in KEYED_EXTRA:
            for i in range(20):
                self.sql("old", sql.SQL("INSERT INTO {} (v) VALUES (%s)").format(ident(table)), (f"old-{i}",), app=True)
        dump = self._run([str(pg_bindir() / "pg_dump"), "--schema-only", "--no-publications", self.dsn("old")])
        self._run([str(pg_bindir() / "psql"), "-q", "-v", "ON_ERROR_STOP=1", self.dsn("new")], stdin=dump)
        self.config_path.write_text(yaml.safe_dump(config_document(self.stack, self.names, stable_s=stable_s)))
        self.cli("connectors", "apply", "--prepare", "--no-wait", "--source", self.names.old_source)
        self.wait_connector(self.names.connector(self.names.old_source), timeout_s=300)

    def wait_connector(self, name: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        state: Any = None
        while time.monotonic() < deadline:
            resp = httpx.get(f"{self.stack.connect_url}/connectors/{name}/status", timeout=5)
            if resp.status_code == 200:
                body = resp.json()
                state = (body["connector"]["state"], [t["state"] for t in body.get("tasks", [])])
                if state[0] == "RUNNING" and state[1] and all(s == "RUNNING" for s in state[1]):
                    return
                if "FAILED" in (state[0], *state[1]):
                    raise AssertionError(f"connector {name} failed: {json.dumps(body)[:3000]}")
            time.sleep(0.5)
        raise AssertionError(f"connector {name} not RUNNING after {timeout_s}s: {state}")

    # ------------------------------------------------------------------ processes

    def _run(self, argv: list[str], stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=900, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return proc.stdout

    def cli(self, *args: str, check: bool = True, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
        """``cdc-pipeline <args> -c CONFIG`` as a process; raises on a non-zero exit with ``check``."""
        argv = [sys.executable, "-m", "pipeline.cli", "--log-format", "console", *args, "-c", str(self.config_path)]
        self.commands.append("cdc-pipeline " + " ".join(args))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        with (self.workdir / "commands.log").open("a") as out:
            out.write(f"$ cdc-pipeline {' '.join(args)}  -> {proc.returncode}\n{proc.stdout}\n{proc.stderr[-20000:]}\n")
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cdc-pipeline {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
            )
        return proc

    def start_worker(self, pipeline: str) -> None:
        log = (self.workdir / f"worker-{pipeline}.log").open("ab")
        self.workers[pipeline] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "-c", str(self.config_path), "-p", pipeline],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def check_workers(self) -> None:
        for name, proc in self.workers.items():
            if proc.poll() is not None:
                tail = (self.workdir / f"worker-{name}.log").read_text(errors="replace")[-4000:]
                raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{tail}")

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)

    def pgbench(self, side: Side, seconds: int, rate: int = 500, clients: int = 4) -> subprocess.Popen[str]:
        """pgbench's default TPC-B-like script as the application role; read its output with
        :func:`processed` once it exits (it ends early when its sessions are fenced)."""
        argv = [str(pg_bindir() / "pgbench"), "-n", "-R", str(rate), "-c", str(clients), "-j", "2", "-T", str(seconds)]
        self.commands.append(" ".join(argv[1:]) + f" ({side} primary)")
        return subprocess.Popen(
            [*argv, self.dsn(side, app=True)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    # ------------------------------------------------------------------ state of the two sides

    def fingerprint(self, side: Side) -> dict[str, tuple[int, int]]:
        """``table -> (rows, sum of hashtext(row text))`` of every user table over the old primary's
        columns (a sink's own columns left out): equal data, equal print."""
        out: dict[str, tuple[int, int]] = {}
        for table in (*PGBENCH_TABLES, *KEYED_EXTRA):
            columns = self.columns(table)
            row = self.sql(
                side,
                sql.SQL("SELECT count(*), coalesce(sum(hashtext(ROW({})::text)::bigint), 0) FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
                ),
            )[0]
            out[table] = (int(row[0]), int(row[1]))
        return out

    def columns(self, table: str) -> list[str]:
        """Columns of ``public.<table>`` on the old primary, in order."""
        if table not in self._columns:
            rows = self.sql(
                "old",
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
                " AND table_name = %s ORDER BY ordinal_position",
                (table,),
            )
            self._columns[table] = [r[0] for r in rows if not r[0].startswith("__cdc_")]
        return self._columns[table]

    def wait_equal(self, timeout_s: float = 300) -> float:
        """Wait until both sides' user tables are equal; returns the seconds it took."""
        start = time.monotonic()
        old: Any = None
        new: Any = None
        while time.monotonic() - start < timeout_s:
            self.check_workers()
            old, new = self.fingerprint("old"), self.fingerprint("new")
            if old == new:
                return time.monotonic() - start
            time.sleep(1)
        raise AssertionError(f"the two sides did not converge in {timeout_s}s:\nold {old}\nnew {new}")

    def balances(self, side: Side) -> tuple[int, int, int, int]:
        """sum(abalance), sum(bbalance), sum(tbalance), sum(pgbench_history.delta)."""
        row = self.sql(
            side,
            "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),"
            " (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),"
            " (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),"
            " (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
        )[0]
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def history(self, side: Side) -> list[tuple[Any, ...]]:
        return sorted(self.sql(side, "SELECT tid, bid, aid, delta, mtime::text FROM pgbench_history"))

    def cdc_columns(self, side: Side) -> list[str]:
        """``table.column`` of every ``__cdc_*`` column in the public schema."""
        rows = self.sql(
            side,
            "SELECT table_name || '.' || column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name LIKE '\\_\\_cdc\\_%'",
        )
        return sorted(r[0] for r in rows)

    def slots(self, side: Side) -> list[str]:
        rows = self.sql(side, "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
        return sorted(r[0] for r in rows)

    def schemas(self, side: Side) -> list[str]:
        return sorted(r[0] for r in self.sql(side, "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cdc%'"))

    def connectors(self) -> list[str]:
        found = httpx.get(f"{self.stack.connect_url}/connectors", timeout=10).json()
        mine = {self.names.connector(self.names.old_source), self.names.connector(self.names.new_source)}
        return sorted(set(found) & mine)

    # ------------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        """Workers stopped, connectors deleted, slots, databases and roles dropped (best effort)."""
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for name in (self.names.connector(self.names.old_source), self.names.connector(self.names.new_source)):
            try:
                httpx.delete(f"{self.stack.connect_url}/connectors/{name}", timeout=30)
            except httpx.HTTPError as exc:
                self.log(f"cleanup: connector {name}: {exc}")
        for side in ("old", "new"):
            try:
                with psycopg.connect(self.dsn(side, database="postgres"), autocommit=True) as conn:
                    drop_database_slots(conn, self.names.database, timeout_s=60)
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.names.database))
                    )
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.names.app_role)))
            except (psycopg.Error, TimeoutError) as exc:
                self.log(f"cleanup: {side}: {exc}")


@dataclass
class Outcome:
    """What one run of the scenario measured and found (figures for the report and benchmark)."""

    cutover_rc: int
    report: Any
    write_pause_s: float | None
    processed_old: int
    processed_new: int
    catch_up_s: float
    seconds: dict[str, float] = field(default_factory=dict)


def run_cutover_under_load(
    scenario: Scenario,
    *,
    rate: int = 500,
    clients: int = 4,
    lead_s: float = 10,
    after_s: int = 20,
    attempts: int = 3,
    retry_pause_s: float = 5.0,
) -> Outcome:
    """The scenario after :meth:`Scenario.setup`: workers, a clean verification before the load,
    pgbench on the old primary, ``cutover run --reverse --json`` under it, pgbench on the new primary
    for ``after_s`` seconds, then the wait until the old primary has everything again.

    A cutover the gate refuses (lag not held under ``max_lag_s`` on a busy machine: exit 1, the
    source untouched) is run again ``retry_pause_s`` seconds later, ``attempts`` runs at most, as an operator would."""
    names = scenario.names
    seconds: dict[str, float] = {}
    scenario.start_worker(names.forward)
    scenario.start_worker(names.reverse)
    seconds["initial_copy"] = scenario.wait_equal(timeout_s=600)
    scenario.cli("verify", "-p", names.forward)
    bench = scenario.pgbench("old", seconds=900, rate=rate, clients=clients)
    time.sleep(lead_s)
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        run = scenario.cli("cutover", "run", "--reverse", "--json", "-p", names.forward, check=False)
        seconds["cutover_run"] = time.monotonic() - started
        seconds["cutover_attempts"] = attempt
        if run.returncode == 0 or not _gate_refused(_json_or_text(run.stdout)) or attempt == attempts:
            break
        scenario.log(f"cutover attempt {attempt}: the gate refused (source untouched); trying again")
        time.sleep(retry_pause_s)
    if bench.poll() is None:  # not fenced (the cutover failed): stop it to read its count
        bench.send_signal(signal.SIGINT)
    old_output = bench.communicate(timeout=120)[0]
    scenario.log(f"cutover run exited {run.returncode}; stderr tail:\n{run.stderr[-2000:]}")
    report = _json_or_text(run.stdout)
    outcome = Outcome(
        run.returncode, report, find_number(report, "write_pause"), processed(old_output), 0, 0.0, seconds
    )
    if run.returncode != 0:
        return outcome
    after = scenario.pgbench("new", seconds=after_s, rate=rate, clients=clients)
    outcome.processed_new = processed(after.communicate(timeout=after_s + 120)[0])
    outcome.catch_up_s = scenario.wait_equal(timeout_s=300)
    return outcome


def _gate_refused(report: Any) -> bool:
    """The run stopped at the gate: ``gate.ok`` false and nothing fenced."""
    gate = report.get("gate") if isinstance(report, dict) else None
    return isinstance(gate, dict) and gate.get("ok") is False and not report.get("fence")


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"unparsed": text[-4000:]}


def tokens() -> Iterator[str]:
    """Short unique tokens (for the benchmark, which has no pytest ``unique`` fixture)."""
    while True:
        yield os.urandom(5).hex()
