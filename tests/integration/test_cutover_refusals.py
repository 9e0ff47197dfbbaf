"""Refusals on the real stack: the gate refuses (verification dirty, stale, lag with the worker
stopped) with exit 1 and the source untouched; a drain that times out (worker stopped after the
gate) aborts by itself and leaves the source writable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pipeline.control.verify.readiness import CutoverMonitor
from pipeline.core.metrics import CUTOVER_LAG_GATE, REGISTRY
from pipeline.core.settings.models import CutoverConfig
from pipeline.localstack import LocalStack
from sinks.base import VerificationRecord
from sinks.factory import make_target
from tests.conftest import Databases
from tests.e2e.conftest import E2EPipeline, e2e  # noqa: F401 - fixture
from tests.integration.cutover_env import TABLES, CutoverEnv, cutover_env, make_env  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(300)


def _store(env: CutoverEnv, ok: bool, age_s: float) -> None:
    pipe = env.pipe.settings.pipelines[0]
    at = datetime.now(UTC) - timedelta(seconds=age_s)
    records = [
        VerificationRecord(t, ok, "match" if ok else "mismatch", 1, 1 if ok else 2, 1, 0 if ok else 1, at)
        for t in TABLES
    ]
    target = make_target(pipe, purpose="test")
    verification = target.verification(30)
    try:
        verification.store_results(pipe.name, records)
    finally:
        verification.close()
        target.close()


def _refused(env: CutoverEnv, check: str) -> dict[str, object]:
    code, report = env.cli_json("cutover", "run")
    assert code == 1, report
    assert report["phase"] == "aborted" and report["aborted_from"] == "idle", report
    assert f"{check}:" in str(report["reason"]), report["reason"]
    assert env.role_settings() == [], "the source was not touched"
    assert env.app_can_write()
    return report


def test_gate_refuses_dirty_stale_verification_and_lag(cutover_env: CutoverEnv) -> None:  # noqa: F811
    env = cutover_env
    worker = env.pipe.start_worker()
    env.pipe.wait_assigned(worker)
    env.app_insert("a")
    env.pipe.wait_converged()

    _store(env, ok=False, age_s=0)
    code, plan = env.cli_json("cutover", "plan")
    assert code == 1 and {c["name"]: c["ok"] for c in plan["gate"]["checks"]}["verification"] is False
    _refused(env, "verification")

    _store(env, ok=True, age_s=3600)  # verification_max_age_s is 600 in these tests
    report = _refused(env, "verification")
    assert "older than" in str(report["reason"])

    env.verify()
    monitor = CutoverMonitor(env.pipe.settings, env.pipe.settings.pipelines[0], CutoverConfig(max_lag_s=5, stable_s=0))
    _forget_lag_gauge(env)  # the gate of 'cutover plan' (in this process) sets it too
    monitor.poll_once()
    assert _lag_ok(env) == 1, "cdc_cutover_lag_ok while the worker applies heartbeats"
    env.pipe.stop_worker(worker)
    code, plan = env.cli_json("cutover", "plan")
    checks = {c["name"]: c for c in plan["gate"]["checks"]}
    assert code == 1 and checks["lag"]["ok"] is False and checks["verification"]["ok"] is True, plan
    _refused(env, "lag")
    _forget_lag_gauge(env)
    monitor.poll_once()  # more than max_lag_s after the worker stopped
    assert _lag_ok(env) == 0


def _forget_lag_gauge(env: CutoverEnv) -> None:
    CUTOVER_LAG_GATE.labels(env.pipe.pipeline_name).set(-1)


def _lag_ok(env: CutoverEnv) -> float | None:
    return REGISTRY.get_sample_value("cdc_cutover_lag_ok", {"pipeline": env.pipe.pipeline_name})


@pytest.fixture
def short_drain_env(
    e2e: Callable[..., E2EPipeline],  # noqa: F811
    local_stack: LocalStack,
    databases: Databases,
    unique: Callable[[str], str],
) -> Iterator[CutoverEnv]:
    yield from make_env(e2e, local_stack, databases, unique, drain_timeout_s=5)


def test_drain_timeout_aborts_and_the_source_takes_writes(short_drain_env: CutoverEnv) -> None:
    env = short_drain_env
    worker = env.pipe.start_worker()
    env.pipe.wait_assigned(worker)
    env.app_insert("a")
    env.pipe.wait_converged()
    env.verify()
    proc = env.subprocess("cutover", "run", env={"CDC_CUTOVER_PAUSE_AFTER": "gate", "CDC_CUTOVER_PAUSE_S": "10"})
    env.wait_phase("gate")
    env.pipe.stop_worker(worker)  # the drain can no longer reach the fence
    assert proc.wait(120) == 1
    code, status = env.cli_json("cutover", "status")
    assert code == 0 and status["phase"] == "aborted" and status["aborted_from"] == "fenced", status
    assert "drain" in str(status["reason"]) and status["fence_lsn"]
    assert env.role_settings() == []
    assert env.app_can_write()
    connector = env.pipe.settings.sources[0].resolved_connector_name
    state = httpx.get(f"{env.stack.settings.connect_url}/connectors/{connector}/status", timeout=10).json()
    assert state["connector"]["state"] == "RUNNING", "the forward connector was never stopped"
