"""Side by side: the Debezium JDBC sink connector vs this pipeline, on one topic of change events.

Against a running local stack (whose Kafka Connect worker carries the Debezium 3.6 JDBC sink):

1. creates one topic ``<run>.public.bench`` with ``--partitions`` partitions and preloads
   ``--events`` change events in real Debezium 3.6 JSON with schemas (``bench/_debezium_gen.py``:
   inserts of ``--keys`` rows, then updates and deletes over them, every delete followed by its
   tombstone, murmur2-partitioned like Kafka Connect's producer);
2. alternates ``--runs`` rounds of: the JDBC sink at its default ``batch.size`` (500), the JDBC
   sink at ``--tuned-batch-size``, and our pipeline (``--workers`` workers, default one per
   partition; the sink gets ``tasks.max`` = partitions). Each run writes into its own empty
   database on the target PostgreSQL; a run ends when the system's offsets cover the topic
   (the sink: consumer group ``connect-<name>`` committed offsets; ours: the offsets stored in
   the target, ``cdc_control.offsets``), then the table is compared with the expected state;
3. replay: the last JDBC sink run (tuned) and the last pipeline run replay the topic from the
   start at the same time (the sink: stop, ``DELETE /connectors/<name>/offsets``, resume; ours:
   stop the workers, delete the stored offsets, start again) while ``--replay-extra`` newer
   changes of the same keys are appended; during the replay both tables are sampled for rows
   that went back to an older version than they had before the replay, and afterwards both are
   compared with the new expected state;
4. prints the figures per system (events/s median/min/max, CPU seconds per 100,000 events,
   peak RSS, target match) and removes everything it created.

    .venv/bin/python bench/compare_jdbc_sink.py                          # 1,000,000 events, 3 runs each
    .venv/bin/python bench/compare_jdbc_sink.py --events 300000 --runs 3
    .venv/bin/python bench/compare_jdbc_sink.py --smoke --state-dir .local-stack-test-3

CPU: our workers are accounted per process (``/proc/<pid>/stat``, librdkafka threads
included); the sink's is the Connect JVM's CPU time delta over the run minus the idle JVM's
rate (measured for ``--idle-seconds`` before the first run) times the run's wall time (both
printed). Peak RSS: the workers' ``VmHWM``; the JVM's ``VmHWM`` after resetting it at the
start of each run (``clear_refs``), i.e. the whole worker JVM including its idle footprint.

Exit status: 0 when every run ended with the target equal to the expected state (the JDBC
sink's replay result is reported, not required), 1 otherwise, 2 when the stack is unreachable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import apply_throughput as at
import psycopg
from _debezium_gen import Row, Workload
from _jdbc_sink import DEFAULT_BATCH_SIZE, ConnectSink, SinkError, connect_pid, reset_peak_rss, sink_config
from _replay_gen import newer_changes
from confluent_kafka import Producer
from psycopg import sql

from pipeline.localstack import LocalStackSettings

SMOKE_EVENTS = 1_000
OURS = "pipeline"


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=None, help="change events to preload (default 1000000)")
    p.add_argument("--keys", type=int, default=None, help="primary-key space (default events/4)")
    p.add_argument("--partitions", type=int, default=None, help="partitions of the topic (default 4; smoke 2)")
    p.add_argument("--workers", type=int, default=None, help="our workers (default: one per partition)")
    p.add_argument("--runs", type=int, default=None, help="runs of each system, alternated (default 3; smoke 1)")
    p.add_argument("--tuned-batch-size", type=int, default=5000, help="JDBC sink batch.size of the tuned runs")
    p.add_argument(
        "--tuned-property",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="extra JDBC sink property of the tuned runs; repeatable (default: reduction buffer and UNNEST inserts on)",
    )
    p.add_argument("--replay-extra", type=int, default=None, help="newer changes appended during the replay")
    p.add_argument("--no-replay", action="store_true", help="skip the replay scenario")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle JVM CPU baseline window (default 10)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the workload")
    p.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE_EVENTS} events, 2 partitions, 1 run")
    p.add_argument("--state-dir", type=Path, default=None, help="local stack state folder (default .local-stack)")
    p.add_argument("--kafka-port", type=int, default=None, help="override the stack's Kafka port")
    p.add_argument("--target-port", type=int, default=None, help="override the stack's target PostgreSQL port")
    p.add_argument("--timeout", type=float, default=None, help="limit per run, s (default 180 + events/300)")
    p.add_argument("--keep", action="store_true", help="keep the topic, databases and logs (debugging)")
    args = p.parse_args(argv)
    if args.events is None:
        args.events = SMOKE_EVENTS if args.smoke else 1_000_000
    if args.partitions is None:
        args.partitions = 2 if args.smoke else 4
    if args.runs is None:
        args.runs = 1 if args.smoke else 3
    if args.workers is None:
        args.workers = args.partitions
    if args.idle_seconds is None:
        args.idle_seconds = 3.0 if args.smoke else 10.0
    if min(args.events, args.partitions, args.runs, args.workers, args.tuned_batch_size) < 1:
        p.error("--events, --partitions, --runs, --workers and --tuned-batch-size must be >= 1")
    args.keys = args.keys or max(1, args.events // 4)
    if args.tuned_property is None:
        args.tuned_property = ["use.reduction.buffer=true", "dialect.postgres.unnest.insert.enabled=true"]
    for prop in args.tuned_property:
        if "=" not in prop:
            p.error(f"--tuned-property {prop!r}: write KEY=VALUE")
    if args.replay_extra is None:
        args.replay_extra = max(100, min(50_000, args.events // 10))
    if args.timeout is None:
        args.timeout = 180 + args.events / 300
    # Attributes apply_throughput's helpers read (write_config, apply_all, start_worker).
    args.batch_max_messages = args.batch_max_bytes = None
    args.client_property = []
    args.profile = None
    return args


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """One run of one system."""

    system: str
    events: int
    wall_s: float
    cpu_s: float
    """Our workers' CPU, or the JVM's delta minus the idle rate x wall."""
    raw_cpu_s: float
    """Same, before subtracting the idle JVM (equal to cpu_s for ours)."""
    peak_rss_mb: float
    """Max over our workers / the JVM."""
    rss_sum_mb: float
    """Sum over our workers / the JVM."""
    backend_cpu_s: float
    """CPU of the target PostgreSQL backends serving the run's database."""
    machine_busy: float
    matched: bool
    problems: list[str] = field(default_factory=list)

    @property
    def eps(self) -> float:
        """Change events per second (tombstones excluded)."""
        return self.events / self.wall_s


