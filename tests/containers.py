"""The test stack from containers (testcontainers), for machines with a Docker engine:
``CDC_TEST_STACK=containers pytest ...``. The local-process stack (``pipeline.localstack``)
stays the default; this one runs the same services from official images - the images of
docker-compose.yml where compose has the service (PostgreSQL, Kafka, Debezium Connect), and the
versions of the local stack for the others (MariaDB, Apicurio Registry) - on the same host ports
as the test stack, so every fixture and test reads its addresses from the same
``LocalStackSettings``.

Definitions (:func:`stack_specs`) are plain data, built and unit-tested without a Docker
engine (tests/unit/test_containers.py); :class:`ContainerStack` turns them into testcontainers
objects and starts them only when asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import psycopg
import pymysql
import yaml
from confluent_kafka.admin import AdminClient
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from pipeline.localstack import LocalStackSettings
from pipeline.localstack.config import MARIADB_PASSWORD, MARIADB_USER, PG_PASSWORD, PG_SUPERUSER

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
# Services docker-compose.yml does not run, at the local stack's versions (Debian 12's MariaDB
# 10.11; deploy/local/pom.xml's version.apicurio).
MARIADB_IMAGE = "mariadb:10.11"
REGISTRY_IMAGE = "quay.io/apicurio/apicurio-registry:3.3.3"
INTERNAL_KAFKA = "kafka:9094"  # the listener containers use on the stack's network


@dataclass(frozen=True)
class ContainerSpec:
    """One container: ``image``, environment, ``ports`` (container port -> host port, bound
    to 127.0.0.1), ``command`` (None: the image's), network ``alias`` and ``ready`` (what
    :class:`ContainerStack` waits for: ``postgres``, ``mariadb``, ``kafka``, ``http:<url>``)."""

    name: str
    image: str
    alias: str
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[int, int] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    ready: str = ""


def compose_images(path: Path = COMPOSE) -> dict[str, str]:
    """``service -> image`` of docker-compose.yml (services built from the Dockerfile left out)."""
    services = yaml.safe_load(path.read_text())["services"]
    return {name: svc["image"] for name, svc in services.items() if "image" in svc}


def _postgres(name: str, image: str, host_port: int, logical: bool) -> ContainerSpec:
    command = None
    if logical:  # the source: what Debezium needs (docker-compose.yml's source-postgres command)
        command = ("postgres", "-c", "wal_level=logical", "-c", "max_replication_slots=20", "-c", "max_wal_senders=20")
    return ContainerSpec(
        name=name,
        image=image,
        alias=name,
        env={"POSTGRES_USER": PG_SUPERUSER, "POSTGRES_PASSWORD": PG_PASSWORD, "POSTGRES_DB": "postgres"},
        ports={5432: host_port},
        command=command,
        ready="postgres",
    )


def _kafka(image: str, settings: LocalStackSettings) -> ContainerSpec:
    """KRaft broker+controller; clients on the host use 127.0.0.1:<kafka_port>, containers
    (Connect) kafka:9094."""
    return ContainerSpec(
        name="kafka",
        image=image,
        alias="kafka",
        env={
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": "HOST://:9092,INTERNAL://:9094,CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"HOST://{settings.host}:{settings.kafka_port},INTERNAL://{INTERNAL_KAFKA}",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,HOST:PLAINTEXT,INTERNAL:PLAINTEXT",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        },
        ports={9092: settings.kafka_port},
        ready="kafka",
    )


def _connect(image: str, settings: LocalStackSettings) -> ContainerSpec:
    return ContainerSpec(
        name="connect",
        image=image,
        alias="connect",
        env={
            "BOOTSTRAP_SERVERS": INTERNAL_KAFKA,
            "GROUP_ID": "cdc-test-connect",
            "CONFIG_STORAGE_TOPIC": "_connect-configs",
            "OFFSET_STORAGE_TOPIC": "_connect-offsets",
            "STATUS_STORAGE_TOPIC": "_connect-status",
            "CONFIG_STORAGE_REPLICATION_FACTOR": "1",
            "OFFSET_STORAGE_REPLICATION_FACTOR": "1",
            "STATUS_STORAGE_REPLICATION_FACTOR": "1",
            "CONNECT_PRODUCER_COMPRESSION_TYPE": "lz4",  # as the local stack's worker
            "ENABLE_APICURIO_CONVERTERS": "true",  # Avro through the registry, as the local stack's plugin.path
        },
        ports={8083: settings.connect_port},
        ready=f"http:{settings.connect_url}/connector-plugins",
    )


def stack_specs(settings: LocalStackSettings, images: Mapping[str, str] | None = None) -> list[ContainerSpec]:
    """The containers of the test stack, in start order, on ``settings``' host ports.

    ``images``: ``service -> image`` (default: docker-compose.yml's). PostgreSQL source and
    target (the superuser and password of the local stack), MariaDB when
    ``settings.mariadb_enabled``, Kafka, Debezium Connect, the Apicurio Registry when
    ``settings.registry_enabled``.
    """
    images = dict(images if images is not None else compose_images())
    specs = [
        _postgres("source-postgres", images["source-postgres"], settings.source_pg_port, logical=True),
        _postgres("target-postgres", images["target-postgres"], settings.target_pg_port, logical=False),
    ]
    if settings.mariadb_enabled:
        specs.append(
            ContainerSpec(
                name="mariadb",
                image=MARIADB_IMAGE,
                alias="mariadb",
                env={"MARIADB_ROOT_PASSWORD": MARIADB_PASSWORD},  # the development user is created when ready
                ports={3306: settings.mariadb_port},
                ready="mariadb",
            )
        )
    specs += [_kafka(images["kafka"], settings), _connect(images["connect"], settings)]
    if settings.registry_enabled:
        specs.append(
            ContainerSpec(
                name="registry",
                image=REGISTRY_IMAGE,
                alias="registry",
                ports={8080: settings.registry_port},
                ready=f"http:{settings.registry_url}/subjects",
            )
        )
    return specs


class ContainerService:
    """One started container: ``stop()``/``start()``/``kill()`` for the fault tests, like the
    local stack's services (data folders are not reachable: tests needing them stay local)."""

    def __init__(self, spec: ContainerSpec, container: Any) -> None:
        self.spec = spec
        self.container = container

    def stop(self) -> None:
        """Stop the container (SIGTERM, then SIGKILL after Docker's timeout); it can start again."""
        self.container.get_wrapped_container().stop()

    def start(self) -> None:
        """Start the stopped container again."""
        self.container.get_wrapped_container().start()

    def kill(self) -> None:
        """SIGKILL the container's main process."""
        self.container.get_wrapped_container().kill()

    def health(self) -> bool:
        """True when the container runs (and answers its HTTP readiness URL, if it has one)."""
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status != "running":
            return False
        if self.spec.ready.startswith("http:"):
            try:
                return httpx.get(self.spec.ready.removeprefix("http:"), timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        return True


class ContainerStack:
    """The test stack from :func:`stack_specs`: ``up()`` starts every container on one Docker
    network and waits until each is ready (``settings.ready_timeout_s`` each); ``down()``
    removes them. ``settings`` is the same LocalStackSettings the local stack uses."""

    def __init__(self, settings: LocalStackSettings, report: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.report = report
        self.specs = stack_specs(settings)
        self.services: dict[str, ContainerService] = {}
        self._network: Any = None

    @property
    def source(self) -> ContainerService:
        return self.services["source-postgres"]

    @property
    def target(self) -> ContainerService:
        return self.services["target-postgres"]

    @property
    def kafka(self) -> ContainerService:
        return self.services["kafka"]

    @property
    def connect(self) -> ContainerService:
        return self.services["connect"]

    def up(self) -> None:
        """Start the network and the containers in order, each ready before the next."""
        self._network = Network()
        self._network.create()
        for spec in self.specs:
            container = DockerContainer(spec.image).with_network(self._network).with_network_aliases(spec.alias)
            for key, value in spec.env.items():
                container = container.with_env(key, value)
            for inner, outer in spec.ports.items():
                container = container.with_bind_ports(inner, outer)
            if spec.command is not None:
                container = container.with_command(list(spec.command))
            self.report(f"starting {spec.name} ({spec.image})")
            self.services[spec.name] = ContainerService(spec, container.start())  # needs the engine
            self._wait_ready(spec)

    def down(self) -> None:
        """Remove every container and the network."""
        for service in reversed(list(self.services.values())):
            service.container.stop()
        self.services.clear()
        if self._network is not None:
            self._network.remove()
            self._network = None

    def _wait_ready(self, spec: ContainerSpec) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self._ready(spec):
                    self.report(f"{spec.name} ready")
                    return
            except Exception as exc:  # any failure means "not yet"; the last one is reported
                last = exc
            time.sleep(1)
        raise TimeoutError(f"{spec.name} not ready after {self.settings.ready_timeout_s} s: {last}")

    def _ready(self, spec: ContainerSpec) -> bool:
        if spec.ready == "postgres":
            role = "source" if spec.name.startswith("source") else "target"
            with psycopg.connect(self.settings.pg_dsn(role), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return True
        if spec.ready == "mariadb":
            # As the local stack does: the development user may create and drop databases.
            with (
                pymysql.connect(
                    host=self.settings.host,
                    port=self.settings.mariadb_port,
                    user="root",
                    password=MARIADB_PASSWORD,
                    connect_timeout=3,
                ) as conn,
                conn.cursor() as cur,
            ):
                cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (MARIADB_USER, MARIADB_PASSWORD))
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'%%' WITH GRANT OPTION", (MARIADB_USER,))
            return True
        if spec.ready == "kafka":
            AdminClient({"bootstrap.servers": self.settings.bootstrap_servers}).list_topics(timeout=3)
            return True
        if spec.ready.startswith("http:"):
            return httpx.get(spec.ready.removeprefix("http:"), timeout=3).status_code == 200
        return True


def docker_engine_available() -> bool:
    """True when a Docker engine answers (docker.from_env().ping())."""
    try:
        return bool(docker.from_env(timeout=5).ping())
    except Exception:  # no socket, no permission, no daemon: all "not available"
        return False
