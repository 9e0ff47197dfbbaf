"""End-to-end commit-to-apply latency under pgbench at fixed rates, and catch-up after a pause.

Against a running local stack: a fresh source database replicated by a real Debezium 3.6
PostgreSQL connector (set up with the product's own ``cdc-pipeline source prepare`` and
``connectors apply``) and ``--workers`` pipeline workers (``cdc-pipeline run``, one consumer
group; default 1) into a fresh target database of the same name.

Measurement. Every pgbench transaction updates one ``pgbench_accounts`` row and, as its last
statement before ``COMMIT``, inserts one row into ``public.cdc_latency_probe`` holding the
source's ``clock_timestamp()`` (the commit follows within the same client round trip; sub-ms
on this machine). On the target, an ``AFTER INSERT`` row trigger on the replicated probe table
copies ``(id, src_ts, clock_timestamp())`` into ``cdc_latency_log`` when the sink writes the
row, i.e. inside the sink's batch transaction, just before its commit. Both clusters run on
this machine, so both clocks are the same clock. Latency = ``applied_at - src_ts`` per source
transaction: Debezium's ``poll.interval.ms``, Kafka, the worker's batching
(``batch.max_wait_ms``) and the apply itself. As a cross-check the worker's own
``cdc_commit_to_apply_seconds`` histogram (source ``ts_ms`` -> target commit, bucketed) is read
from the workers' ``/metrics`` (worker i on ``--metrics-port`` + i; buckets summed).

Phases: for each ``--rates`` value, ``pgbench -R RATE -T DURATION`` (the achieved rate is
pgbench's ``tps``); then, at ``--pause-rate``, every worker is frozen (SIGSTOP) for
``--pause-seconds`` under load and resumed (SIGCONT): catch-up time is the time from the
resume until every probe committed before the resume has been applied and the newest applied
probe is less than 1 s old.

    .venv/bin/python bench/e2e_latency.py                          # 500, 2000, 5000 tx/s, 60 s each
    .venv/bin/python bench/e2e_latency.py --poll-interval-ms 100 --max-wait-ms 50
    .venv/bin/python bench/e2e_latency.py --rates 2000 --workers 2    # 4 partitions, 2 each
    .venv/bin/python bench/e2e_latency.py --smoke --state-dir .local-stack-test-3

Exit status: 0 when every probe arrived and the probe tables are equal at the end, 1 otherwise,
2 when the stack is unreachable. No latency assertion: figures only.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apply_throughput as at
import httpx
import psycopg
import yaml
from psycopg import sql

from pipeline.localstack import LocalStackSettings
from pipeline.localstack.config import PG_PASSWORD, PG_SUPERUSER
from pipeline.localstack.demo import Samples, histogram_quantile, scrape
from pipeline.localstack.services import drop_database_slots, pg_bindir

REPO = Path(__file__).resolve().parents[1]
PROBE = "cdc_latency_probe"
LOG = "cdc_latency_log"
CAUGHT_UP_AGE_S = 1.0

Conn = psycopg.Connection[tuple[Any, ...]]


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default=None, help="comma-separated pgbench rates, tx/s (default 500,2000,5000)")
    p.add_argument("--duration", type=int, default=None, help="seconds per rate (default 60)")
    p.add_argument("--clients", type=int, default=8, help="pgbench clients (default 8)")
    p.add_argument("--scale", type=int, default=1, help="pgbench scale: 100,000 accounts per unit (default 1)")
    p.add_argument("--pause-rate", type=int, default=None, help="rate of the pause phase (default 2000)")
    p.add_argument("--pause-seconds", type=int, default=None, help="worker frozen this long (default 30; 0: skip)")
    p.add_argument("--pause-tail", type=int, default=None, help="load seconds after the resume (default 60)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the change topics (default 4)")
    p.add_argument(
        "--poll-interval-ms", type=int, default=None, help="Debezium poll.interval.ms (default: product's, 100)"
    )
    p.add_argument("--max-wait-ms", type=int, default=None, help="pipeline batch.max_wait_ms (default: product's)")
    p.add_argument(
        "--client-property", action="append", default=[], metavar="KEY=VALUE", help="kafka.client_properties entry"
    )
    p.add_argument("--workers", type=int, default=1, help="pipeline workers, one consumer group (default 1)")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="worker 0's /metrics port, worker i's + i (default 9200 + slot)"
    )
    p.add_argument("--smoke", action="store_true", help="tiny run: one rate of 100 tx/s for 5 s, 5 s pause")
    p.add_argument("--state-dir", type=Path, default=None, help="local stack state folder (default .local-stack)")
    p.add_argument("--kafka-port", type=int, default=None, help="override the stack's Kafka port")
    p.add_argument("--target-port", type=int, default=None, help="override the stack's target PostgreSQL port")
    p.add_argument("--keep", action="store_true", help="keep databases, connector, topics and logs (debugging)")
    args = p.parse_args(argv)
    if args.rates is None:
        args.rates = "100" if args.smoke else "500,2000,5000"
    try:
        args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--rates {args.rates!r}: write integers separated by commas")
    if args.duration is None:
        args.duration = 5 if args.smoke else 60
    if args.pause_rate is None:
        args.pause_rate = 100 if args.smoke else 2000
    if args.pause_seconds is None:
        args.pause_seconds = 5 if args.smoke else 30
    if args.pause_tail is None:
        args.pause_tail = 15 if args.smoke else 60
    for prop in args.client_property:
        if "=" not in prop:
            p.error(f"--client-property {prop!r}: write KEY=VALUE")
    if (
        not args.rate_list
        or min([*args.rate_list, args.duration, args.clients, args.scale, args.partitions, args.workers]) < 1
    ):
        p.error("rates, --duration, --clients, --scale, --partitions and --workers must be >= 1")
    return args


# --------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Names:
    """Everything this run creates: database (source and target), source/pipeline name."""

    name: str

    @property
    def connector(self) -> str:
        """Kafka Connect connector of the source (the product's default naming)."""
        return f"cdc-{self.name.replace('_', '-')}"


def write_config(path: Path, stack: LocalStackSettings, names: Names, args: argparse.Namespace) -> None:
    """The product configuration of this run (one source, one pipeline)."""
    overrides: dict[str, Any] = {}
    if args.poll_interval_ms is not None:
        overrides["poll.interval.ms"] = args.poll_interval_ms
    batch: dict[str, Any] = {}
    if args.max_wait_ms is not None:
        batch["max_wait_ms"] = args.max_wait_ms
    doc: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": stack.bootstrap_servers,
            "client_properties": dict(prop.split("=", 1) for prop in args.client_property),
        },
        "connect": {"url": stack.connect_url},
        "sources": [
            {
                "name": names.name,
                "host": stack.host,
                "port": stack.source_pg_port,
                "database": names.name,
                "user": PG_SUPERUSER,
                "password": PG_PASSWORD,
                "tables": ["public.pgbench_accounts", f"public.{PROBE}"],
                "snapshot_mode": "no_data",
                "topic_partitions": args.partitions,
                "connector_overrides": overrides,
            }
        ],
        "pipelines": [
            {
                "name": names.name,
                "source": names.name,
                "target": {
                    "url": f"postgresql://{PG_SUPERUSER}@{stack.host}:{stack.target_pg_port}/{names.name}",
                    "password": PG_PASSWORD,
                },
                **({"batch": batch} if batch else {}),
            }
        ],
        "metrics": {"host": "127.0.0.1", "port": args.metrics_port},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def cli(config: Path, logs: Path, *argv: str) -> None:
    """Run ``cdc-pipeline ARGV -c CONFIG``; raises BenchError with its output on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--log-format", "console", *argv, "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    with (logs / "cli.log").open("a", encoding="utf-8") as out:
        out.write(f"$ cdc-pipeline {' '.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise at.BenchError(f"cdc-pipeline {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def pgbench_argv(stack: LocalStackSettings, database: str, *argv: str) -> list[str]:
    """pgbench against the source database."""
    return [
        str(pg_bindir() / "pgbench"),
        "-h",
        stack.host,
        "-p",
        str(stack.source_pg_port),
        "-U",
        PG_SUPERUSER,
        *argv,
        database,
    ]


def pgbench_env() -> dict[str, str]:
    """Environment of pgbench (the local stack's development password)."""
    return {**os.environ, "PGPASSWORD": PG_PASSWORD}


def prepare_source(stack: LocalStackSettings, names: Names, args: argparse.Namespace, script: Path) -> None:
    """Create the databases, ``pgbench -i``, the probe table, and the pgbench script."""
    for role in ("source", "target"):
        with psycopg.connect(stack.pg_dsn(role), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names.name)))
    init = subprocess.run(
        pgbench_argv(stack, names.name, "-i", "-q", "-s", str(args.scale)),
        env=pgbench_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        raise at.BenchError(f"pgbench -i failed:\n{init.stdout}{init.stderr}")
    with psycopg.connect(stack.pg_dsn("source", names.name), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE public.{} (id bigserial PRIMARY KEY, client int, src_ts timestamptz NOT NULL)"
            ).format(sql.Identifier(PROBE))
        )
    accounts = 100_000 * args.scale
    script.write_text(
        f"\\set aid random(1, {accounts})\n"
        "\\set delta random(-5000, 5000)\n"
        "BEGIN;\n"
        "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
        f"INSERT INTO public.{PROBE} (client, src_ts) VALUES (:client_id, clock_timestamp());\n"
        "END;\n",
        encoding="utf-8",
    )