def system_label(batch_size: int | None) -> str:
    """Display name of a JDBC sink variant."""
    return f"jdbc sink batch.size={batch_size or DEFAULT_BATCH_SIZE}" + (" (default)" if batch_size is None else "")


# --------------------------------------------------------------------------- target checks

# Casts: the JDBC sink picks its own column types when it creates the table.
VERIFY_SQL = "SELECT id, name, amount::numeric(12,2), updated_at::timestamptz, payload::jsonb FROM public.bench"


def verify(conn: at.Conn, expected: dict[int, Row]) -> list[str]:
    """Differences between ``public.bench`` and ``expected`` (at most 5; [] when equal)."""
    try:
        rows = conn.execute(VERIFY_SQL).fetchall()
    except psycopg.errors.UndefinedTable:
        return ["public.bench does not exist"]
    problems: list[str] = []
    for row_id, name, amount, updated_at, payload in rows:
        want = expected.get(row_id)
        if want is None:
            problems.append(f"id {row_id}: in the target but absent in the source")
        elif (name, amount, updated_at, payload) != (want.name, want.amount, want.updated_at, want.payload):
            problems.append(f"id {row_id}: target {(name, amount, updated_at, payload)!r}, expected {want!r}")
        if len(problems) >= 5:
            return problems
    if len(rows) != len(expected):
        problems.append(f"target has {len(rows):,} rows, the source {len(expected):,}")
    return problems


def backend_cpu(stack: LocalStackSettings, database: str) -> float:
    """CPU seconds so far of the target backends connected to ``database`` (local stack only)."""
    with psycopg.connect(stack.pg_dsn("target"), autocommit=True) as conn:
        pids = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
        ).fetchall()
    return sum(s.cpu_s for (pid,) in pids if (s := at.proc_stats(int(pid))) is not None)


