"""Apply throughput: events/s from a preloaded Debezium topic into PostgreSQL, vs the raw COPY rate.

Against a running local stack (default: the developer stack of ``cdc-pipeline local up``):

1. creates a fresh target database and a fresh topic ``<run>.public.bench`` with
   ``--partitions`` partitions;
2. preloads ``--events`` change events in real Debezium 3.6 JSON (schemas enabled; see
   ``bench/_debezium_gen.py``): inserts of ``--keys`` rows, then updates and deletes over them,
   each delete followed by its tombstone, keyed like Debezium and partitioned by murmur2 of the
   key bytes (what Kafka Connect's Java producer does);
3. starts ``--workers`` real workers (``python -m pipeline.cli run -c CONFIG``) and measures the
   wall time from their start until the target's ``cdc_control.offsets`` for the group add up
   to the topic's end offsets (polled every 0.5 s), sampling each worker's CPU time and peak RSS;
4. checks the target table equals the expected final state (last change per key);
5. COPYs the same final rows into a plain table of the same shape (primary key included) on
   the same target with psycopg ``COPY ... FROM STDIN``: the practical ceiling in rows/s;
6. prints the figures and deletes the topic, the consumer group and the database.

    .venv/bin/python bench/apply_throughput.py                       # 1,000,000 events, 4 partitions, 1 worker
    .venv/bin/python bench/apply_throughput.py --events 200000 --workers 2
    .venv/bin/python bench/apply_throughput.py --smoke --state-dir .local-stack-test
    .venv/bin/python bench/apply_throughput.py --events 200000 --profile /tmp/prof   # py-spy per worker
    .venv/bin/python bench/apply_throughput.py --events 200000 --format avro         # Avro + registry

``--format avro`` writes the same changes as Avro in the Confluent wire format
(``_debezium_gen.DebeziumAvro``), registers the value and key schemas in the stack's Apicurio
Registry (``--registry-port``, default 8081; started by the bench from the stack's jar cache
when nothing answers there, and stopped again at the end) and runs the workers with
``format: avro``; the report adds bytes per event for comparing with JSON.

Exit status: 0 when the target matched, 1 when it did not or a worker failed or timed out,
2 when the stack is unreachable or the arguments are invalid. No speed assertion: figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from _debezium_gen import DebeziumAvro, Row, Workload, avro_schema, key_schema, value_schema
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    NewTopic,
    OffsetSpec,
)
from psycopg import sql

from pipeline.app import consumer_config
from pipeline.core.settings.loading import load_settings
from pipeline.localstack import LocalStackSettings, settings_for
from pipeline.localstack.config import PG_PASSWORD, PG_SUPERUSER
from pipeline.localstack.jars import cache_for
from pipeline.localstack.procs import read_pid
from pipeline.localstack.registry import DEFAULT_PORT as DEFAULT_REGISTRY_PORT
from pipeline.localstack.registry import SchemaRegistryProcess

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
SMOKE_EVENTS = 2_000

Conn = psycopg.Connection[tuple[Any, ...]]


class BenchError(Exception):
    """The benchmark could not run or its result is wrong; the message says why."""


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; ``--keys`` defaults to a quarter of ``--events``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=None, help="change events to preload (default 1000000)")
    p.add_argument("--partitions", type=int, default=None, help="partitions of the bench topic (default 4)")
    p.add_argument("--workers", type=int, default=1, help="worker processes in the consumer group (default 1)")
    p.add_argument("--keys", type=int, default=None, help="primary-key space (default events/4)")
    p.add_argument("--delete-ratio", type=float, default=0.1, help="share of later changes that delete (0.1)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the workload")
    p.add_argument(
        "--format",
        "--mode",
        dest="format",
        choices=("json", "avro"),
        default="json",
        help="converter of keys and values: json (JsonConverter with schemas) or avro (Confluent wire format)",
    )
    p.add_argument(
        "--registry-port", type=int, default=DEFAULT_REGISTRY_PORT, help="Schema Registry port for --format avro"
    )
    p.add_argument("--smoke", action="store_true", help=f"tiny run: defaults {SMOKE_EVENTS} events, 2 partitions")
    p.add_argument("--state-dir", type=Path, default=None, help="local stack state folder (default .local-stack)")
    p.add_argument("--kafka-port", type=int, default=None, help="override the stack's Kafka port")
    p.add_argument("--target-port", type=int, default=None, help="override the stack's target PostgreSQL port")
    p.add_argument("--batch-max-messages", type=int, default=None, help="pipeline batch.max_messages")
    p.add_argument("--batch-max-bytes", type=int, default=None, help="pipeline batch.max_bytes")
    p.add_argument(
        "--client-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka property for the workers (kafka.client_properties); repeatable",
    )
    p.add_argument("--timeout", type=float, default=None, help="apply phase limit, s (default 120 + events/500)")
    p.add_argument("--profile", type=Path, default=None, help="record each worker with py-spy into this folder")
    p.add_argument(
        "--consume-baseline",
        action="store_true",
        help="first time a bare consumer (the workers' consumer config) reading the whole topic",
    )
    p.add_argument("--keep", action="store_true", help="keep the topic, group, database and logs (debugging)")
    args = p.parse_args(argv)
    if args.events is None:
        args.events = SMOKE_EVENTS if args.smoke else 1_000_000
    if args.partitions is None:
        args.partitions = 2 if args.smoke else 4
    if args.events < 1 or args.partitions < 1 or args.workers < 1:
        p.error("--events, --partitions and --workers must be >= 1")
    args.keys = args.keys or max(1, args.events // 4)
    for prop in args.client_property:
        if "=" not in prop:
            p.error(f"--client-property {prop!r}: write KEY=VALUE")
    if args.timeout is None:
        args.timeout = 120 + args.events / 500
    if args.profile is not None and py_spy() is None:
        p.error("--profile needs py-spy: .venv/bin/pip install py-spy (not a project dependency)")
    return args


def py_spy() -> str | None:
    """Path of the py-spy executable (on PATH or beside this Python), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def stack_settings(args: argparse.Namespace) -> LocalStackSettings:
    """The stack to use: ``--state-dir`` (else ``CDC_LOCAL_STATE_DIR``, else the repository's
    ``.local-stack``) as recorded by ``local up``, with port overrides. Loopback only."""
    state = args.state_dir
    if state is None and "CDC_LOCAL_STATE_DIR" not in os.environ:
        state = REPO / ".local-stack"
    settings = settings_for(state)
    update: dict[str, Any] = {}
    if args.kafka_port is not None:
        update["kafka_port"] = args.kafka_port
    if args.target_port is not None:
        update["target_pg_port"] = args.target_port
    settings = settings.model_copy(update=update) if update else settings
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        raise BenchError(f"stack host {settings.host!r} is not a loopback address")
    return settings


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Run:
    """Names of everything this run creates (unique per run)."""

    name: str
    database: str
    topic: str
    group: str
    dlq_topic: str

    @classmethod
    def new(cls) -> Run:
        """Fresh names: ``bench_<hex>`` for the pipeline, topic prefix and database."""
        name = f"bench_{uuid.uuid4().hex[:10]}"
        return cls(name, name, f"{name}.public.bench", f"cdc.{name}", f"cdc.{name}.dlq")

    @property
    def baseline_group(self) -> str:
        """Consumer group of the ``--consume-baseline`` reader."""
        return f"{self.group}.baseline"