def install_probe_log(stack: LocalStackSettings, names: Names, timeout_s: float = 180) -> None:
    """Insert one warm-up probe on the source, wait for the sink to create the target probe
    table with it, then add the target-side log table and its AFTER INSERT trigger."""
    with psycopg.connect(stack.pg_dsn("source", names.name), autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO public.{} (client, src_ts) VALUES (-1, clock_timestamp())").format(
                sql.Identifier(PROBE)
            )
        )
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(stack.pg_dsn("target", names.name), autocommit=True) as conn:
        while True:
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{PROBE}",)).fetchone()
            if exists and exists[0]:
                break
            if time.monotonic() > deadline:
                raise at.BenchError(f"the warm-up probe did not reach the target in {timeout_s:.0f} s")
            time.sleep(0.5)
        conn.execute(
            sql.SQL(
                "CREATE TABLE public.{} (id bigint PRIMARY KEY, src_ts timestamptz, applied_at timestamptz)"
            ).format(sql.Identifier(LOG))
        )
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION public.cdc_latency_log_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " INSERT INTO public.{} VALUES (NEW.id, NEW.src_ts, clock_timestamp()) ON CONFLICT (id) DO NOTHING;"
                " RETURN NULL; END $$"
            ).format(sql.Identifier(LOG))
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER cdc_latency_log AFTER INSERT ON public.{} FOR EACH ROW"
                " EXECUTE FUNCTION public.cdc_latency_log_fn()"
            ).format(sql.Identifier(PROBE))
        )


