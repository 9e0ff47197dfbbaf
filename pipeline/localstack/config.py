"""Settings of the local stack: state folder, jar cache and ports.

Read from ``CDC_LOCAL_*`` environment variables (pydantic-settings) and CLI flags, so that a
test session can run its own stack on other ports beside a developer's.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CACHE = Path.home() / ".cache" / "cdc-pipeline" / "jars"

# Development defaults of the clusters initdb creates. Local use only: documented in the README.
PG_SUPERUSER = "postgres"
PG_PASSWORD = "postgres"  # noqa: S105 - fixed password of throwaway local clusters
MARIADB_USER = "cdc"
MARIADB_PASSWORD = "cdc"  # noqa: S105 - fixed password of the throwaway local MariaDB


class LocalStackSettings(BaseSettings):
    """Where the local stack keeps its state and which loopback ports it binds."""

    model_config = SettingsConfigDict(env_prefix="CDC_LOCAL_", frozen=True, extra="ignore")

    state_dir: Path = Field(Path(".local-stack"), description="Data, logs and PID files of the stack.")
    cache_dir: Path = Field(DEFAULT_CACHE, description="Versioned cache of the Kafka/Debezium jars.")
    host: str = "127.0.0.1"
    source_pg_port: int = 5433
    target_pg_port: int = 5434
    kafka_port: int = 9092
    controller_port: int = 9093
    connect_port: int = 8083
    mariadb_port: int = 3307
    mariadb_enabled: bool = Field(True, description="Run the MariaDB target (second target database).")
    registry_port: int = 8081
    registry_enabled: bool = Field(True, description="Run the Apicurio Schema Registry (Avro sources).")
    registry_heap: str = "384m"
    kafka_heap: str = "768m"
    connect_heap: str = "1g"
    ready_timeout_s: float = Field(180.0, description="Seconds each service may take to become ready.")

    @property
    def state(self) -> Path:
        """Absolute state folder."""
        return self.state_dir.resolve()

    @property
    def bootstrap_servers(self) -> str:
        """Kafka bootstrap servers of the local broker."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def connect_url(self) -> str:
        """Kafka Connect REST base URL."""
        return f"http://{self.host}:{self.connect_port}"

    @property
    def registry_url(self) -> str:
        """Confluent-compatible API of the local Apicurio Registry (``schema_registry.url``)."""
        return f"http://{self.host}:{self.registry_port}/apis/ccompat/v7"

    def pg_dsn(self, role: str, dbname: str = "postgres") -> str:
        """libpq URL of the ``source`` or ``target`` cluster as the superuser."""
        port = self.source_pg_port if role == "source" else self.target_pg_port
        return f"postgresql://{PG_SUPERUSER}:{PG_PASSWORD}@{self.host}:{port}/{dbname}"

    def mariadb_url(self, database: str = "") -> str:
        """SQLAlchemy URL of the local MariaDB target as the development user (with password)."""
        return f"mariadb+pymysql://{MARIADB_USER}:{MARIADB_PASSWORD}@{self.host}:{self.mariadb_port}/{database}"