def create_database(stack: LocalStackSettings, name: str) -> None:
    """CREATE DATABASE ``name`` on the target."""
    with psycopg.connect(stack.pg_dsn("target"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(stack: LocalStackSettings, name: str) -> None:
    """DROP DATABASE ``name`` on the target (forcing its sessions out)."""
    with psycopg.connect(stack.pg_dsn("target"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --------------------------------------------------------------------------- the two systems


def jvm_idle_rate(stack: LocalStackSettings, seconds: float) -> float:
    """CPU seconds per wall second of the idle Connect JVM over ``seconds``."""
    pid = connect_pid(stack)
    before = at.proc_stats(pid) if pid else None
    time.sleep(seconds)
    after = at.proc_stats(pid) if pid else None
    if before is None or after is None:
        return 0.0
    return (after.cpu_s - before.cpu_s) / seconds


def run_jdbc(
    stack: LocalStackSettings,
    run: at.Run,
    index: int,
    batch_size: int | None,
    total: int,
    events: int,
    expected: dict[int, Row],
    args: argparse.Namespace,
    idle_rate: float,
    sinks: list[ConnectSink],
) -> tuple[Result, ConnectSink]:
    """One JDBC sink run into a fresh database; returns its result and the (running) connector."""
    database = f"{run.name}_jdbc{index}"
    create_database(stack, database)
    sink = ConnectSink(stack, f"{run.name.replace('_', '-')}-jdbc{index}")
    sinks.append(sink)
    admin = at.admin_client(stack)
    pid = connect_pid(stack)
    if pid is None:
        raise at.BenchError("Kafka Connect PID unknown (is the stack's connect worker ours?)")
    reset_peak_rss(pid)
    jvm0 = at.proc_stats(pid) or at.ProcStats()
    busy0, all0 = at.machine_busy()
    started = time.monotonic()
    config = sink_config(stack, sink.name, database, run.topic, args.partitions, batch_size)
    if batch_size is not None:
        config.update(prop.split("=", 1) for prop in args.tuned_property)
    sink.create(config)
    last_report = started
    while True:
        done = sink.committed(admin, run.topic, args.partitions)
        now = time.monotonic()
        if done >= total:
            break
        sink.state()  # raises on a FAILED task
        if now - started > args.timeout:
            raise at.BenchError(f"{sink.name}: {done:,}/{total:,} messages after {args.timeout:.0f} s")
        if now - last_report >= 10:
            last_report = now
            print(f"  ... {done:,}/{total:,} messages committed after {now - started:.0f} s", flush=True)
        time.sleep(at.POLL_S)
    wall = time.monotonic() - started
    busy1, all1 = at.machine_busy()
    jvm1 = at.proc_stats(pid) or at.ProcStats()
    db_cpu = backend_cpu(stack, database)
    raw = jvm1.cpu_s - jvm0.cpu_s
    with psycopg.connect(stack.pg_dsn("target", database)) as conn:
        problems = verify(conn, expected)
    rss = _vm_rss_mb(pid)
    result = Result(
        system_label(batch_size),
        events,
        wall,
        max(0.0, raw - idle_rate * wall),
        raw,
        jvm1.peak_rss_mb,
        rss,
        db_cpu,
        (busy1 - busy0) / max(1, all1 - all0),
        not problems,
        problems,
    )
    return result, sink


def _vm_rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def ours_run(run: at.Run, index: int) -> at.Run:
    """The Run of our ``index``-th pipeline run: same topic and group, own database."""
    return replace(run, database=f"{run.name}_ours{index}")


def run_ours(
    stack: LocalStackSettings,
    run: at.Run,
    index: int,
    total: int,
    events: int,
    expected: dict[int, Row],
    args: argparse.Namespace,
    logs: Path,
) -> Result:
    """One pipeline run (``--workers`` workers) into a fresh database; workers stopped after."""
    mine = ours_run(run, index)
    create_database(stack, mine.database)
    config = logs / f"pipeline-{index}.yaml"
    at.write_config(config, stack, mine, args)
    workers: list[at.Worker] = []
    try:
        applied = at.apply_all(stack, mine, total, workers, config, args)
        db_cpu = backend_cpu(stack, mine.database)
    finally:
        at.stop_workers(workers)
    with psycopg.connect(stack.pg_dsn("target", mine.database)) as conn:
        problems = verify(conn, expected)
    cpu = sum(w.stats.cpu_s for w in workers)
    return Result(
        OURS,
        events,
        applied.wall_s,
        cpu,
        cpu,
        max(w.stats.peak_rss_mb for w in workers),
        sum(w.stats.peak_rss_mb for w in workers),
        db_cpu,
        applied.machine_busy,
        not problems,
        problems,
    )


# --------------------------------------------------------------------------- replay


STALE_SQL = (
    "SELECT count(*) FROM public.bench b LEFT JOIN bench_pre_replay p USING (id)"
    " WHERE b.updated_at::timestamptz <= %(old_max)s"
    " AND (p.id IS NULL OR b.updated_at::timestamptz < p.updated_at)"
)
"""Rows showing an older version than the table held before the replay (or a deleted row
come back), among rows not rewritten by the newer changes (those have later commit times)."""


@dataclass
class ReplayOutcome:
    """What one system did during and after the replay."""

    system: str
    seconds: float
    max_stale_rows: int
    problems: list[str]


def replay(
    stack: LocalStackSettings,
    run: at.Run,
    workload: Workload,
    sink: ConnectSink,
    sink_db: str,
    ours_index: int,
    args: argparse.Namespace,
    logs: Path,
) -> list[ReplayOutcome]:
    """Replay the topic from the start into both kept targets while newer changes are produced."""
    mine = ours_run(run, ours_index)
    dbs = {sink.name: sink_db, OURS: mine.database}
    old_max = max(r.updated_at for r in workload.expected.values())
    for database in dbs.values():
        with psycopg.connect(stack.pg_dsn("target", database), autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_pre_replay AS SELECT id, updated_at::timestamptz FROM public.bench")
    expected = dict(workload.expected)
    newer = newer_changes(run.name, run.database, args.keys, expected, args.replay_extra)
    admin = at.admin_client(stack)
    total = sum(at.end_offsets(admin, run.topic, args.partitions).values()) + len(newer.messages)
    print(
        f"replay: both systems re-read the topic from offset 0 while {newer.changes:,} newer changes "
        f"({newer.deletes:,} deletes, {len(newer.messages):,} messages) are appended",
        flush=True,
    )
    sink.stop()
    sink.reset_offsets()
    with psycopg.connect(stack.pg_dsn("target", mine.database), autocommit=True) as conn:
        conn.execute("DELETE FROM cdc_control.offsets WHERE consumer_group = %s", (mine.group,))
    config = logs / "pipeline-replay.yaml"
    at.write_config(config, stack, mine, args)
    producer_error: list[str] = []
    producer = threading.Thread(target=_produce_newer, args=(stack, run.topic, newer.messages, producer_error))
    started = time.monotonic()
    sink.resume()
    workers = [at.start_worker(i, config, logs, None) for i in range(args.workers)]
    producer.start()
    stale = dict.fromkeys(dbs, 0)
    finished: dict[str, float] = {}
    try:
        while len(finished) < len(dbs):
            now = time.monotonic()
            if now - started > args.timeout:
                raise at.BenchError(f"replay not done after {args.timeout:.0f} s (done: {sorted(finished)})")
            for w in workers:
                if w.proc.poll() is not None:
                    raise at.BenchError(f"worker exited with {w.proc.returncode}:\n{at._tail(w.log)}")
            for system, database in dbs.items():
                if system in finished:
                    continue
                with psycopg.connect(stack.pg_dsn("target", database), autocommit=True) as conn:
                    row = conn.execute(STALE_SQL, {"old_max": old_max}).fetchone()
                    stale[system] = max(stale[system], int(row[0]) if row else 0)
                    done = (
                        at.stored_total(conn, mine)
                        if system == OURS
                        else sink.committed(admin, run.topic, args.partitions)
                    )
                if done >= total and not producer.is_alive():
                    finished[system] = now - started
            if sink.name not in finished:
                sink.state()
            time.sleep(at.POLL_S)
    finally:
        at.stop_workers(workers)
        producer.join(timeout=120)
    if producer_error:
        raise at.BenchError(f"producing the newer changes failed: {producer_error}")
    outcomes = []
    for system, database in dbs.items():
        with psycopg.connect(stack.pg_dsn("target", database)) as conn:
            problems = verify(conn, expected)
        label = OURS if system == OURS else "jdbc sink"
        outcomes.append(ReplayOutcome(label, finished[system], stale[system], problems))
    return outcomes


def _produce_newer(stack: LocalStackSettings, topic: str, messages: list[Any], errors: list[str]) -> None:
    """Produce ``messages`` spread over ~10 s (at least 2,000 messages/s), murmur2-partitioned."""
    producer = Producer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 5,
            "log_level": 3,
        }
    )
    rate = max(2_000.0, len(messages) / 10)
    start = time.monotonic()
    try:
        for i, (key, value) in enumerate(messages):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while True:
                try:
                    producer.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        if producer.flush(60):
            errors.append("messages left undelivered after 60 s")
    except Exception as exc:  # reported by the caller
        errors.append(repr(exc))


# --------------------------------------------------------------------------- report


def summarise(results: list[Result]) -> list[str]:
    """One line per system: events/s median (min-max), CPU s / 100k events, peak RSS, matches."""
    lines = []
    for system in dict.fromkeys(r.system for r in results):
        mine = [r for r in results if r.system == system]
        eps = [r.eps for r in mine]
        cpu = statistics.median(r.cpu_s / r.events * 100_000 for r in mine)
        raw = statistics.median(r.raw_cpu_s / r.events * 100_000 for r in mine)
        db = statistics.median(r.backend_cpu_s / r.events * 100_000 for r in mine)
        rss = max(r.peak_rss_mb for r in mine)
        rss_sum = max(r.rss_sum_mb for r in mine)
        matched = sum(r.matched for r in mine)
        cpu_text = f"{cpu:.2f}" if system == OURS else f"{cpu:.2f} (raw JVM delta {raw:.2f})"
        rss_text = (
            f"peak RSS {rss:.0f} MB max worker, {rss_sum:.0f} MB all workers"
            if system == OURS
            else f"peak RSS {rss:.0f} MB (Connect JVM)"
        )
        lines.append(
            f"{system:<34} events/s median {statistics.median(eps):,.0f} (min {min(eps):,.0f}, max {max(eps):,.0f}, "
            f"n={len(mine)}); CPU s/100k events {cpu_text}; target backends {db:.2f}; "
            f"together {cpu + db:.2f}; {rss_text}; "
            f"target matches {matched}/{len(mine)}"
        )
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; see the module docstring. Returns the exit status."""
    args = parse_args(argv)
    try:
        stack = at.stack_settings(args)
        at.check_stack(stack)
        ConnectSink(stack, "probe").state()
    except (at.BenchError, SinkError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # httpx errors: Connect not answering
        print(f"error: Kafka Connect at {stack.connect_url} unreachable: {exc}", file=sys.stderr)
        return 2
    name = f"cmp_{uuid.uuid4().hex[:10]}"
    run = at.Run(name, name, f"{name}.public.bench", f"cdc.{name}", f"cdc.{name}.dlq")
    print(
        f"compare_jdbc_sink: {args.events:,} events over {args.keys:,} keys, {args.partitions} partitions, "
        f"{args.runs} run(s) per system, our workers {args.workers}, sink tasks.max {args.partitions}, "
        f"tuned sink: batch.size={args.tuned_batch_size} {' '.join(args.tuned_property)}; "
        f"Kafka {stack.bootstrap_servers}, Connect {stack.connect_url}, run {name}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    logs = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    sinks: list[ConnectSink] = []
    databases: list[str] = []
    ok = False
    try:
        ok = _compare(stack, run, args, logs, sinks, databases)
    except (at.BenchError, SinkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept: topic {run.topic}, databases {databases}, connectors {[s.name for s in sinks]}")
        else:
            _cleanup(stack, run, sinks, databases)
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if ok and not args.keep:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"logs: {logs}")
    return 0 if ok else 1


def _cleanup(stack: LocalStackSettings, run: at.Run, sinks: list[ConnectSink], databases: list[str]) -> None:
    for sink in sinks:
        try:
            sink.delete()
        except Exception as exc:  # best effort: report and go on
            print(f"cleanup: connector {sink.name}: {exc}", file=sys.stderr)
    admin = at.admin_client(stack)
    prefix = f"connect-{run.name.replace('_', '-')}-jdbc"
    listed = admin.list_consumer_groups(request_timeout=10).result(timeout=30)
    groups = [g.group_id for g in listed.valid if g.group_id.startswith(prefix)]
    if groups:
        time.sleep(3)  # a deleted connector's group empties asynchronously
        for group, future in admin.delete_consumer_groups(groups, request_timeout=10).items():
            try:
                future.result(timeout=30)
            except Exception as exc:
                print(f"cleanup: group {group}: {exc}", file=sys.stderr)
    for database in databases:
        try:
            drop_database(stack, database)
        except psycopg.Error as exc:
            print(f"cleanup: database {database}: {exc}", file=sys.stderr)
    for problem in at.cleanup(stack, run):
        print(f"cleanup: {problem}", file=sys.stderr)


def _compare(
    stack: LocalStackSettings,
    run: at.Run,
    args: argparse.Namespace,
    logs: Path,
    sinks: list[ConnectSink],
    databases: list[str],
) -> bool:
    admin = at.admin_client(stack)
    at.create_topic(admin, run.topic, args.partitions)
    workload = Workload(run.name, args.events, args.keys, args.seed, database=run.database)
    loaded = at.preload(stack, run.topic, workload, timeout_s=120 + args.events / 2000)
    ends = at.end_offsets(admin, run.topic, args.partitions)
    total = sum(ends.values())
    if total != loaded.messages:
        raise at.BenchError(f"topic holds {total:,} messages, {loaded.messages:,} were produced")
    events = workload.ops["c"] + workload.ops["u"] + workload.ops["d"]
    print(
        f"preload: {events:,} events (c {workload.ops['c']:,}, u {workload.ops['u']:,}, d {workload.ops['d']:,}) "
        f"+ {workload.ops['tombstone']:,} tombstones = {total:,} messages, {loaded.bytes / 1e6:,.0f} MB "
        f"in {loaded.seconds:.1f} s; per partition {[ends[p] for p in sorted(ends)]}; "
        f"{len(workload.expected):,} rows expected",
        flush=True,
    )
    idle = jvm_idle_rate(stack, args.idle_seconds)
    print(f"idle Connect JVM: {idle:.3f} CPU s per s (over {args.idle_seconds:.0f} s), subtracted below", flush=True)
    results: list[Result] = []
    last_sink: tuple[ConnectSink, str] | None = None
    for i in range(args.runs):
        for batch_size in (None, args.tuned_batch_size):
            index = 2 * i + (batch_size is not None)
            databases.append(f"{run.name}_jdbc{index}")
            result, sink = run_jdbc(stack, run, index, batch_size, total, events, workload.expected, args, idle, sinks)
            results.append(result)
            _print_result(i, result)
            keep_for_replay = i == args.runs - 1 and batch_size is not None and not args.no_replay
            if keep_for_replay:
                last_sink = (sink, databases[-1])
            else:
                sink.delete()
                sinks.remove(sink)
                drop_database(stack, databases.pop())
        databases.append(ours_run(run, i).database)
        result = run_ours(stack, run, i, total, events, workload.expected, args, logs)
        results.append(result)
        _print_result(i, result)
        if i < args.runs - 1 or args.no_replay:
            drop_database(stack, databases.pop())
    print("summary:")
    for line in summarise(results):
        print(f"  {line}")
    jdbc_best = max((r.eps for r in results if r.system != OURS), default=0.0)
    ours_median = statistics.median(r.eps for r in results if r.system == OURS)
    if jdbc_best:
        print(f"ratio: our median events/s / best JDBC sink run = {ours_median / jdbc_best:.2f}x (goal >= 2x)")
    ok = all(r.matched for r in results)
    if last_sink is not None:
        outcomes = replay(stack, run, workload, last_sink[0], last_sink[1], args.runs - 1, args, logs)
        for o in outcomes:
            verdict = "target matches: yes" if not o.problems else "target matches: NO (" + "; ".join(o.problems) + ")"
            print(
                f"replay {o.system:<9}: done in {o.seconds:.1f} s; rows older than before the replay, at most "
                f"{o.max_stale_rows:,} at one sample; {verdict}",
                flush=True,
            )
            if o.system == OURS and o.problems:
                ok = False
    return ok


def _print_result(i: int, r: Result) -> None:
    print(
        f"run {i + 1} {r.system:<34} {r.eps:>9,.0f} events/s ({r.wall_s:.1f} s); CPU {r.cpu_s:.1f} s "
        f"(raw {r.raw_cpu_s:.1f}) = {r.cpu_s / r.events * 100_000:.2f} s/100k; target backends "
        f"{r.backend_cpu_s:.1f} s; peak RSS {r.peak_rss_mb:.0f} MB; machine {r.machine_busy:.0%} busy; "
        f"target matches {'yes' if r.matched else 'NO ' + '; '.join(r.problems)}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