# --------------------------------------------------------------------------- measuring


@dataclass
class Phase:
    """One fixed-rate phase: offered and achieved rate, latency quantiles (s), probes."""

    rate: int
    achieved_tps: float
    probes: int
    p50: float
    p95: float
    p99: float
    max: float
    metric_p50: float | None
    metric_p99: float | None
    drain_s: float


def source_count(stack: LocalStackSettings, names: Names, t0: datetime, t1: datetime) -> int:
    """Probes committed on the source with ``t0 <= src_ts < t1``."""
    with psycopg.connect(stack.pg_dsn("source", names.name)) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM public.{} WHERE src_ts >= %s AND src_ts < %s").format(sql.Identifier(PROBE)),
            (t0, t1),
        ).fetchone()
    return int(row[0]) if row else 0


def target_count(conn: Conn, t0: datetime, t1: datetime) -> int:
    """Probes applied to the target with ``t0 <= src_ts < t1`` (from the log table)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM public.{} WHERE src_ts >= %s AND src_ts < %s").format(sql.Identifier(LOG)),
        (t0, t1),
    ).fetchone()
    return int(row[0]) if row else 0


def wait_drained(stack: LocalStackSettings, names: Names, t0: datetime, t1: datetime, timeout_s: float) -> float:
    """Wait until every probe of [t0, t1) is on the target; returns the seconds waited."""
    want = source_count(stack, names, t0, t1)
    started = time.monotonic()
    with psycopg.connect(stack.pg_dsn("target", names.name), autocommit=True) as conn:
        while target_count(conn, t0, t1) < want:
            if time.monotonic() - started > timeout_s:
                got = target_count(conn, t0, t1)
                raise at.BenchError(f"{got:,}/{want:,} probes applied {timeout_s:.0f} s after the load ended")
            time.sleep(0.25)
    return time.monotonic() - started


def quantiles(stack: LocalStackSettings, names: Names, t0: datetime, t1: datetime) -> tuple[int, list[float]]:
    """(probes, [p50, p95, p99, max]) of applied_at - src_ts in seconds over [t0, t1)."""
    with psycopg.connect(stack.pg_dsn("target", names.name)) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
                " (ORDER BY extract(epoch FROM applied_at - src_ts)), max(extract(epoch FROM applied_at - src_ts))"
                " FROM public.{} WHERE src_ts >= %s AND src_ts < %s"
            ).format(sql.Identifier(LOG)),
            (t0, t1),
        ).fetchone()
    if not row or not row[0]:
        return 0, [float("nan")] * 4
    return int(row[0]), [float(x) for x in row[1]] + [float(row[2])]


def run_pgbench(
    stack: LocalStackSettings, names: Names, script: Path, rate: int, seconds: int, clients: int
) -> subprocess.Popen[str]:
    """Start pgbench with the probe script at ``rate`` tx/s for ``seconds``."""
    argv = pgbench_argv(
        stack, names.name, "-n", "-f", str(script), "-c", str(clients), "-j", "2", "-R", str(rate), "-T", str(seconds)
    )
    return subprocess.Popen(argv, env=pgbench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_pgbench(proc: subprocess.Popen[str], seconds: int) -> float:
    """Wait for pgbench; returns its achieved ``tps``. Raises BenchError when it failed."""
    out, _ = proc.communicate(timeout=seconds + 120)
    if proc.returncode != 0:
        raise at.BenchError(f"pgbench failed ({proc.returncode}):\n{out[-2000:]}")
    match = re.search(r"^tps = ([0-9.]+)", out, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def now_utc() -> datetime:
    """The current time as an aware datetime (same clock as both PostgreSQL clusters)."""
    return datetime.now(UTC)


def fixed_rate_phase(
    stack: LocalStackSettings, names: Names, script: Path, rate: int, args: argparse.Namespace
) -> Phase:
    """pgbench at ``rate`` for ``--duration`` s; latency quantiles of its probes."""
    before = _scrape(args)
    t0 = now_utc()
    tps = finish_pgbench(run_pgbench(stack, names, script, rate, args.duration, args.clients), args.duration)
    t1 = now_utc()
    drain = wait_drained(stack, names, t0, t1, timeout_s=300)
    after = _scrape(args)
    n, q = quantiles(stack, names, t0, t1)
    m50 = histogram_quantile(0.5, before, after, "cdc_commit_to_apply_seconds") if before and after else None
    m99 = histogram_quantile(0.99, before, after, "cdc_commit_to_apply_seconds") if before and after else None
    return Phase(rate, tps, n, q[0], q[1], q[2], q[3], m50, m99, drain)


def _scrape(args: argparse.Namespace) -> Samples | None:
    """Every worker's ``/metrics`` samples summed by name and labels (None if one is unreachable)."""
    if args.metrics_port == 0:  # workers serve on any free port: nothing to scrape
        return None
    merged: Samples = {}
    for i in range(args.workers):
        try:
            samples = scrape(args.metrics_port + i)
        except httpx.HTTPError:
            return None
        for key, value in samples.items():
            merged[key] = merged.get(key, 0.0) + value
    return merged


