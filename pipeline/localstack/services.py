"""The services of the local stack, each started as a real process.

- :class:`PostgresCluster`: a PostgreSQL cluster made by ``initdb`` (``wal_level=logical``),
  run with ``pg_ctl``; as root, the cluster runs as the ``postgres`` OS user.
- :class:`KafkaBroker`: Apache Kafka 4.x, one node in KRaft combined mode, formatted with
  ``kafka.tools.StorageTool format --standalone``.
- :class:`ConnectWorker`: Kafka Connect in distributed mode with the Debezium plugins.

Every service answers ``health()`` with a :class:`Health`; ``start()`` returns once the
process is launched, and the caller waits on health.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import psycopg
from confluent_kafka.admin import AdminClient

from pipeline.core.logs import kafka_logging
from pipeline.localstack import procs
from pipeline.localstack.config import PG_PASSWORD, PG_SUPERUSER, LocalStackSettings
from pipeline.localstack.jars import JarCache, ToolMissingError, java_binary

DEBEZIUM_POSTGRES_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
DEBEZIUM_JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"


@dataclass(frozen=True)
class Health:
    """A service's state: ``running`` (a process of ours exists) and ``ready`` (it answers)."""

    running: bool
    ready: bool
    detail: str


class Service(Protocol):
    """What the stack orchestrator needs from a service."""

    name: str

    def start(self) -> None:
        """Launch the process if it is not running; must not wait for readiness."""

    def stop(self) -> bool:
        """Stop the process this stack started; True when one was running."""

    def health(self) -> Health:
        """Probe the service once, quickly (a few seconds at most)."""

    @property
    def endpoint(self) -> str:
        """Where clients reach it."""

    @property
    def log_file(self) -> Path:
        """The service's log."""


def _log4j2_config(path: Path, log_file: Path) -> None:
    path.write_text(
        "\n".join(
            [
                "status = warn",
                "appender.file.type = File",
                "appender.file.name = FILE",
                f"appender.file.fileName = {log_file}",
                "appender.file.layout.type = PatternLayout",
                "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.file.ref = FILE",
                "logger.reflections.name = org.reflections",
                "logger.reflections.level = ERROR",
                "",
            ]
        ),
        encoding="utf-8",
    )


def _jvm_args(heap: str, log4j: Path) -> list[str]:
    return [
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
    ]


# --------------------------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path:
    """Folder of ``pg_ctl``/``initdb``: from PATH, else the newest ``/usr/lib/postgresql/*/bin``.

    Raises ToolMissingError with the install command when there is none.
    """
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise ToolMissingError("pg_ctl not found: install PostgreSQL (apt-get install -y postgresql)")
    return Path(candidates[-1]).parent


