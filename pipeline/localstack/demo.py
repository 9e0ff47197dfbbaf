"""The main job on real input: pgbench's workload replicated end to end (``make demo``).

Steps, on the local stack (``cdc-pipeline local up``):

1. ``pgbench -i -s SCALE`` on the source (100,000 ``pgbench_accounts`` rows per scale unit);
   ``pgbench_history`` (no primary key) gets ``REPLICA IDENTITY FULL``;
2. ``cdc-pipeline source prepare`` and ``load run`` with ``config/examples/pgbench.yaml``: the
   source uses ``initial_load: bulk``, so the tables are copied in parallel from the slot's exported
   snapshot (``filler`` masked by a transform), then the connector is registered with
   ``snapshot.mode=no_data`` (with ``CDC_SOURCES__0__INITIAL_LOAD=snapshot``: ``connectors apply``
   and Debezium's initial snapshot through the workers instead);
3. ``cdc-pipeline control`` (monitors, snapshot coordinator) and ``cdc-pipeline run`` (the data
   plane): the stream;
4. ``pgbench`` at a fixed rate (``-R``) with several clients for DURATION seconds (optionally the
   pipeline is stopped and restarted in the middle);
5. wait until the pipeline has caught up, ``cdc-pipeline verify``, and a summary.

A second pipeline (``pgbench_to_mariadb``, its own consumer group on the same change topics)
applies the three small tables into the local MariaDB and is verified too; it is skipped when
the stack runs without MariaDB (``CDC_LOCAL_MARIADB_ENABLED=false``).

Each run gets fresh names (topic prefix, slot, connector, consumer group: ``pgbench_r<N>``) and
fresh ``pgbench`` databases; the previous run's connector and slot are removed first, so
running the demo twice works. Every step runs the real CLI as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
import psycopg
import pymysql
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from sqlalchemy.dialects import mysql

from pipeline.core.settings.loading import load_settings
from pipeline.localstack import LocalStack
from pipeline.localstack.config import PG_PASSWORD, LocalStackSettings
from pipeline.localstack.jars import REPO_ROOT
from pipeline.localstack.services import drop_database_slots, pg_bindir

CONFIG = REPO_ROOT / "config" / "examples" / "pgbench.yaml"
DATABASE = "pgbench"
TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
PG_PIPELINE = "pgbench_to_target"
MARIADB_PIPELINE = "pgbench_to_mariadb"
MARIADB_TABLES = ("pgbench_branches", "pgbench_tellers", "pgbench_history")
MARIADB_DATABASES = ("pgbench", "pgbench_cdc_control")  # target.schema and control_schema in the config

_MARIADB_QUOTE = mysql.dialect().identifier_preparer.quote_identifier


def _mariadb_ident(name: str) -> str:
    """``name`` quoted as a MariaDB identifier by SQLAlchemy's MySQL dialect (backticks escaped)."""
    return _MARIADB_QUOTE(name)


class DemoError(RuntimeError):
    """A demo step failed; the message says which and shows the tail of its output."""


@dataclass(frozen=True)
class DemoOptions:
    """Demo parameters: pgbench scale, load duration (s), rate (transactions/s), clients."""

    scale: int = 10
    duration_s: int = 60
    rate: int = 500
    clients: int = 4
    restart_midway: bool = False
    metrics_port: int = 9108
    catch_up_timeout_s: float = 600.0
    mariadb: bool = True


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """All samples of a worker's ``/metrics``, parsed with prometheus-client's text parser."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, lbls), v in samples.items() if n == name and all(dict(lbls).get(k) == w for k, w in labels.items())
    )


def histogram_quantile(q: float, before: Samples, after: Samples, name: str) -> float | None:
    """Quantile ``q`` (0..1) of a histogram's observations made between two scrapes, by
    linear interpolation inside buckets (like PromQL's ``histogram_quantile``); seconds."""
    buckets: dict[float, float] = {}
    for (n, lbls), v in after.items():
        if n == f"{name}_bucket":
            le = float(dict(lbls)["le"])
            buckets[le] = buckets.get(le, 0.0) + v - before.get((n, lbls), 0.0)
    if not buckets:
        return None
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    if count <= 0:
        return None
    rank = q * count
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        c = buckets[bound]
        if c >= rank:
            if bound == float("inf"):
                return prev_bound
            width = c - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width if width else 1.0)
        prev_bound, prev_count = bound, c
    return prev_bound