@dataclass
class Pause:
    """The pause phase: frozen seconds, catch-up seconds, backlog at resume, achieved tps."""

    seconds: int
    catch_up_s: float
    """NaN when not caught up while the load ran."""
    backlog_probes: int
    achieved_tps: float
    drain_s: float
    """Seconds from the end of the load until every probe was applied."""


def pause_phase(
    stack: LocalStackSettings, names: Names, script: Path, workers: list[at.Worker], args: argparse.Namespace
) -> Pause:
    """pgbench at ``--pause-rate``; every worker is SIGSTOPped after 10 s for ``--pause-seconds``,
    then resumed and the load goes on for ``--pause-tail`` s; measures the catch-up (see the
    module docstring; NaN when it did not catch up within the tail). A pause longer than the
    consumer's ``session.timeout.ms`` (10 s in ``pipeline.app.consumer_config``) also makes the
    group coordinator evict the worker, so the catch-up includes its rejoin."""
    warm = min(10, args.duration)
    seconds = warm + args.pause_seconds + args.pause_tail
    t0 = now_utc()
    load = run_pgbench(stack, names, script, args.pause_rate, seconds, args.clients)
    time.sleep(warm)
    for worker in workers:
        os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(args.pause_seconds)
    finally:
        for worker in workers:
            os.kill(worker.proc.pid, signal.SIGCONT)
    resumed_mono, resumed = time.monotonic(), now_utc()
    backlog = source_count(stack, names, t0, resumed)
    catch_up = float("nan")
    with psycopg.connect(stack.pg_dsn("target", names.name), autocommit=True) as conn:
        backlog -= target_count(conn, t0, resumed)
        while load.poll() is None:
            applied_before = target_count(conn, t0, resumed)
            row = conn.execute(sql.SQL("SELECT max(src_ts) FROM public.{}").format(sql.Identifier(LOG))).fetchone()
            newest = row[0] if row else None
            if (
                applied_before >= source_count(stack, names, t0, resumed)
                and newest is not None
                and (now_utc() - newest).total_seconds() < CAUGHT_UP_AGE_S
            ):
                catch_up = time.monotonic() - resumed_mono
                break
            time.sleep(0.25)
    tps = finish_pgbench(load, seconds)
    drain = wait_drained(stack, names, t0, now_utc(), timeout_s=600)
    return Pause(args.pause_seconds, catch_up, backlog, tps, drain)