def admin_client(stack: LocalStackSettings) -> AdminClient:
    """A Kafka admin client of the stack's broker."""
    return AdminClient({"bootstrap.servers": stack.bootstrap_servers, "socket.timeout.ms": 10_000})


def check_stack(stack: LocalStackSettings) -> None:
    """Raise BenchError unless Kafka and the target PostgreSQL answer within ~10 s."""
    try:
        admin_client(stack).list_topics(timeout=10)
    except KafkaException as exc:
        raise BenchError(f"Kafka at {stack.bootstrap_servers} unreachable ({exc}); run: cdc-pipeline local up") from exc
    try:
        with psycopg.connect(stack.pg_dsn("target"), connect_timeout=10):
            pass
    except psycopg.OperationalError as exc:
        raise BenchError(f"target PostgreSQL on port {stack.target_pg_port} unreachable: {exc}") from exc


def create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    """Create ``topic`` (replication factor 1) and wait until it exists (bounded, 30 s)."""
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while len(admin.list_topics(topic, timeout=10).topics[topic].partitions) < partitions:
        if time.monotonic() > deadline:
            raise BenchError(f"topic {topic} has not got its {partitions} partitions after 30 s")
        time.sleep(0.2)


def end_offsets(admin: AdminClient, topic: str, partitions: int) -> dict[int, int]:
    """Partition -> end offset (the next offset to be written) of ``topic``."""
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)}  # type: ignore[no-untyped-call]
    return {tp.partition: fut.result(timeout=30).offset for tp, fut in admin.list_offsets(request).items()}


