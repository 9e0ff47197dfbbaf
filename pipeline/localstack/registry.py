"""Apicurio Registry 3.x as a local-stack process: the Schema Registry of Avro change topics.

The registry is the Quarkus distribution fetched by ``deploy/local/pom.xml``
(``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``), run as
``java -jar quarkus-run.jar`` with its default in-memory storage (H2): schemas live as long
as the process, like the rest of a test stack. Endpoints used:

- ``/apis/registry/v2``: Apicurio's API, used by Kafka Connect's ``AvroConverter``;
- ``/apis/ccompat/v7``: the Confluent-compatible API read by the pipeline
  (``GET /schemas/ids/{id}``).

Quarkus settings are passed as ``-D`` system properties: ``quarkus.http.host``/``port`` (the
loopback port of the stack) and ``quarkus.management.host``/``port``: Apicurio builds its
management interface (health, metrics) in, and ``quarkus.management.enabled`` is a build-time
property that ``-D`` cannot turn off, so without them it binds ``0.0.0.0:9000`` in every stack
and a second stack fails with "Address already in use". The log goes to a file.
Ports: dev 8081 (management 8082), test stack ``18081 + 100 * slot`` (management +1).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from pipeline.localstack import procs
from pipeline.localstack.jars import JarCache, registry_java_binary
from pipeline.localstack.services import Health

DEFAULT_PORT = 8081
CCOMPAT_PATH = "/apis/ccompat/v7"
APICURIO_V2_PATH = "/apis/registry/v2"


class SchemaRegistryProcess:
    """Apicurio Registry under ``<state>/registry`` on ``host:port`` (a local-stack service).

    Same contract as the other local services (``pipeline.localstack.services.Service``):
    ``start()`` launches without waiting, ``health()`` probes once, ``stop()`` stops only the
    process recorded in the PID file and still running from this state folder.
    """

    name = "registry"

    def __init__(
        self, state: Path, jars: JarCache | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT, heap: str = "384m"
    ) -> None:
        self._jars = jars
        self.host = host
        self.port = port
        self.heap = heap
        self.dir = state.resolve() / "registry"

    @property
    def management_port(self) -> int:
        """Port of Quarkus' management interface (health, metrics): the API port + 1."""
        return self.port + 1

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the registry."""
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """Confluent-compatible API base URL (what ``schema_registry.url`` should be)."""
        return self.base_url + CCOMPAT_PATH

    @property
    def converter_url(self) -> str:
        """Apicurio v2 API URL (what Kafka Connect's ``AvroConverter`` talks to)."""
        return self.base_url + APICURIO_V2_PATH

    @property
    def log_file(self) -> Path:
        """Registry log (Quarkus console output)."""
        return self.dir / "registry.log"

    @property
    def _pid_file(self) -> Path:
        return self.dir / "registry.pid"

    def argv(self, java: str) -> list[str]:
        """The command line that runs the registry with ``java``."""
        if self._jars is None:
            raise RuntimeError("jar cache not resolved")
        return [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dcdc.state={self.dir}",  # marker: our processes are recognised by their state folder
            f"-Dquarkus.http.host={self.host}",
            f"-Dquarkus.http.port={self.port}",
            f"-Dquarkus.management.host={self.host}",
            f"-Dquarkus.management.port={self.management_port}",
            "-Dquarkus.http.access-log.enabled=false",
            "-Dapicurio.ccompat.legacy-id-mode.enabled=false",
            "-jar",
            str(self._jars.registry_jar),
        ]

    def start(self) -> None:
        """Launch the registry unless it runs. Raises ToolMissingError without a Java 21+,
        RuntimeError when the jar cache is not resolved."""
        if procs.running_pid(self._pid_file, str(self.dir)) is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        procs.spawn(self.argv(registry_java_binary()), self._pid_file, self.log_file)

    def stop(self) -> bool:
        """Stop the registry this state folder started; True when one was running."""
        return procs.stop(self._pid_file, str(self.dir), timeout_s=30)

    def health(self) -> Health:
        """Running: our process is alive; ready: ``GET /apis/ccompat/v7/subjects`` answers 200."""
        running = procs.running_pid(self._pid_file, str(self.dir)) is not None
        if not running:
            return Health(False, False, "not running")
        try:
            response = httpx.get(self.endpoint + "/subjects", timeout=3)
        except httpx.HTTPError as exc:
            return Health(True, False, f"not answering: {type(exc).__name__}")
        if response.status_code != 200:
            return Health(True, False, f"HTTP {response.status_code}")
        return Health(True, True, "ready")