@dataclass(frozen=True)
class BulkLoad:
    """``load run --json``'s figures: rows copied (every pipeline), copy seconds, rows/s."""

    rows: int
    seconds: float
    rows_per_s: float

    @property
    def line(self) -> str:
        """``N rows in X s (Y rows/s)``."""
        return f"{self.rows:,} rows in {self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s)"


@dataclass(frozen=True)
class Phase:
    """The initial load: how long it took, the worker's metrics right after it, and the bulk load's
    report when the source used ``initial_load: bulk``."""

    seconds: float
    samples: Samples
    bulk: BulkLoad | None = None

    @property
    def snapshotted(self) -> float:
        """Snapshot reads (op ``r``) the worker processed: applied, or stale (already there)."""
        return total(self.samples, "cdc_events_applied_total", op="r") + total(
            self.samples, "cdc_events_stale_total", op="r"
        )


@dataclass(frozen=True)
class Stream:
    """The load and catch-up: seconds, worker metrics before and after, pgbench's tps line, WAL
    the slot retained at the end (bytes, from the control plane)."""

    seconds: float
    base: Samples
    end: Samples
    tps: str
    retained_bytes: float

    @property
    def streamed(self) -> float:
        """Streamed change events applied (snapshot reads excluded)."""
        applied = total(self.end, "cdc_events_applied_total") - total(self.base, "cdc_events_applied_total")
        reads = total(self.end, "cdc_events_applied_total", op="r") - total(
            self.base, "cdc_events_applied_total", op="r"
        )
        return applied - reads


@dataclass(frozen=True)
class Verification:
    """``verify --json`` of the PostgreSQL pipeline and, when run, of the MariaDB one."""

    pg: subprocess.CompletedProcess[str]
    maria: subprocess.CompletedProcess[str] | None

    @property
    def ok(self) -> bool:
        """Both verified clean."""
        return self.pg.returncode == 0 and (self.maria is None or self.maria.returncode == 0)


class ProgressLine(Protocol):
    """A progress display: ``completed`` of ``total`` (None: unknown)."""

    def update(self, completed: float, total: float | None, detail: str = "") -> None:
        """Show the new state."""


ProgressFactory = Callable[[str, str], contextlib.AbstractContextManager[ProgressLine]]
"""``(title, unit) -> context manager yielding a ProgressLine`` (e.g. ``pipeline.cli.progress.ProgressView``)."""


class _PlainProgress:
    """Plain ``title: done/total unit (pct%)`` lines through ``say``, at most every ``interval_s``."""

    def __init__(self, title: str, unit: str, say: Callable[[str], None], interval_s: float = 5.0) -> None:
        self.title, self.unit, self.say, self.interval_s = title, unit, say, interval_s
        self._last = 0.0

    def update(self, completed: float, total: float | None, detail: str = "") -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s and (total is None or completed < total):
            return
        self._last = now
        pct = f" ({100 * completed / total:.0f}%)" if total else ""
        self.say(
            f"   {self.title}: {completed:,.0f}/{total or 0:,.0f} {self.unit}{pct}{' ' + detail if detail else ''}"
        )


class _RichProgress:
    """A rich bar (a terminal only; colourless under NO_COLOR)."""

    def __init__(self, progress: Progress, title: str) -> None:
        self.progress = progress
        self.task = progress.add_task(title, total=None)

    def update(self, completed: float, total: float | None, detail: str = "") -> None:
        self.progress.update(self.task, completed=completed, total=total)