def cleanup(stack: LocalStackSettings, run: Run) -> list[str]:
    """Delete the topics, the consumer group and the database of ``run``; returns problems."""
    problems: list[str] = []
    admin = admin_client(stack)
    existing = set(admin.list_topics(timeout=10).topics)
    topics = [t for t in (run.topic, run.dlq_topic) if t in existing]
    if topics:
        for topic, future in admin.delete_topics(topics, operation_timeout=30).items():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                problems.append(f"topic {topic}: {exc}")
    for group in (run.group, run.baseline_group):
        deadline = time.monotonic() + 30
        while True:  # a group may stay non-empty for a moment after its members left
            try:
                admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=30)
                break
            except KafkaException as exc:
                if "GROUP_ID_NOT_FOUND" in str(exc):
                    break
                if time.monotonic() > deadline:
                    problems.append(f"group {group}: {exc}")
                    break
                time.sleep(1)
    try:
        with psycopg.connect(stack.pg_dsn("target"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(run.database)))
    except psycopg.Error as exc:
        problems.append(f"database {run.database}: {exc}")
    return problems


# --------------------------------------------------------------------------- schema registry


@contextmanager
def schema_registry(stack: LocalStackSettings, port: int, timeout_s: float = 240) -> Iterator[str]:
    """The Confluent-compatible URL of the registry on ``port``: the one answering there, else
    one started from the stack's jar cache under its state folder (stopped on exit)."""
    registry = SchemaRegistryProcess(stack.state, cache_for(stack.cache_dir), stack.host, port)
    started = False
    if not registry.health().ready:
        try:
            httpx.get(registry.endpoint + "/subjects", timeout=3)
            raise BenchError(f"port {port} answers but is not this stack's registry: use --registry-port")
        except httpx.HTTPError:
            pass
        print(f"schema registry: starting Apicurio Registry on port {port}", flush=True)
        registry.start()
        started = True
        deadline = time.monotonic() + timeout_s
        while not (health := registry.health()).ready:
            if not health.running or time.monotonic() > deadline:
                registry.stop()
                raise BenchError(f"schema registry not ready ({health.detail}); log {registry.log_file}")
            time.sleep(1)
    try:
        yield registry.endpoint
    finally:
        if started:
            registry.stop()


def register_schemas(url: str, run: Run) -> tuple[int, int]:
    """Register the Avro value and key schemas of ``run``'s topic (subjects ``<topic>-value`` /
    ``-key``, Confluent API ``POST /subjects/{subject}/versions``); returns their ids."""
    ids = []
    for suffix, connect in (("value", value_schema(run.name)), ("key", key_schema(run.name))):
        body = {"schema": json.dumps(avro_schema(connect)), "schemaType": "AVRO"}
        resp = httpx.post(f"{url}/subjects/{run.topic}-{suffix}/versions", json=body, timeout=30)
        if resp.status_code != 200:
            raise BenchError(f"registering the {suffix} schema failed: HTTP {resp.status_code} {resp.text[:300]}")
        ids.append(int(resp.json()["id"]))
    return ids[0], ids[1]


# --------------------------------------------------------------------------- preload


@dataclass
class Preload:
    """What was produced: messages (tombstones included), bytes of keys and values, seconds."""

    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)