class PostgresCluster:
    """A PostgreSQL cluster of the local stack (``source`` or ``target``) on a loopback port."""

    def __init__(self, role: str, settings: LocalStackSettings) -> None:
        self.name = f"postgres-{role}"
        self.role = role
        self._settings = settings
        self.port = settings.source_pg_port if role == "source" else settings.target_pg_port
        self.root = pg_data_root(settings.state) / self.name
        self.data = self.root / "data"

    @property
    def endpoint(self) -> str:
        """libpq URL with the superuser (local development password)."""
        return f"postgresql://{PG_SUPERUSER}:***@{self._settings.host}:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """libpq URL with the password, for tools and tests."""
        return self._settings.pg_dsn(self.role)

    @property
    def log_file(self) -> Path:
        """Server log (written by pg_ctl -l)."""
        return self.root / "server.log"

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    def _initdb(self) -> None:
        bindir = pg_bindir()
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / ".pwfile"
        pwfile.write_text(PG_PASSWORD + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.root, pwfile):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        proc = self._run(
            [
                str(bindir / "initdb"),
                "-D", str(self.data),
                "-U", PG_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E", "UTF8",
                "--locale=C.UTF-8",
            ]
        )  # fmt: skip
        pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed for {self.name}:\n{proc.stdout}{proc.stderr}")
        conf = self.data / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as fh:
            fh.write("\ninclude_if_exists = 'cdc-local.conf'\n")

    def _write_conf(self) -> None:
        lines = [
            f"port = {self.port}",
            f"listen_addresses = '{self._settings.host}'",
            "unix_socket_directories = ''",
            "wal_level = logical",
            "max_replication_slots = 20",
            "max_wal_senders = 20",
            "max_connections = 200",
            "shared_buffers = 256MB",
            "max_wal_size = 2GB",
            "synchronous_commit = off",
            "logging_collector = off",
        ]
        path = self.data / "cdc-local.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        """initdb on first use, then ``pg_ctl start -w`` (blocks until it accepts connections)."""
        if self._postmaster_alive():
            return
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._write_conf()
        proc = self._run(
            [str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60", "start"]
        )
        if proc.returncode != 0:
            tail = _tail(self.log_file, 15)
            raise RuntimeError(f"pg_ctl start failed for {self.name}:\n{proc.stdout}{proc.stderr}\n{tail}")

    def stop(self) -> bool:
        """``pg_ctl stop -m fast``; True when the cluster was running."""
        if not self._postmaster_alive():
            return False
        self._run([str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])
        return True

    def _postmaster_alive(self) -> bool:
        pid = procs.read_pid(self.data / "postmaster.pid")
        return pid is not None and procs.is_ours(pid, str(self.data))

    def health(self) -> Health:
        """Running when the postmaster of our data folder lives; ready when ``SELECT 1`` answers."""
        running = self._postmaster_alive()
        if not running:
            return Health(False, False, "stopped")
        try:
            with psycopg.connect(self.dsn, connect_timeout=3) as conn:
                level = conn.execute("SHOW wal_level").fetchone()
        except psycopg.Error as exc:
            return Health(True, False, f"not accepting connections: {str(exc).strip().splitlines()[0][:120]}")
        return Health(True, True, f"wal_level={level[0] if level else '?'}")


def drop_database_slots(conn: psycopg.Connection[tuple[object, ...]], database: str, timeout_s: float = 60) -> None:
    """Drop every replication slot of ``database`` on ``conn``'s cluster (autocommit), ending
    the walsenders still holding them: a deleted connector releases its slot asynchronously.

    Raises TimeoutError when a slot is still in use after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        rows = conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", (database,)
        ).fetchall()
        if not rows:
            return
        for slot, pid in rows:
            if pid is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with contextlib.suppress(psycopg.errors.ObjectInUse):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        if time.monotonic() > deadline:
            raise TimeoutError(f"replication slots of {database} still in use: {rows}")
        time.sleep(0.2)


def pg_data_root(state: Path) -> Path:
    """Folder for cluster data: inside the state folder, unless the ``postgres`` OS user (used
    when we run as root) cannot reach it (e.g. a checkout under /root), then under /var/tmp."""
    if os.geteuid() != 0:
        return state
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(state.parent)], check=False)
    if probe.returncode == 0:
        return state
    digest = base64.b32encode(str(state).encode()).decode()[:20].lower()
    return Path("/var/tmp/cdc-pipeline") / digest  # noqa: S108 - fixed, root-owned parent; postgres owns the leaf


# --------------------------------------------------------------------------- Kafka


