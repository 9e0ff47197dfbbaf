"""Two `cdc-pipeline control` replicas against the real stack: exactly one is active, a `kill -9`
of it hands the lease to the other within 30 s, and a failed connector task is restarted once, not
once per replica."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.integration.sources import TEST_OVERRIDES, Cli, Env, wait_status

TAKEOVER_BOUND_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """One `cdc-pipeline control` process and its metrics port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def samples(self, name: str, required: bool = False) -> list[tuple[dict[str, str], float]]:
        """The samples of ``name``; [] while the endpoint does not answer, unless ``required``
        (then the replica must answer: a scrape that times out on a loaded machine is retried)."""
        for attempt in range(5 if required else 1):
            try:
                text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
                break
            except httpx.TransportError:
                if not required:
                    return []
                if attempt == 4 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"replica on :{self.port} (exit {self.proc.poll()}) does not answer:\n"
                        + self.log.read_text(errors="replace")[-3000:]
                    ) from None
                time.sleep(1)
        return [
            (s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]

    def value(self, name: str, required: bool = False, **labels: str) -> float:
        samples = self.samples(name, required)
        return sum(v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))

    @property
    def active(self) -> bool:
        return self.value("cdc_control_active") == 1


class Replicas(list[Replica]):
    """The replicas a test started; ``start(config)`` launches one more."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.tmp_path = tmp_path

    def start(self, config: Path) -> Replica:
        port = _free_port()
        log = self.tmp_path / f"control-{len(self)}.log"
        environ = {
            **os.environ,
            "CDC_METRICS__PORT": str(port),
            "CDC_METRICS__HOST": "127.0.0.1",
            "CDC_MONITOR__INTERVAL_S": "1",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "control", "-c", str(config)],
            cwd=REPO,
            env=environ,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        replica = Replica(proc, port, log)
        self.append(replica)
        return replica


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    """Control replicas of this test; SIGTERM'd (then killed) at the end."""
    started = Replicas(tmp_path)
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in started:
        try:
            r.proc.wait(30)
        except subprocess.TimeoutExpired:
            r.proc.kill()


def _wait(condition, timeout_s: float, what: str, replicas: list[Replica]) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout_s:
            logs = "\n".join(r.log.read_text(errors="replace")[-3000:] for r in replicas)
            raise AssertionError(f"{what}: not within {timeout_s}s\n{logs}")
        time.sleep(0.2)
    return time.monotonic() - t0


def _one_active(replicas: list[Replica]) -> bool:
    live = [r for r in replicas if r.proc.poll() is None]
    return sum(r.active for r in live) == 1 and all(r.samples("cdc_control_active") for r in live)


def test_kill_9_of_the_active_replica_hands_the_lease_to_the_standby(env: Env, cli: Cli, replicas: Replicas) -> None:
    env.tables_owned_by_role("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    config = env.config(["public.items"])
    assert cli("source", "prepare", "-c", config).exit_code == 0
    a, b = replicas.start(config), replicas.start(config)
    _wait(lambda: _one_active([a, b]), 60, "exactly one active replica", [a, b])
    # The second replica's join must not take the lease from the first (an eager rebalance
    # revoked it from everyone, and both replicas exited as having lost it).
    time.sleep(5)
    assert all(r.proc.poll() is None for r in (a, b)), "a replica exited after the other joined"
    assert _one_active([a, b])
    active, standby = (a, b) if a.active else (b, a)
    assert standby.value("cdc_control_active") == 0
    # The standby opens no monitor: it exports no slot series of its own.
    assert not standby.samples("cdc_replication_slot_exists")
    _wait(
        lambda: bool(active.samples("cdc_replication_slot_exists")), 30, "the active replica monitors the slot", [a, b]
    )

    active.proc.kill()  # SIGKILL: no goodbye to the group coordinator
    active.proc.wait(10)
    took = _wait(lambda: standby.active, TAKEOVER_BOUND_S, "standby takes over", [a, b])
    print(f"takeover after kill -9: {took:.1f} s")
    assert took < TAKEOVER_BOUND_S
    assert standby.value("cdc_control_lease_acquired_total") == 1
    _wait(lambda: bool(standby.samples("cdc_replication_slot_exists")), 30, "the new active replica monitors", [a, b])

    standby.proc.send_signal(signal.SIGTERM)
    assert standby.proc.wait(30) == 0


def test_a_failed_connector_task_is_restarted_once_not_once_per_replica(env: Env, cli: Cli, replicas: Replicas) -> None:
    cli.secrets.add(env.password)
    env.tables_owned_by_role("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    # The task fails about 1 s after its heartbeat query first fails (one retry, 1 s apart).
    overrides = {**TEST_OVERRIDES, "errors.max.retries": 1, "retriable.restart.connector.wait.ms": 1000}
    config = env.config(["public.items"], connector_overrides=overrides)
    assert cli("source", "prepare", "-c", config).exit_code == 0
    assert cli("connectors", "apply", "-c", config).exit_code == 0
    wait_status(env, lambda s: s.healthy)
    a, b = replicas.start(config), replicas.start(config)
    _wait(lambda: _one_active([a, b]), 60, "exactly one active replica", [a, b])

    env.run_sql("DROP TABLE cdc.heartbeat")  # the next heartbeat.action.query fails the task

    def restarts(required: bool = False) -> float:
        return sum(r.value("cdc_connector_task_restarts_total", required) for r in (a, b))

    _wait(lambda: restarts() >= 1, 90, "the failed task is restarted", [a, b])
    # The restarted task fails again at once (the table is still gone); the active replica's
    # backoff allows its next restart only 30 s later. A second active replica would have
    # restarted it straight away.
    time.sleep(15)
    assert all(r.proc.poll() is None for r in (a, b)), "a replica exited"
    assert restarts(required=True) == 1
    standby = b if a.active else a
    assert standby.value("cdc_connector_task_restarts_total", required=True) == 0
    assert cli("source", "prepare", "-c", config).exit_code == 0  # put the heartbeat table back
