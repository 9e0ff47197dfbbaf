"""The local stack: real PostgreSQL, MariaDB, Kafka and Kafka Connect processes under a state folder.

``LocalStack(settings).up()`` fetches the jars (cached), starts the PostgreSQL source and
target clusters, the MariaDB target (unless ``mariadb_enabled`` is off), the Kafka broker, the
Apicurio Schema Registry (unless ``registry_enabled`` is off) and the Connect worker, and waits
until each is ready;
it is idempotent. ``down()`` stops only the processes it started (by PID file);
``down(purge=True)`` also deletes the state folder. See ``../shared/design.md``, "Local stack".
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.localstack.config import LocalStackSettings
from pipeline.localstack.jars import JarCache, cache_for, ensure_jars
from pipeline.localstack.mariadb import MariaDBServer
from pipeline.localstack.registry import SchemaRegistryProcess
from pipeline.localstack.services import (
    ConnectWorker,
    Health,
    KafkaBroker,
    PostgresCluster,
    Service,
    pg_data_root,
)

__all__ = ["LocalStack", "LocalStackSettings", "ServiceStatus", "StackStartError", "settings_for"]


EXITED_PROBES = 4
"""Consecutive probes (0.5 s apart) that must find a service's process gone before start-up is
declared failed: a single miss was seen right after spawning mariadbd on a loaded machine."""


class StackStartError(RuntimeError):
    """A service did not become ready in time; the message carries the tail of its log."""


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``local status``."""

    name: str
    health: Health
    endpoint: str


class LocalStack:
    """Orchestrates the local services; see the module docstring."""

    def __init__(self, settings: LocalStackSettings, report: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self._report = report
        self._jars: JarCache | None = None
        try:
            cached = cache_for(settings.cache_dir)
            self._jars = cached if cached.complete else None
        except OSError:
            self._jars = None
        self.source = PostgresCluster("source", settings)
        self.target = PostgresCluster("target", settings)
        self.kafka = KafkaBroker(settings, self._jars)
        self.connect = ConnectWorker(settings, self._jars)
        self.mariadb = MariaDBServer(settings, pg_data_root(settings.state))
        self.registry = self._make_registry(self._jars)

    def _make_registry(self, jars: JarCache | None) -> SchemaRegistryProcess:
        s = self.settings
        return SchemaRegistryProcess(s.state, jars, s.host, s.registry_port, s.registry_heap)

    @property
    def services(self) -> list[Service]:
        """In start order (MariaDB only when ``mariadb_enabled``, the registry only when
        ``registry_enabled``)."""
        extra: list[Service] = [self.mariadb] if self.settings.mariadb_enabled else []
        registry: list[Service] = [self.registry] if self.settings.registry_enabled else []
        return [self.source, self.target, *extra, self.kafka, *registry, self.connect]

    def up(self) -> dict[str, float]:
        """Start every service that is not running and wait until all are ready.

        Returns seconds spent per step (``jars``, each service, ``total``). Raises
        StackStartError when a service is not ready within ``ready_timeout_s``, ToolMissingError
        when java, mvn or PostgreSQL is missing.
        """
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        self.settings.state.mkdir(parents=True, exist_ok=True)
        save_settings(self.settings)
        jars, fetched = ensure_jars(self.settings.cache_dir)
        self._jars = jars
        self.kafka = KafkaBroker(self.settings, jars)
        self.connect = ConnectWorker(self.settings, jars)
        self.registry = self._make_registry(jars)
        timings["jars"] = time.monotonic() - t0
        self._report(f"jars: {'fetched into' if fetched else 'cached at'} {jars.root} ({timings['jars']:.1f}s)")

        t = time.monotonic()
        self.kafka.start()  # the JVMs boot while PostgreSQL initialises
        if self.settings.registry_enabled:
            self.registry.start()
        databases: list[Service] = [self.source, self.target]
        if self.settings.mariadb_enabled:
            databases.append(self.mariadb)
        for db in databases:
            ts = time.monotonic()
            db.start()
            self._wait_ready(db)
            timings[db.name] = time.monotonic() - ts
            self._report(f"{db.name}: ready at {db.endpoint} ({timings[db.name]:.1f}s)")
        self._wait_ready(self.kafka)
        timings["kafka"] = time.monotonic() - t
        self._report(f"kafka: ready at {self.kafka.endpoint} ({timings['kafka']:.1f}s)")

        t = time.monotonic()
        self.connect.start()
        self._wait_ready(self.connect)
        timings["connect"] = time.monotonic() - t
        self._report(f"connect: ready at {self.connect.endpoint} ({timings['connect']:.1f}s)")
        if self.settings.registry_enabled:
            t = time.monotonic()
            self._wait_ready(self.registry)
            timings["registry"] = time.monotonic() - t
            self._report(f"registry: ready at {self.registry.endpoint} ({timings['registry']:.1f}s)")
        timings["total"] = time.monotonic() - t0
        return timings

    def _wait_ready(self, service: Service) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        health = service.health()
        gone = 0  # consecutive probes that found no process: one alone can be a start-up race
        while not health.ready:
            gone = 0 if health.running else gone + 1
            if gone >= EXITED_PROBES:
                raise StackStartError(f"{service.name} exited during start-up; last log lines:\n{_tail(service)}")
            if time.monotonic() > deadline:
                raise StackStartError(
                    f"{service.name} not ready after {self.settings.ready_timeout_s:.0f}s ({health.detail}); "
                    f"last log lines:\n{_tail(service)}"
                )
            time.sleep(0.5)
            health = service.health()

    def down(self, purge: bool = False) -> list[str]:
        """Stop the services in reverse order; returns the names of those that were running.

        With ``purge`` the state folder (and PostgreSQL data kept outside it) is deleted.
        """
        stopped = [svc.name for svc in reversed(self.services) if svc.stop()]
        if purge:
            pg_root = pg_data_root(self.settings.state)
            if pg_root != self.settings.state:
                shutil.rmtree(pg_root, ignore_errors=True)
            shutil.rmtree(self.settings.state, ignore_errors=True)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """Probe each service once."""
        return [ServiceStatus(svc.name, svc.health(), svc.endpoint) for svc in self.services]

    def log_files(self) -> dict[str, str]:
        """Service name -> log path."""
        return {svc.name: str(svc.log_file) for svc in self.services}


STACK_FILE = "stack.json"


def save_settings(settings: LocalStackSettings) -> None:
    """Record the stack's ports in ``<state>/stack.json`` so later commands on the same state
    folder (``status``, ``down``) probe the right ports."""
    path = settings.state / STACK_FILE
    path.write_text(settings.model_dump_json(indent=2), encoding="utf-8")


def settings_for(state_dir: Path | None) -> LocalStackSettings:
    """Settings of the stack in ``state_dir`` (default: ``CDC_LOCAL_STATE_DIR`` or
    ``.local-stack``): the recorded ``stack.json`` when present, else env/defaults."""
    base = LocalStackSettings() if state_dir is None else LocalStackSettings(state_dir=state_dir)
    recorded = base.state / STACK_FILE
    if recorded.exists():
        data = json.loads(recorded.read_text(encoding="utf-8"))
        data["state_dir"] = str(base.state)
        return LocalStackSettings(**data)
    return base


def _tail(service: Service, lines: int = 25) -> str:
    try:
        text = service.log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