def preload(stack: LocalStackSettings, topic: str, workload: Workload, timeout_s: float) -> Preload:
    """Produce every message of ``workload`` to ``topic`` keyed by primary key; murmur2
    partitioning as Kafka's Java client does. Raises BenchError when a message is not delivered."""
    producer = Producer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "partitioner": "murmur2_random",  # Java's default partitioner for keyed records
            "enable.idempotence": True,  # order per partition kept across retries
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 262_144,
            "log_level": 3,  # errors only: start-up retries of a fresh broker are noise here
        }
    )
    result = Preload()

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None and len(result.failed) < 5:
            result.failed.append(str(err))

    started = time.monotonic()
    deadline = started + timeout_s
    for key, value in workload.messages():
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise BenchError(f"preload not done after {timeout_s:.0f} s") from None
                producer.poll(0.05)
        producer.poll(0)
        result.messages += 1
        result.bytes += len(key) + len(value or b"")
    remaining = producer.flush(max(1.0, deadline - time.monotonic()))
    result.seconds = time.monotonic() - started
    if remaining or result.failed:
        raise BenchError(f"preload: {remaining} messages undelivered, errors: {result.failed}")
    return result


# --------------------------------------------------------------------------- workers


def write_config(
    path: Path, stack: LocalStackSettings, run: Run, args: argparse.Namespace, registry_url: str | None = None
) -> None:
    """The pipeline configuration of the workers (metrics endpoint off); with ``registry_url``
    the source is ``format: avro`` with that Schema Registry."""
    batch: dict[str, int] = {}
    if args.batch_max_messages is not None:
        batch["max_messages"] = args.batch_max_messages
    if args.batch_max_bytes is not None:
        batch["max_bytes"] = args.batch_max_bytes
    props: dict[str, str] = dict(prop.split("=", 1) for prop in args.client_property)
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": stack.bootstrap_servers, "client_properties": props},
        "sources": [
            {
                # Never contacted by `run`: only the topic prefix and table list matter here.
                "name": run.name,
                "host": stack.host,
                "port": stack.source_pg_port,
                "database": run.database,
                "user": PG_SUPERUSER,
                "tables": ["public.bench"],
                "topic_prefix": run.name,
                **({"format": "avro", "schema_registry": {"url": registry_url}} if registry_url else {}),
            }
        ],
        "pipelines": [
            {
                "name": run.name,
                "source": run.name,
                "target": {
                    "url": f"postgresql://{PG_SUPERUSER}@{stack.host}:{stack.target_pg_port}/{run.database}",
                    "password": PG_PASSWORD,
                },
                **({"batch": batch} if batch else {}),
            }
        ],
        "metrics": {"enabled": False},
        "monitor": {"enabled": False},  # slot-lag monitoring is not part of the apply path
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@dataclass
class ProcStats:
    """CPU seconds (user + system) and peak RSS (VmHWM, MB) of one process, from /proc."""

    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


