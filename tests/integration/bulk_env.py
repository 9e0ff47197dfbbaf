"""A per-test bulk-load setup on the real stack: a config file for a fresh source database (user
postgres) with ``initial_load: bulk`` and one PostgreSQL pipeline, and readers of what a load
left behind (slots, state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

from pipeline.core.settings.loading import load_settings
from pipeline.core.settings.root import Settings
from pipeline.localstack import LocalStack
from tests.conftest import Databases


def bulk_config(
    stack: LocalStack,
    db: Databases,
    name: str,
    tables: list[str],
    tmp: Path,
    *,
    pipeline: dict[str, Any] | None = None,
    bulk_load: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    target_schema: str = "public",
) -> tuple[Path, Settings]:
    """Write the config (source ``name``, pipeline ``p_<name>``; ``source`` overrides source
    keys) and load it."""
    s = stack.settings
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": s.bootstrap_servers},
        "connect": {"url": s.connect_url, "timeout_s": 60},
        "sources": [
            {
                "name": name,
                "host": s.host,
                "port": s.source_pg_port,
                "database": db.name,
                "user": "postgres",
                "password": "postgres",
                "sslmode": "disable",
                "tables": tables,
                "heartbeat_interval_ms": 1000,
                "initial_load": "bulk",
                "bulk_load": {"chunk_rows": 1000, "jobs": 3, **(bulk_load or {})},
                "connector_overrides": {
                    "topic.creation.default.partitions": 1,
                    "topic.creation.default.replication.factor": 1,
                },
                **(source or {}),
            }
        ],
        "pipelines": [
            {
                "name": f"p_{name}",
                "source": name,
                "target": {
                    "url": f"postgresql://postgres@{s.host}:{s.target_pg_port}/{db.name}",
                    "password": "postgres",
                    "schema": target_schema,
                },
                "batch": {"max_wait_ms": 200},
                "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 2},
                **(pipeline or {}),
            }
        ],
        "metrics": {"enabled": False},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, load_settings(path, {})


def slots_of(db: Databases) -> list[str]:
    """Replication slots of the test's source database."""
    with psycopg.connect(db.source_dsn) as conn:
        return [
            str(r[0])
            for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = current_database() ORDER BY 1"
            ).fetchall()
        ]


def load_state(db: Databases, pipeline: str) -> dict[str, Any] | None:
    """The stored bulk-load state of ``pipeline`` in the target (control schema cdc_control)."""
    with psycopg.connect(db.target_dsn) as conn:
        try:
            row = conn.execute("SELECT state FROM cdc_control.bulk_loads WHERE pipeline = %s", (pipeline,)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return None if row is None else dict(row[0])