def tables_equal(stack: LocalStackSettings, names: Names) -> list[str]:
    """Probe ids and pgbench_accounts balances of source and target compared; problems or []."""
    problems = []
    checks: dict[str, sql.Composed] = {
        PROBE: sql.SQL("SELECT count(*), coalesce(sum(id), 0) FROM public.{}").format(sql.Identifier(PROBE)),
        "pgbench_accounts (changed rows)": sql.SQL(
            "SELECT count(*), coalesce(sum(abalance), 0) FROM public.{} WHERE abalance <> 0"
        ).format(sql.Identifier("pgbench_accounts")),
    }
    for label, query in checks.items():
        with (
            psycopg.connect(stack.pg_dsn("source", names.name)) as s,
            psycopg.connect(stack.pg_dsn("target", names.name)) as t,
        ):
            src, tgt = s.execute(query).fetchone(), t.execute(query).fetchone()
        if src != tgt:
            problems.append(f"{label}: source (count, sum) {src}, target {tgt}")
    return problems


# --------------------------------------------------------------------------- main


def cleanup(stack: LocalStackSettings, names: Names) -> None:
    """Delete the connector, the slot, both databases, the topics and the group (best effort)."""
    try:
        httpx.delete(f"{stack.connect_url}/connectors/{names.connector}", timeout=30)
    except httpx.HTTPError as exc:
        print(f"cleanup: connector: {exc}", file=sys.stderr)
    for role in ("source", "target"):
        try:
            with psycopg.connect(stack.pg_dsn(role), autocommit=True) as conn:
                if role == "source":
                    drop_database_slots(conn, names.name)
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names.name)))
        except (psycopg.Error, TimeoutError) as exc:
            print(f"cleanup: {role} database: {exc}", file=sys.stderr)
    admin = at.admin_client(stack)
    topics = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith(f"{names.name}.") or t.startswith(f"cdc.{names.name}")
    ]
    if topics:
        for topic, future in admin.delete_topics(topics, operation_timeout=30).items():
            try:
                future.result(timeout=60)
            except Exception as exc:
                print(f"cleanup: topic {topic}: {exc}", file=sys.stderr)
    try:
        admin.delete_consumer_groups([f"cdc.{names.name}"], request_timeout=10)[f"cdc.{names.name}"].result(timeout=30)
    except Exception as exc:
        if "GROUP_ID_NOT_FOUND" not in str(exc):
            print(f"cleanup: group: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the latency benchmark; see the module docstring. Returns the exit status."""
    args = parse_args(argv)
    try:
        stack = at.stack_settings(args)
        at.check_stack(stack)
        httpx.get(f"{stack.connect_url}/connectors", timeout=10).raise_for_status()
    except (at.BenchError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port is None:
        args.metrics_port = 9200 + (stack.kafka_port - 9092) // 100 % 100
    names = Names(f"lat_{uuid.uuid4().hex[:10]}")
    print(
        f"e2e_latency: rates {args.rate_list} tx/s x {args.duration} s, {args.clients} clients, scale {args.scale}, "
        f"{args.workers} worker(s), {args.partitions} partitions; "
        f"pause {args.pause_seconds} s at {args.pause_rate} tx/s; poll.interval.ms "
        f"{args.poll_interval_ms or 'product default (100)'}, batch.max_wait_ms {args.max_wait_ms or 'default'}, "
        f"client properties {args.client_property or 'none'}; run {names.name}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    logs = Path(tempfile.mkdtemp(prefix=f"{names.name}-"))
    workers: list[at.Worker] = []
    ok = False
    try:
        config = logs / "pipeline.yaml"
        script = logs / "probe.sql"
        write_config(config, stack, names, args)
        prepare_source(stack, names, args, script)
        cli(config, logs, "source", "prepare")
        cli(config, logs, "connectors", "apply")
        for i in range(args.workers):
            port = 0 if args.metrics_port == 0 else args.metrics_port + i  # 0: any free port, not scraped
            port_env = {"CDC_METRICS__PORT": str(port)}
            workers.append(at.start_worker(i, config, logs, None, env=port_env))
        install_probe_log(stack, names)
        print("ready: connector running, workers applying, probe log installed", flush=True)
        for rate in args.rate_list:
            ph = fixed_rate_phase(stack, names, script, rate, args)
            metric = (
                f"; workers' metric p50 {_ms(ph.metric_p50)} p99 {_ms(ph.metric_p99)}"
                if ph.metric_p50 is not None
                else ""
            )
            print(
                f"rate {rate:>5} tx/s: achieved {ph.achieved_tps:,.0f} tx/s, {ph.probes:,} probes; commit-to-apply "
                f"p50 {_ms(ph.p50)}, p95 {_ms(ph.p95)}, p99 {_ms(ph.p99)}, max {_ms(ph.max)}{metric}; "
                f"drained {ph.drain_s:.1f} s after the load; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        if args.pause_seconds > 0:
            pa = pause_phase(stack, names, script, workers, args)
            print(
                f"pause: workers frozen {pa.seconds} s under {args.pause_rate} tx/s (achieved {pa.achieved_tps:,.0f}); "
                f"backlog {pa.backlog_probes:,} transactions; "
                + (
                    f"caught up {pa.catch_up_s:.1f} s after the resume"
                    if pa.catch_up_s == pa.catch_up_s
                    else f"not caught up during the {args.pause_tail} s of load after the resume; "
                    f"all applied {pa.drain_s:.1f} s after the load ended"
                ),
                flush=True,
            )
        deadline = time.monotonic() + 60
        while (problems := tables_equal(stack, names)) and time.monotonic() < deadline:
            time.sleep(1)  # the accounts topic may trail the probe topic by a batch
        print("target matches: yes" if not problems else "target matches: NO " + "; ".join(problems))
        ok = not problems
    except at.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
    finally:
        if workers:
            at.stop_workers(workers)
        if not args.keep:
            cleanup(stack, names)
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"logs: {logs}")
    return 0 if ok else 1


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or seconds != seconds else f"{seconds * 1000:,.0f} ms"


if __name__ == "__main__":
    sys.exit(main())