def proc_stats(pid: int) -> ProcStats | None:
    """Current :class:`ProcStats` of ``pid``; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": fields 3.. of proc(5)
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return ProcStats(cpu, hwm / 1024)


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Worker:
    """A worker process, its log and (when profiling) its py-spy recorder."""

    proc: subprocess.Popen[bytes]
    log: Path
    spy: subprocess.Popen[bytes] | None = None
    stats: ProcStats = field(default_factory=ProcStats)


def start_worker(
    index: int,
    config: Path,
    logs: Path,
    profile: Path | None,
    module: str = "pipeline.cli",
    env: dict[str, str] | None = None,
) -> Worker:
    """Start ``python -m <module> run -c CONFIG`` (``env``: extra environment variables, e.g. a
    per-worker ``CDC_METRICS__PORT``); with ``profile``, attach py-spy to it."""
    log = logs / f"worker-{index}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--log-level", "info", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    worker = Worker(proc, log)
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        cmd = [py_spy() or "py-spy", "record", "--pid", str(proc.pid), "--idle", "--rate", "100"]
        cmd += ["--format", "raw", "--output", str(profile / f"worker-{index}.txt")]
        with (logs / f"py-spy-{index}.log").open("ab") as err:
            worker.spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    return worker


def stop_workers(workers: list[Worker], timeout_s: float = 30) -> None:
    """SIGTERM every worker, wait up to ``timeout_s`` in all, then SIGKILL the rest."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for w in workers:
        try:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)
        if w.spy is not None:
            try:
                w.spy.wait(max(5.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.spy.kill()
                w.spy.wait(10)


@dataclass
class Applied:
    """Timings of the apply phase, seconds from the workers' start."""

    wall_s: float
    first_progress_s: float
    first_done: int
    """Messages covered by the offsets seen at ``first_progress_s``."""
    machine_busy: float
    """Share of all CPUs busy during the phase (0-1), every process on the machine."""
    target_backend_cpu_s: float
    """CPU seconds of the workers' target PostgreSQL backends (0 when not readable)."""
    broker_cpu_s: float | None
    """CPU seconds of the stack's Kafka broker during the phase (None when its PID is unknown)."""


def stored_total(conn: Conn, run: Run) -> int:
    """Sum of the group's next offsets on the bench topic stored in the target (0 before any)."""
    exists = conn.execute("SELECT to_regclass('cdc_control.offsets') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0  # not created yet (checked first: no error lines in the server log)
    row = conn.execute(
        "SELECT coalesce(sum(next_offset), 0) FROM cdc_control.offsets WHERE consumer_group = %s AND topic = %s",
        (run.group, run.topic),
    ).fetchone()
    return int(row[0]) if row else 0


def backend_cpu(conn: Conn, run: Run) -> float:
    """CPU seconds of the target backends serving this run's workers (local stack only)."""
    pids = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"cdc-pipeline:{run.name}",)
    ).fetchall()
    return sum(s.cpu_s for (pid,) in pids if (s := proc_stats(int(pid))) is not None)


def broker_cpu(stack: LocalStackSettings) -> float | None:
    """CPU seconds so far of the stack's Kafka broker (from ``<state>/kafka/kafka.pid``)."""
    pid = read_pid(stack.state / "kafka" / "kafka.pid")
    stats = proc_stats(pid) if pid is not None else None
    return stats.cpu_s if stats is not None else None


def apply_all(
    stack: LocalStackSettings, run: Run, total: int, workers: list[Worker], config: Path, args: argparse.Namespace
) -> Applied:
    """Start the workers and wait until the stored offsets reach ``total``; fills each
    worker's stats just before returning. Raises BenchError on a worker exit or timeout."""
    logs = config.parent
    with psycopg.connect(stack.pg_dsn("target", run.database), autocommit=True) as conn:
        busy0, all0 = machine_busy()
        broker0 = broker_cpu(stack)
        started = time.monotonic()
        workers.extend(start_worker(i, config, logs, args.profile) for i in range(args.workers))
        first = 0.0
        first_done = 0
        last_report = started
        while True:
            done = stored_total(conn, run)
            now = time.monotonic()
            if done and not first:
                first, first_done = now - started, done
            if done >= total:
                break
            for w in workers:
                if w.proc.poll() is not None:
                    raise BenchError(f"worker exited with {w.proc.returncode}:\n{_tail(w.log)}")
            if now - started > args.timeout:
                raise BenchError(f"apply not done after {args.timeout:.0f} s ({done:,}/{total:,} messages)")
            if now - last_report >= 10:
                last_report = now
                print(f"  ... {done:,}/{total:,} messages applied after {now - started:.0f} s", flush=True)
            time.sleep(POLL_S)
        wall = time.monotonic() - started
        busy1, all1 = machine_busy()
        broker1 = broker_cpu(stack)
        for w in workers:
            w.stats = proc_stats(w.proc.pid) or ProcStats()
        db_cpu = backend_cpu(conn, run)
    broker = broker1 - broker0 if broker0 is not None and broker1 is not None else None
    return Applied(wall, first, first_done, (busy1 - busy0) / max(1, all1 - all0), db_cpu, broker)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Baseline:
    """A bare consumer reading the whole topic: seconds and CPU seconds of this process."""

    messages: int
    seconds: float
    cpu_s: float


def consume_baseline(config: Path, run: Run, total: int, timeout_s: float) -> Baseline:
    """Read ``total`` messages of the bench topic with the workers' consumer configuration
    (``pipeline.app.consumer_config``, own group) touching each value, nothing else: the
    Kafka-side floor of a worker's CPU. Raises BenchError after ``timeout_s``."""
    settings = load_settings(config, {})
    conf = consumer_config(settings, settings.pipelines[0], "bench-baseline")
    conf["group.id"] = run.baseline_group
    consumer = Consumer(conf)
    consumer.subscribe([run.topic])
    seen = 0
    started, cpu0 = time.monotonic(), time.process_time()
    try:
        while seen < total:
            if time.monotonic() - started > timeout_s:
                raise BenchError(f"consume baseline: {seen:,}/{total:,} messages after {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                if msg.error() is None:
                    msg.value()
                    seen += 1
    finally:
        consumer.close()
    return Baseline(seen, time.monotonic() - started, time.process_time() - cpu0)


# --------------------------------------------------------------------------- verify and COPY ceiling

COLUMNS = ("id", "name", "amount", "updated_at", "payload")


def verify(conn: Conn, expected: dict[int, Row]) -> list[str]:
    """Differences between ``public.bench`` and ``expected`` (at most 5 listed; [] when equal)."""
    rows = conn.execute(sql.SQL("SELECT {} FROM public.bench").format(sql.SQL(", ").join(map(sql.Identifier, COLUMNS))))
    problems: list[str] = []
    seen = 0
    for row_id, name, amount, updated_at, payload in rows:
        seen += 1
        want = expected.get(row_id)
        got = (name, amount, updated_at, payload)
        if want is None:
            problems.append(f"id {row_id}: in the target but deleted in the source")
        elif got != (want.name, want.amount, want.updated_at, want.payload):
            problems.append(f"id {row_id}: target {got!r}, expected {want!r}")
        if len(problems) >= 5:
            return problems
    if seen != len(expected):
        problems.append(f"target has {seen:,} rows, the source {len(expected):,}")
    return problems


@dataclass
class CopyRate:
    """Rows COPYed and seconds taken (COPY and commit), per format."""

    rows: int
    seconds: dict[str, float]


def copy_ceiling(conn: Conn) -> CopyRate:
    """COPY the target's final rows (all columns, version columns included) into fresh tables
    ``LIKE public.bench INCLUDING ALL`` (same primary key), in text then binary format; one
    transaction each. The rows are read into memory first, so only the COPY is timed."""
    cols = [
        (str(name), int(oid))
        for name, oid in conn.execute(
            "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = 'public.bench'::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ).fetchall()
    ]
    names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols)
    rows = conn.execute(sql.SQL("SELECT {} FROM public.bench").format(names)).fetchall()
    seconds: dict[str, float] = {}
    for fmt in ("text", "binary"):
        table = sql.Identifier(f"bench_copy_{fmt}")
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE public.bench INCLUDING ALL)").format(table))
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            option = sql.SQL(" (FORMAT BINARY)" if fmt == "binary" else "")
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN{}").format(table, names, option)) as copy:
                copy.set_types([oid for _, oid in cols])
                for row in rows:
                    copy.write_row(row)
        seconds[fmt] = time.perf_counter() - started
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
    return CopyRate(len(rows), seconds)


# --------------------------------------------------------------------------- profile summary

# (label, marker) pairs; a sampled stack is charged to the label of its deepest frame that
# contains a marker. Frames look like "apply (sinks/postgres/sink.py:170)".
PROFILE_STAGES: list[tuple[str, str]] = [
    ("kafka consume (librdkafka poll)", "collect (pipeline/dataplane/steps.py"),
    ("batching (Batch.add)", "add (pipeline/dataplane/steps.py"),
    ("decode", "pipeline/decode/"),
    ("decode", "decode (pipeline/app.py"),
    ("transform", "pipeline/transform/"),
    ("transform", "transform (pipeline/app.py"),
    ("reduce", "pipeline/core/reduce.py"),
    ("sink: COPY to staging (psycopg)", "psycopg/_copy"),
    ("sink: COPY to staging (psycopg)", "Cursor.copy (psycopg/cursor.py"),
    ("sink: COPY row prep (sink.py)", "_adapt (sinks/postgres/sink.py"),
    ("sink: COPY row prep (sink.py)", "<listcomp> (sinks/postgres/sink.py"),
    ("sink: SQL statements (execute)", "execute (psycopg/connection.py"),
    ("sink: SQL statements (execute)", "executemany (psycopg/cursor.py"),
    ("sink: commit", "psycopg/transaction.py"),
    ("sink: other", "sinks/postgres/"),
    ("kafka offset commit", "_commit_kafka (pipeline/dataplane/runner.py"),
    ("dead-letter limiter", "pipeline/dataplane/dlq.py"),
    ("metrics", "_record (pipeline/dataplane/runner.py"),
    ("metrics", "_observe_latency (pipeline/dataplane/runner.py"),
    ("runner other", "_process (pipeline/dataplane/runner.py"),
]


def summarise_profile(files: list[Path]) -> list[tuple[str, float]]:
    """Share of the main thread's samples per stage over py-spy ``raw`` (collapsed-stack)
    files, largest first. Other threads (e.g. monitors waiting on a timer) are left out; main
    thread stacks outside the runner loop (imports, wiring) count as "start-up"."""
    counts: Counter[str] = Counter()
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            frames = stack.split(";")
            if not frames[0].startswith("_run_module_as_main"):
                continue  # not the main thread
            label = "start-up"
            if any("PipelineRunner.run (pipeline/dataplane/runner.py" in f for f in frames):
                label = "runner other"
                for frame in reversed(frames):
                    hit = next((lab for lab, marker in PROFILE_STAGES if marker in frame), None)
                    if hit is not None:
                        label = hit
                        break
            counts[label] += int(n)
    total = sum(counts.values()) or 1
    return [(label, n / total) for label, n in counts.most_common()]


# --------------------------------------------------------------------------- main


@contextmanager
def resources(stack: LocalStackSettings, run: Run, keep: bool) -> Iterator[None]:
    """Create the database; on exit drop it with the topics and group unless ``keep``."""
    with psycopg.connect(stack.pg_dsn("target"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(run.database)))
    try:
        yield
    finally:
        if keep:
            print(f"kept: topic {run.topic}, group {run.group}, database {run.database}")
        else:
            for problem in cleanup(stack, run):
                print(f"cleanup: {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring. Returns the exit status."""
    args = parse_args(argv)
    try:
        stack = stack_settings(args)
        check_stack(stack)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = Run.new()
    print(
        f"apply_throughput: {args.events:,} events over {args.keys:,} keys, {args.partitions} partitions, "
        f"{args.workers} worker(s), format {args.format}; Kafka {stack.bootstrap_servers}, "
        f"target port {stack.target_pg_port}, run {run.name}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    logs = Path(tempfile.mkdtemp(prefix=f"{run.name}-"))
    workers: list[Worker] = []
    ok = False
    try:
        with resources(stack, run, args.keep):
            if args.format == "avro":
                with schema_registry(stack, args.registry_port) as url:
                    ok = _bench(stack, run, args, logs, workers, url)
            else:
                ok = _bench(stack, run, args, logs, workers)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
    finally:
        stop_workers(workers)
    if ok and not args.keep:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"worker logs: {logs}")
    return 0 if ok else 1


def _bench(
    stack: LocalStackSettings,
    run: Run,
    args: argparse.Namespace,
    logs: Path,
    workers: list[Worker],
    registry_url: str | None = None,
) -> bool:
    admin = admin_client(stack)
    create_topic(admin, run.topic, args.partitions)
    workload = Workload(run.name, args.events, args.keys, args.seed, args.delete_ratio, database=run.database)
    if registry_url is not None:
        value_id, key_id = register_schemas(registry_url, run)
        workload.serializer = lambda prefix, database: DebeziumAvro(prefix, database, value_id, key_id)
        print(f"schemas registered at {registry_url}: value id {value_id}, key id {key_id}", flush=True)
    loaded = preload(stack, run.topic, workload, timeout_s=120 + args.events / 2000)
    ends = end_offsets(admin, run.topic, args.partitions)
    total = sum(ends.values())
    if total != loaded.messages:
        raise BenchError(f"topic holds {total:,} messages, {loaded.messages:,} were produced")
    events = workload.ops["c"] + workload.ops["u"] + workload.ops["d"]
    print(
        f"preload: {events:,} events (c {workload.ops['c']:,}, u {workload.ops['u']:,}, d {workload.ops['d']:,}) "
        f"+ {workload.ops['tombstone']:,} tombstones = {loaded.messages:,} messages, "
        f"{loaded.bytes / 1e6:,.0f} MB (avg {loaded.bytes / loaded.messages:,.0f} B) in {loaded.seconds:.1f} s; "
        f"per partition {[ends[p] for p in sorted(ends)]}",
        flush=True,
    )
    config = logs / "pipeline.yaml"
    write_config(config, stack, run, args, registry_url)
    if args.consume_baseline:
        base = consume_baseline(config, run, total, args.timeout)
        print(
            f"consume only: {base.messages / base.seconds:,.0f} messages/s, "
            f"{base.cpu_s / base.messages * 1e6:.1f} µs CPU per message ({base.seconds:.1f} s, {base.cpu_s:.1f} CPU s)",
            flush=True,
        )
    applied = apply_all(stack, run, total, workers, config, args)
    stop_workers(workers)
    with psycopg.connect(stack.pg_dsn("target", run.database), autocommit=True) as conn:
        problems = verify(conn, workload.expected)
        rate = copy_ceiling(conn)
    report(args, events, loaded, applied, workers, rate)
    if args.profile is not None:
        print(f"profile (py-spy, wall-clock samples of the workers' main threads; raw stacks in {args.profile}):")
        for label, share in summarise_profile(sorted(args.profile.glob("worker-*.txt"))):
            print(f"  {share:6.1%}  {label}")
    if problems:
        print("target matches: NO")
        for problem in problems:
            print(f"  {problem}")
        return False
    print(f"target matches: yes ({len(workload.expected):,} rows)")
    return True


def report(
    args: argparse.Namespace, events: int, loaded: Preload, applied: Applied, workers: list[Worker], rate: CopyRate
) -> None:
    """Print the figures (see docs/benchmarks.md for how to read them)."""
    eps = events / applied.wall_s
    after_first = applied.wall_s - applied.first_progress_s
    steady = "n/a"
    if after_first >= 1 and loaded.messages > applied.first_done:
        share = (loaded.messages - applied.first_done) / loaded.messages
        steady = f"{events * share / after_first:,.0f}"
    copy_text = rate.rows / rate.seconds["text"]
    copy_binary = rate.rows / rate.seconds["binary"]
    cpu = sum(w.stats.cpu_s for w in workers)
    print(f"apply: {applied.wall_s:.1f} s wall from worker start (first commit after {applied.first_progress_s:.1f} s)")
    print(f"events/s: {eps:,.0f} (messages/s {loaded.messages / applied.wall_s:,.0f}; after the first commit {steady})")
    print(f"format: {args.format}; bytes/event: {loaded.bytes / events:,.0f} (keys + values, tombstones included)")
    print(f"COPY rows/s: {copy_text:,.0f} (text; binary {copy_binary:,.0f}) for {rate.rows:,} final rows")
    print(f"ratio events/s / COPY rows/s: {eps / copy_text:.0%}")
    print(f"worker CPU s per 100k events: {cpu / events * 100_000:.2f} ({cpu:.1f} s in all)")
    for i, w in enumerate(workers):
        print(f"worker {i}: CPU {w.stats.cpu_s:.1f} s, peak RSS {w.stats.peak_rss_mb:.0f} MB")
    print(f"peak RSS MB: {max(w.stats.peak_rss_mb for w in workers):.0f} (max over workers)")
    cores = os.cpu_count() or 1
    busy = applied.machine_busy * cores * applied.wall_s
    broker = applied.broker_cpu_s
    rest = busy - cpu - applied.target_backend_cpu_s - (broker or 0.0)
    print(
        f"CPU budget: machine {applied.machine_busy:.0%} busy of {cores} cores = {busy:.0f} core-s: "
        f"workers {cpu:.0f}, target backends {applied.target_backend_cpu_s:.0f}, "
        f"Kafka broker {'?' if broker is None else f'{broker:.0f}'}, everything else {rest:.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