@contextlib.contextmanager
def default_progress(title: str, unit: str, say: Callable[[str], None] = print) -> Iterator[ProgressLine]:
    """A rich bar when stdout is a terminal, else plain lines through ``say``."""
    console = Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
    if not console.is_terminal:
        yield _PlainProgress(title, unit, say)
        return
    columns = (
        TextColumn(f"   {title}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield _RichProgress(progress, title)


class Demo:
    """Runs the demo on ``stack``; ``say`` prints progress lines, ``progress`` draws the snapshot's
    progress (default: :func:`default_progress`)."""

    def __init__(
        self,
        stack: LocalStack,
        options: DemoOptions,
        say: Callable[[str], None] = print,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.stack = stack
        self.opts = options
        self.say = say
        self.progress: ProgressFactory = progress or (lambda title, unit: default_progress(title, unit, say))
        self.dir = stack.settings.state / "demo"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self._next_run_id()
        self.env = self._environment()
        self.worker: subprocess.Popen[bytes] | None = None
        self.maria_worker: subprocess.Popen[bytes] | None = None
        self.control: subprocess.Popen[bytes] | None = None
        self.with_mariadb = options.mariadb and stack.settings.mariadb_enabled
        self.bulk = load_settings(CONFIG, self.env).sources[0].initial_load == "bulk"
        self.bulk_load: BulkLoad | None = None

    # ------------------------------------------------------------------ set-up

    def _next_run_id(self) -> int:
        state = self.dir / "runs.json"
        last = json.loads(state.read_text())["last"] if state.exists() else 0
        return int(last) + 1

    def _names(self, run_id: int) -> dict[str, str]:
        base = f"pgbench_r{run_id}"
        return {
            "topic_prefix": base,
            "slot_name": f"cdc_{base}",
            "publication_name": f"cdc_{base}",
            "connector_name": f"cdc-{base.replace('_', '-')}",
            "consumer_group": f"cdc.{base}",
        }

    def _environment(self) -> dict[str, str]:
        s: LocalStackSettings = self.stack.settings
        names = self._names(self.run_id)
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP": s.bootstrap_servers,
            "CONNECT_URL": s.connect_url,
            "SOURCE_PORT": str(s.source_pg_port),
            "TARGET_PORT": str(s.target_pg_port),
            "METRICS_PORT": str(self.opts.metrics_port),
            "CDC_SOURCES__0__TOPIC_PREFIX": names["topic_prefix"],
            "CDC_SOURCES__0__SLOT_NAME": names["slot_name"],
            "CDC_SOURCES__0__PUBLICATION_NAME": names["publication_name"],
            "CDC_SOURCES__0__CONNECTOR_NAME": names["connector_name"],
            "CDC_PIPELINES__0__CONSUMER_GROUP": names["consumer_group"],
            "CDC_PIPELINES__1__CONSUMER_GROUP": f"{names['consumer_group']}_mariadb",
            "MARIADB_PORT": str(s.mariadb_port),
            "PGPASSWORD": PG_PASSWORD,
            "PYTHONUNBUFFERED": "1",
        }

    def cli(self, *args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``cdc-pipeline ARGS -c config/examples/pgbench.yaml`` as a user would."""
        argv = [sys.executable, "-m", "pipeline.cli", "--log-format", "console", *args, "-c", str(CONFIG)]
        if not quiet:
            self.say(f"$ cdc-pipeline {' '.join(args)} -c {CONFIG.relative_to(REPO_ROOT)}")
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise DemoError(f"cdc-pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def reset(self) -> None:
        """Remove the previous run's connector and slot, and recreate the pgbench databases."""
        previous = self._names(self.run_id - 1)
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"{self.stack.settings.connect_url}/connectors/{previous['connector_name']}", timeout=30)
        for role in ("source", "target"):
            with psycopg.connect(self.stack.settings.pg_dsn(role), autocommit=True) as conn:
                try:
                    drop_database_slots(conn, DATABASE)
                except TimeoutError as exc:
                    raise DemoError(str(exc)) from exc
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        if self.with_mariadb:
            maria = self.stack.mariadb.connect()
            try:
                with maria.cursor() as cur:
                    for name in MARIADB_DATABASES:  # fixed names from this module, not input
                        cur.execute("DROP DATABASE IF EXISTS " + _mariadb_ident(name))
            finally:
                maria.close()
        (self.dir / "runs.json").write_text(json.dumps({"last": self.run_id}))

    def pgbench_argv(self, *args: str) -> list[str]:
        """pgbench command line against the source's pgbench database."""
        s = self.stack.settings
        return [
            str(pg_bindir() / "pgbench"),
            "-h",
            s.host,
            "-p",
            str(s.source_pg_port),
            "-U",
            "postgres",
            *args,
            DATABASE,
        ]

    def pgbench(self, *args: str) -> str:
        """Run pgbench against the source database; returns its output."""
        proc = subprocess.run(self.pgbench_argv(*args), env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DemoError(f"pgbench {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    # ------------------------------------------------------------------ the worker

    def _start(self, name: str, args: list[str], port: int) -> subprocess.Popen[bytes]:
        """``python -m pipeline.cli ARGS`` in the background with metrics on ``port`` (log:
        <state>/demo/<name>.log)."""
        log = (self.dir / f"{name}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args, "-c", str(CONFIG)],
            env={**self.env, "CDC_METRICS__PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def _stop(self, proc: subprocess.Popen[bytes] | None, name: str) -> None:
        """SIGTERM ``proc`` and wait for its graceful exit (code 0)."""
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            if code != 0:
                raise DemoError(f"the {name} exited with {code}; see {self.dir / (name + '.log')}")

    def start_worker(self) -> None:
        """Start the data plane, ``cdc-pipeline run -p pgbench_to_target``, and wait for its /metrics."""
        self.worker = self._start("worker", ["run", "-p", PG_PIPELINE], self.opts.metrics_port)
        self._wait(lambda: self._metrics_up(self.worker, self.opts.metrics_port, "worker"), 60, "the worker's /metrics")

    def start_mariadb_worker(self) -> None:
        """Start ``cdc-pipeline run -p pgbench_to_mariadb`` (metrics on the next port)."""
        self.maria_worker = self._start("mariadb-worker", ["run", "-p", MARIADB_PIPELINE], self.opts.metrics_port + 1)

    def start_control(self) -> None:
        """Start the control plane, ``cdc-pipeline control`` (monitors, snapshot coordinator,
        cutover readiness; metrics two ports up), and wait for its /metrics."""
        port = self.opts.metrics_port + 2
        self.control = self._start("control", ["control"], port)
        self._wait(lambda: self._metrics_up(self.control, port, "control"), 60, "the control plane's /metrics")

    def stop_worker(self) -> None:
        """SIGTERM the worker and wait for its graceful exit."""
        self._stop(self.worker, "worker")
        self.worker = None

    def stop_all(self) -> None:
        """SIGTERM every process of the demo (workers, control plane) and wait for them."""
        self.stop_worker()
        self._stop(self.maria_worker, "mariadb-worker")
        self.maria_worker = None
        self._stop(self.control, "control")
        self.control = None

    def _metrics_up(self, proc: subprocess.Popen[bytes] | None, port: int, name: str) -> bool:
        if proc is not None and proc.poll() is not None:
            raise DemoError(f"the {name} exited with {proc.returncode}; see {self.dir / (name + '.log')}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)

    # ------------------------------------------------------------------ checks

    def counts(self, role: str) -> dict[str, int]:
        """Row count per pgbench table on the source or target (a table not created yet counts 0:
        the target creates a table with its first change event)."""
        out: dict[str, int] = {}
        with psycopg.connect(self.stack.settings.pg_dsn(role, DATABASE)) as conn:
            for table in TABLES:
                try:
                    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
                    out[table] = int(row[0]) if row else 0
                except psycopg.errors.UndefinedTable:
                    conn.rollback()
                    out[table] = 0
        return out

    def mariadb_counts(self) -> dict[str, int]:
        """Row count per table of the MariaDB pipeline in its target (0 before it exists)."""
        out = dict.fromkeys(MARIADB_TABLES, 0)
        try:
            conn = self.stack.mariadb.connect()
        except pymysql.MySQLError:
            return out
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (DATABASE,))
                present = {str(r[0]) for r in cur.fetchall()}
                for table in MARIADB_TABLES:  # fixed names from this module
                    if table in present:
                        cur.execute(f"SELECT count(*) FROM {_mariadb_ident(DATABASE)}.{_mariadb_ident(table)}")
                        row = cur.fetchone()
                        out[table] = int(row[0]) if row else 0
        finally:
            conn.close()
        return out

    def caught_up(self) -> bool:
        """Target counts equal source counts and no partition has consumer lag (both pipelines)."""
        source = self.counts("source")
        if source != self.counts("target"):
            return False
        if self.with_mariadb and self.mariadb_counts() != {t: source[t] for t in MARIADB_TABLES}:
            return False
        return total(scrape(self.opts.metrics_port), "cdc_consumer_lag_messages") == 0

    # ------------------------------------------------------------------ the run

    def run(self) -> int:
        """Run every step; returns 0 when verification is clean, 1 otherwise."""
        o = self.opts
        t_start = time.monotonic()
        self.say(
            f"== demo run {self.run_id}: pgbench scale {o.scale}, {o.duration_s}s at {o.rate} tx/s, {o.clients} clients"
        )
        self.reset()
        self.load_source()
        snapshot = self.snapshot_phase()
        stream = self.load_phase(snapshot)
        verify = self.verify_phase()
        self.stop_all()
        self.summary(snapshot, stream, verify, time.monotonic() - t_start)
        return 0 if verify.ok else 1

    def load_source(self) -> None:
        """``pgbench -i`` on the source, keyless history with REPLICA IDENTITY FULL, then
        ``source prepare`` and ``load run`` (or ``connectors apply`` without the bulk load)."""
        scale = self.opts.scale
        self.say(f"$ pgbench -i -s {scale} {DATABASE}")
        t = time.monotonic()
        self.pgbench("-i", "-s", str(scale), "-q")
        with psycopg.connect(self.stack.settings.pg_dsn("source", DATABASE), autocommit=True) as conn:
            conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        self.say(f"   {scale * 100_000:,} accounts loaded in {time.monotonic() - t:.1f}s")
        self.cli("source", "prepare")
        if self.bulk:
            self.bulk_load = self.run_bulk_load()
        else:
            self.cli("connectors", "apply")

    def run_bulk_load(self) -> BulkLoad:
        """``cdc-pipeline load run --json``: copy the tables, register the connector; print the figures."""
        proc = self.cli("load", "run", "--json")
        try:
            doc = json.loads(proc.stdout)
        except ValueError as exc:
            raise DemoError(f"load run printed no JSON report:\n{proc.stdout}{proc.stderr}") from exc
        for t in doc["tables"]:
            self.say(f"   {t['pipeline']} {t['table']}: {t['rows']:,} rows in {t['seconds']:.1f} s ({t['path']})")
        loaded = BulkLoad(int(doc["rows"]), float(doc["copy_seconds"]), float(doc["rows_per_s"]))
        self.say(f"   bulk load: {loaded.line}")
        return loaded

    def snapshot_phase(self) -> Phase:
        """Start the control plane and the workers; wait for the initial snapshot to land (after a
        bulk load the targets already hold the rows: only checked)."""
        self.say("$ cdc-pipeline control -c config/examples/pgbench.yaml   (in the background)")
        self.start_control()
        self.say("$ cdc-pipeline run -p pgbench_to_target -c config/examples/pgbench.yaml   (in the background)")
        t_snap = time.monotonic()
        self.start_worker()
        if self.with_mariadb:
            self.say("$ cdc-pipeline run -p pgbench_to_mariadb -c config/examples/pgbench.yaml   (in the background)")
            self.start_mariadb_worker()
        expected = self.counts("source")
        if self.bulk_load is not None:
            self._wait(lambda: self.counts("target") == expected, self.opts.catch_up_timeout_s, "the loaded rows")
            return Phase(self.bulk_load.seconds, scrape(self.opts.metrics_port), self.bulk_load)
        total = sum(expected.values())
        with self.progress("initial snapshot", "rows") as line:

            def landed() -> bool:
                got = self.counts("target")
                line.update(sum(min(got.get(t, 0), n) for t, n in expected.items()), total)
                return got == expected

            self._wait(landed, self.opts.catch_up_timeout_s, "the initial snapshot")
        phase = Phase(time.monotonic() - t_snap, scrape(self.opts.metrics_port))
        self.say(f"   initial snapshot: {int(phase.snapshotted):,} rows in {phase.seconds:.1f}s")
        return phase

    def load_phase(self, snapshot: Phase) -> Stream:
        """pgbench at a fixed rate (optionally restarting the worker midway), then catch-up."""
        o = self.opts
        self.say(f"$ pgbench -c {o.clients} -j 2 -T {o.duration_s} -R {o.rate} -n {DATABASE}")
        t_load = time.monotonic()
        load = subprocess.Popen(
            self.pgbench_argv("-c", str(o.clients), "-j", "2", "-T", str(o.duration_s), "-R", str(o.rate), "-n"),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = snapshot.samples
        if o.restart_midway:
            time.sleep(o.duration_s / 3)
            self.say("   stopping the pipeline in the middle of the load...")
            before_stop = scrape(o.metrics_port)
            self.stop_worker()
            time.sleep(min(10, o.duration_s / 4))
            self.say("   ...and starting it again")
            self.start_worker()
            base = _subtract(base, before_stop)  # the restarted process starts its counters at zero
        out, _ = load.communicate(timeout=o.duration_s + 120)
        if load.returncode != 0:
            raise DemoError(f"pgbench load failed:\n{out}")
        tps = next((line for line in out.splitlines() if line.startswith("tps")), "tps = ?")
        self._wait(self.caught_up, o.catch_up_timeout_s, "the pipeline to catch up")
        end = scrape(o.metrics_port)
        control = scrape(o.metrics_port + 2)
        return Stream(
            time.monotonic() - t_load, base, end, tps.strip(), total(control, "cdc_replication_slot_wal_retained_bytes")
        )

    def verify_phase(self) -> Verification:
        """``cdc-pipeline verify`` of both pipelines."""
        pg = self.cli("verify", "--json", "-p", PG_PIPELINE, check=False)
        maria = (
            self.cli("verify", "--json", "--no-store", "-p", MARIADB_PIPELINE, check=False)
            if self.with_mariadb
            else None
        )
        return Verification(pg, maria)

    def summary(self, snapshot: Phase, stream: Stream, verify: Verification, seconds: float) -> None:
        """Print the summary block."""
        say = self.say
        p50 = histogram_quantile(0.50, stream.base, stream.end, "cdc_commit_to_apply_seconds")
        p99 = histogram_quantile(0.99, stream.base, stream.end, "cdc_commit_to_apply_seconds")
        say("")
        say("== summary")
        if snapshot.bulk is not None:
            say(f"bulk load                   {snapshot.bulk.line}")
        else:
            say(
                f"rows snapshotted            {int(snapshot.snapshotted):,} in {snapshot.seconds:.1f}s "
                f"({snapshot.snapshotted / snapshot.seconds:,.0f} rows/s)"
            )
        say(f"pgbench                     {stream.tps}")
        say(
            f"change events applied       {int(stream.streamed):,} "
            f"({stream.streamed / stream.seconds:,.0f} events/s over {stream.seconds:.0f}s of load and catch-up)"
        )
        say(f"commit-to-apply latency     p50 {_fmt_s(p50)}, p99 {_fmt_s(p99)}")
        say(f"slot WAL retained at end    {stream.retained_bytes / 1024 / 1024:,.1f} MiB")
        say(f"verification                {'CLEAN: every table matches' if verify.ok else 'FAILED'}")
        for line in _verify_lines(verify.pg.stdout):
            say(f"  {line}")
        if verify.maria is not None:
            say("  into MariaDB (pipeline pgbench_to_mariadb, its own consumer group):")
            for line in _verify_lines(verify.maria.stdout):
                say(f"  {line}")
        say(
            f"metrics                     http://127.0.0.1:{self.opts.metrics_port}/metrics (worker), "
            f":{self.opts.metrics_port + 2}/metrics (control plane); "
            "Grafana: deploy/grafana/dashboards/cdc-pipeline.json"
        )
        say(f"total demo time             {seconds:.0f}s")
        if not verify.ok:
            say(verify.pg.stdout + verify.pg.stderr)
            if verify.maria is not None:
                say(verify.maria.stdout + verify.maria.stderr)

    def close(self) -> None:
        """Stop the workers and the control plane if they still run."""
        for proc in (self.worker, self.maria_worker, self.control):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)


def _subtract(a: Samples, b: Samples) -> Samples:
    """``a - b`` for every sample (counters of a restarted process continue from ``-b``)."""
    keys = set(a) | set(b)
    return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in keys}


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _verify_lines(stdout: str) -> list[str]:
    try:
        report = json.loads(stdout)
    except ValueError:
        return []
    tables = report.get("tables", []) if isinstance(report, Mapping) else []
    lines = []
    for t in tables:
        if isinstance(t, Mapping):
            excluded = t.get("excluded_columns") or []
            lines.append(
                f"{t.get('table')}: source {t.get('rows_source')} rows, target {t.get('rows_target')} rows, "
                f"{t.get('chunks')} chunks, {t.get('status', '')}"
                + (f" (excluded: {', '.join(map(str, excluded))})" if excluded else "")
            )
    return lines


def run_demo(
    stack_settings: LocalStackSettings,
    options: DemoOptions,
    say: Callable[[str], None] = print,
    progress: ProgressFactory | None = None,
) -> int:
    """Start (or reuse) the local stack and run the demo; returns the exit code. ``progress``
    draws the snapshot wait (default: a rich bar on a terminal, plain lines otherwise)."""
    stack = LocalStack(stack_settings, report=lambda line: say(f"   {line}"))
    say("$ cdc-pipeline local up")
    timings = stack.up()
    say(f"   local stack ready in {timings['total']:.1f}s")
    demo = Demo(stack, options, say, progress)
    try:
        return demo.run()
    finally:
        demo.close()
