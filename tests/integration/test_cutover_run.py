"""``cutover run`` on the real stack: the happy path (fence, drain, verify, sequences, done, the
write pause measured, a non-colliding insert on the new primary afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from pipeline.localstack import LocalStack
from tests.conftest import Databases
from tests.e2e.conftest import E2EPipeline, e2e  # noqa: F401 - fixture
from tests.integration.cutover_env import CutoverEnv, cutover_env, make_env  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(300)


def test_cutover_run_reaches_done_and_the_target_takes_inserts(cutover_env: CutoverEnv) -> None:  # noqa: F811
    env = cutover_env
    for i in range(20):
        env.app_insert(f"o{i}")
    with psycopg.connect(env.app_dsn(), autocommit=True) as conn:
        for i in range(7):
            conn.execute("INSERT INTO public.events (kind) VALUES (%s)", (f"k{i}",))
    worker = env.pipe.start_worker()
    env.pipe.wait_assigned(worker)
    env.pipe.wait_converged()
    env.verify()

    code, plan = env.cli_json("cutover", "plan")
    assert code == 0, plan
    assert {c["name"]: c["ok"] for c in plan["gate"]["checks"]} == {"lag": True, "verification": True, "dlq": True}
    assert {s["name"]: s["source_value"] for s in plan["sequences"]} == {
        "public.events_id_seq": 7,
        "public.orders_id_seq": 20,
    }
    assert env.role_settings() == [], "plan changed nothing"

    code, report = env.cli_json("cutover", "run")
    assert code == 0, report
    assert report["phase"] == "done" and report["ok"] is True
    assert [p["phase"] for p in report["phases"]] == [
        "gate", "fenced", "drained", "verified", "sequences_synced", "done"
    ]  # fmt: skip
    assert report["fence_lsn"] and report["verification"]["ok"] is True
    pause = report["write_pause_s"]
    assert 0 < pause < 60
    print(f"measured write pause: {pause:.3f} s; phases {[(p['phase'], p['seconds']) for p in report['phases']]}")
    synced = {s["name"]: s["value"] for s in report["sequences"]}
    assert synced == {"public.orders_id_seq": 1020, "public.events_id_seq": 1007}

    # The source is fenced for the app role; the forward connector is stopped (slot kept).
    assert not env.app_can_write()
    with psycopg.connect(env.db.source_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE database = %s", (env.db.name,)
        ).fetchone() == (1,)
    # The new primary hands out ids past the old ones.
    with psycopg.connect(env.db.target_dsn, autocommit=True) as conn:
        versions = "__cdc_commit_lsn, __cdc_lsn) VALUES ('new', 0, 0) RETURNING id"  # versions: columns
        new_order = conn.execute(f"INSERT INTO public.orders (note, {versions}").fetchone()  # type: ignore[call-overload]
        new_event = conn.execute(f"INSERT INTO public.events (kind, {versions}").fetchone()  # type: ignore[call-overload]
    assert new_order is not None and new_order[0] > 20
    assert new_event is not None and new_event[0] > 7

    code, status = env.cli_json("cutover", "status")
    assert code == 0 and status["phase"] == "done" and status["write_pause_s"] == pause
    refused = env.cli("cutover", "abort")
    assert refused.exit_code == 2 and "finish" in refused.output


@pytest.fixture
def whole_database_env(
    e2e: Callable[..., E2EPipeline],  # noqa: F811
    local_stack: LocalStack,
    databases: Databases,
    unique: Callable[[str], str],
) -> Iterator[CutoverEnv]:
    yield from make_env(e2e, local_stack, databases, unique, fence_roles=lambda _: [])


def test_whole_database_fence_exempts_the_pipeline_role(whole_database_env: CutoverEnv) -> None:
    env = whole_database_env
    env.app_insert("a")
    worker = env.pipe.start_worker()
    env.pipe.wait_assigned(worker)
    env.pipe.wait_converged()
    env.verify()
    code, plan = env.cli_json("cutover", "plan")
    assert code == 0 and plan["fence"]["scope"] == f"database {env.db.name}", plan
    code, report = env.cli_json("cutover", "run")
    assert code == 0 and report["phase"] == "done", report
    assert not env.app_can_write()
    pipeline_role = env.pipe.settings.sources[0].user
    assert sorted(env.role_settings(), key=str) == sorted(
        [(None, ["default_transaction_read_only=on"]), (pipeline_role, ["default_transaction_read_only=off"])], key=str
    )
    with psycopg.connect(env.db.source_dsn, autocommit=True) as conn:  # the pipeline's role: exempt
        conn.execute("INSERT INTO public.orders (note) VALUES ('pipeline role')")
