"""``kill -9`` of ``cutover run`` after the fence: the durable state shows the phase, ``cutover
abort`` lifts the fence (the app writes again), and every row committed before the fence reaches
the target. Uses the test hook ``CDC_CUTOVER_PAUSE_AFTER=fenced`` (``pipeline.control.cutover.run``)."""

from __future__ import annotations

import signal
import time

import httpx
import psycopg
import pytest

from tests.e2e.conftest import (
    e2e,  # noqa: F401 - fixture
    table_rows,
)
from tests.integration.cutover_env import CutoverEnv, Writer, cutover_env  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(300)


def test_kill_after_fence_then_abort_lifts_it_and_loses_nothing(cutover_env: CutoverEnv) -> None:  # noqa: F811
    env = cutover_env
    worker = env.pipe.start_worker()
    env.pipe.wait_assigned(worker)
    env.app_insert("first")
    env.pipe.wait_converged()
    env.verify()
    with Writer(env) as writer:
        proc = env.subprocess("cutover", "run", env={"CDC_CUTOVER_PAUSE_AFTER": "fenced"})
        env.wait_phase("fenced")
        time.sleep(1)
        assert not env.app_can_write(), "the fence holds while cutover run sleeps"
        refused_before_kill = writer.refused
        busy = env.cli("cutover", "abort")
        assert busy.exit_code == 2 and "in progress" in busy.output, "no abort under a live run"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        time.sleep(1)
        assert refused_before_kill > 0, "the writer hit the fence"
        assert not env.app_can_write(), "a killed run leaves the fence in place"
        code, status = env.cli_json("cutover", "status")
        assert code == 0 and status["phase"] == "fenced" and status["fence_lsn"], status
        assert env.role_settings() != []

        result = env.cli("cutover", "abort")
        assert result.exit_code == 0, result.output
        time.sleep(1)
        committed_during = len(writer.committed)
        time.sleep(1.5)
        assert len(writer.committed) > committed_during, "the app writes again after the abort"
    assert env.role_settings() == [], "the prior (empty) settings were restored exactly"
    code, status = env.cli_json("cutover", "status")
    assert status["phase"] == "aborted" and status["aborted_from"] == "fenced"
    env.pipe.wait_converged(timeout=120)
    ids = {r[0] for r in table_rows(env.db.target_dsn, "public.orders", ["id"])}
    assert set(writer.committed) <= ids, "every committed row reached the target"
    with psycopg.connect(env.db.source_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM public.orders").fetchone()
    assert row is not None and row[0] == len(ids)


def test_sigterm_after_fence_aborts_by_itself(cutover_env: CutoverEnv) -> None:  # noqa: F811
    env = cutover_env
    worker = env.pipe.start_worker()
    env.pipe.wait_assigned(worker)
    env.app_insert("first")
    env.pipe.wait_converged()
    env.verify()
    proc = env.subprocess("cutover", "run", env={"CDC_CUTOVER_PAUSE_AFTER": "fenced"})
    env.wait_phase("fenced")
    assert not env.app_can_write()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 1
    code, status = env.cli_json("cutover", "status")
    assert code == 0 and status["phase"] == "aborted" and status["aborted_from"] == "fenced", status
    assert "interrupted" in str(status["reason"])
    assert env.role_settings() == [] and env.app_can_write()


def _connector_state(env: CutoverEnv) -> str:
    name = env.pipe.settings.sources[0].resolved_connector_name
    url = f"{env.stack.settings.connect_url}/connectors/{name}/status"
    return str(httpx.get(url, timeout=10).json()["connector"]["state"])


def test_kill_after_verified_abort_resumes_the_forward_connector_and_a_new_run_completes(
    cutover_env: CutoverEnv,  # noqa: F811
) -> None:
    env = cutover_env
    worker = env.pipe.start_worker()
    env.pipe.wait_assigned(worker)
    env.app_insert("first")
    env.pipe.wait_converged()
    env.verify()
    proc = env.subprocess("cutover", "run", env={"CDC_CUTOVER_PAUSE_AFTER": "verified"})
    env.wait_phase("verified", timeout_s=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert _connector_state(env) == "STOPPED", "stopped after the final verification"
    result = env.cli("cutover", "abort")
    assert result.exit_code == 0, result.output
    assert _connector_state(env) == "RUNNING" and env.role_settings() == []
    new_id = env.app_insert("after the abort")  # the forward direction captures again
    env.pipe.wait_converged()
    assert new_id in {r[0] for r in table_rows(env.db.target_dsn, "public.orders", ["id"])}
    code, report = env.cli_json("cutover", "run")
    assert code == 0 and report["phase"] == "done", report
    assert _connector_state(env) == "STOPPED"
