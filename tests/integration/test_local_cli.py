"""`cdc-pipeline local up|status|down` as a user runs it: cold jar cache, own ports, no leftovers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.localstack import procs
from pipeline.localstack.services import pg_data_root

CLI = [sys.executable, "-m", "pipeline.cli"]


def run(args: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--log-format", "console", *args], check=False, env=env, capture_output=True, text=True, timeout=timeout
    )


def stack_pids(state: Path) -> list[int]:
    """PIDs whose command line names the state folder or the PostgreSQL data folder."""
    markers = {str(state), str(pg_data_root(state))}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(procs.is_ours(int(entry.name), m) for m in markers):
            pids.append(int(entry.name))
    return pids


def test_up_status_down_with_cold_cache(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        **os.environ,
        "CDC_LOCAL_STATE_DIR": str(state),
        "CDC_LOCAL_CACHE_DIR": str(tmp_path / "cold-cache"),
        "CDC_LOCAL_SOURCE_PG_PORT": "25433",
        "CDC_LOCAL_TARGET_PG_PORT": "25434",
        "CDC_LOCAL_KAFKA_PORT": "29092",
        "CDC_LOCAL_CONTROLLER_PORT": "29093",
        "CDC_LOCAL_CONNECT_PORT": "28083",
        "CDC_LOCAL_MARIADB_PORT": "25435",
        "CDC_LOCAL_REGISTRY_PORT": "28081",
    }
    try:
        up = run(["local", "up"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "jars: fetched into" in up.stdout  # the cache was cold
        assert re.search(r"local stack ready in \d+\.\d+s", up.stdout)
        assert "127.0.0.1:29092" in up.stdout

        again = run(["local", "up"], env)  # idempotent: everything already running
        assert again.returncode == 0, again.stderr
        assert "jars: cached at" in again.stdout

        status = run(["local", "status"], env)
        assert status.returncode == 0, status.stdout
        lines = [line for line in status.stdout.splitlines() if line.strip()]
        assert len(lines) == 6
        assert all(" healthy " in line for line in lines), status.stdout
        assert any(line.lstrip().startswith("mariadb") and "25435" in line for line in lines), status.stdout
        assert any(line.lstrip().startswith("registry") and "28081" in line for line in lines), status.stdout
        assert stack_pids(state), "no stack process found while it runs"
    finally:
        down = run(["local", "down"], env)
    assert down.returncode == 0, down.stderr
    assert "stopped: connect, registry, kafka, mariadb, postgres-target, postgres-source" in down.stdout
    assert stack_pids(state) == []
    status = run(["local", "status"], env)
    assert status.returncode == 1
    assert status.stdout.count(" stopped ") == 6
    purge = run(["local", "down", "--purge"], env)
    assert purge.returncode == 0
    assert not state.exists()