def kafka_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's ``org.apache.kafka.common.Uuid.randomUuid()``, ids whose text starts with ``-``
    are drawn again: ``kafka-storage format -t -abc...`` would read the id as an option flag
    and fail with "argument --cluster-id/-t: expected one argument" (1 id in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker:
    """Apache Kafka, one node acting as KRaft controller and broker."""

    name = "kafka"

    def __init__(self, settings: LocalStackSettings, jars: JarCache | None) -> None:
        self._settings = settings
        self._jars = jars
        self.dir = settings.state / "kafka"

    @property
    def endpoint(self) -> str:
        """bootstrap.servers for clients."""
        return self._settings.bootstrap_servers

    @property
    def log_file(self) -> Path:
        """Broker log (log4j2)."""
        return self.dir / "kafka.log"

    @property
    def _pid_file(self) -> Path:
        return self.dir / "kafka.pid"

    def _write_config(self) -> Path:
        s = self._settings
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{s.host}:{s.controller_port}",
            "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")
        return path

    def start(self) -> None:
        """Format the storage once (standalone KRaft), then launch ``kafka.Kafka``."""
        if procs.running_pid(self._pid_file, str(self.dir)) is not None:
            return
        if self._jars is None:
            raise RuntimeError("jar cache not resolved")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        log4j = self.dir / "log4j2.properties"
        _log4j2_config(log4j, self.log_file)
        java = java_binary()
        base = [java, *_jvm_args("256m", log4j), "-cp", self._jars.classpath]
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = kafka_cluster_id()
            proc = subprocess.run(
                [*base, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(config)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"Kafka storage format failed:\n{proc.stdout}{proc.stderr}")
        argv = [
            java,
            *_jvm_args(self._settings.kafka_heap, log4j),
            "-cp",
            self._jars.classpath,
            "kafka.Kafka",
            str(config),
        ]
        procs.spawn(argv, self._pid_file, self.dir / "stdout.log")

    def stop(self) -> bool:
        """SIGTERM (controlled shutdown), SIGKILL after 60 s."""
        return procs.stop(self._pid_file, str(self.dir), timeout_s=60)

    def health(self) -> Health:
        """Ready when the broker answers a metadata request."""
        if procs.running_pid(self._pid_file, str(self.dir)) is None:
            return Health(False, False, "stopped")
        admin = AdminClient(kafka_logging({"bootstrap.servers": self.endpoint, "socket.timeout.ms": 2000}))
        try:
            meta = admin.list_topics(timeout=3)
        except Exception as exc:  # any client error means "not ready yet"
            return Health(True, False, f"no metadata: {exc}")
        return Health(True, True, f"{len(meta.brokers)} broker(s), {len(meta.topics)} topic(s)")


# --------------------------------------------------------------------------- Kafka Connect


class ConnectWorker:
    """Kafka Connect, distributed mode, with the Debezium plugins on ``plugin.path``."""

    name = "connect"
    group_id = "cdc-local-connect"

    def __init__(self, settings: LocalStackSettings, jars: JarCache | None) -> None:
        self._settings = settings
        self._jars = jars
        self.dir = settings.state / "connect"

    @property
    def endpoint(self) -> str:
        """REST base URL."""
        return self._settings.connect_url

    @property
    def log_file(self) -> Path:
        """Worker log (log4j2)."""
        return self.dir / "connect.log"

    @property
    def _pid_file(self) -> Path:
        return self.dir / "connect.pid"

    def _write_config(self, jars: JarCache) -> Path:
        s = self._settings
        props = {
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": self.group_id,
            "listeners": f"http://{s.host}:{s.connect_port}",
            "rest.advertised.host.name": s.host,
            "rest.advertised.port": str(s.connect_port),
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "config.storage.topic": "_connect-configs",
            "offset.storage.topic": "_connect-offsets",
            "status.storage.topic": "_connect-status",
            "config.storage.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "offset.flush.interval.ms": "1000",
            "plugin.path": str(jars.plugins),
            "plugin.discovery": "service_load",
            "topic.creation.enable": "true",
            # Debezium's JSON envelopes repeat their schema in every message; lz4 shrinks them
            # about tenfold on disk and on the wire for little CPU (librdkafka decompresses).
            "producer.compression.type": "lz4",
            # Lets `connectors restart` and tests recover quickly from a failed task.
            "scheduled.rebalance.max.delay.ms": "10000",
        }
        path = self.dir / "connect-distributed.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")
        return path

    def start(self) -> None:
        """Launch ``ConnectDistributed``; the broker must be ready first."""
        if procs.running_pid(self._pid_file, str(self.dir)) is not None:
            return
        if self._jars is None:
            raise RuntimeError("jar cache not resolved")
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config(self._jars)
        log4j = self.dir / "log4j2.properties"
        _log4j2_config(log4j, self.log_file)
        argv = [
            java_binary(),
            *_jvm_args(self._settings.connect_heap, log4j),
            "-cp",
            self._jars.classpath,
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(config),
        ]
        procs.spawn(argv, self._pid_file, self.dir / "stdout.log")

    def stop(self) -> bool:
        """SIGTERM (stops tasks, leaves the group), SIGKILL after 60 s."""
        return procs.stop(self._pid_file, str(self.dir), timeout_s=60)

    def kill(self) -> bool:
        """SIGKILL the worker at once (fault injection); True when one was running."""
        return procs.stop(self._pid_file, str(self.dir), timeout_s=0)

    def health(self) -> Health:
        """Ready when ``GET /connector-plugins`` lists the Debezium PostgreSQL connector."""
        if procs.running_pid(self._pid_file, str(self.dir)) is None:
            return Health(False, False, "stopped")
        try:
            resp = httpx.get(f"{self.endpoint}/connector-plugins", timeout=3)
            resp.raise_for_status()
            plugins = {p["class"] for p in resp.json()}
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            return Health(True, False, f"REST not ready: {type(exc).__name__}")
        if DEBEZIUM_POSTGRES_CLASS not in plugins:
            return Health(True, False, "Debezium PostgreSQL plugin not loaded")
        has_jdbc = DEBEZIUM_JDBC_SINK_CLASS in plugins
        return Health(True, True, f"{len(plugins)} plugins (Debezium postgres, jdbc sink={has_jdbc})")


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
