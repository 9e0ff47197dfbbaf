"""Issue 21 acceptance, "End to end under load" and "Write pause": pgbench at 500 tx/s with 4
clients on the old primary while ``cdc-pipeline cutover run --reverse`` fences, drains, verifies,
syncs sequences and starts the reverse direction; then pgbench on the new primary; then the
reverse pipeline brings the old primary up to date. Every transaction pgbench reported is on both
sides, pgbench's invariant holds on both, serial and identity inserts on the new primary do not
collide, no user table carries a ``__cdc_*`` column, and ``cutover finish`` drops what it listed.

The write pause is printed (figures, never a timed assertion); the scenario is in
tests/e2e/cutover_harness.py, shared with bench/cutover_write_pause.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.localstack import LocalStack
from tests.e2e.cutover_harness import (
    BACK_CONTROL_SCHEMA,
    FORWARD_CONTROL_SCHEMA,
    Names,
    Scenario,
    run_cutover_under_load,
)


@pytest.fixture
def scenario(local_stack: LocalStack, unique: Callable[[str], str], tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(local_stack.settings, Names(unique("c").split("_", 1)[1]), tmp_path)
    try:
        s.setup(stable_s=5)
        yield s
    finally:
        s.cleanup()


def test_cutover_under_pgbench_keeps_every_transaction_on_both_sides_and_finish_cleans_up(scenario: Scenario) -> None:
    names = scenario.names
    outcome = run_cutover_under_load(scenario, rate=500, clients=4, lead_s=10, after_s=20, attempts=5)
    print(f"cutover report: {json.dumps(outcome.report, indent=2)[:6000]}")
    assert outcome.cutover_rc == 0, f"cutover run failed: {outcome.report}"
    print(
        f"write pause {outcome.write_pause_s} s; pgbench processed {outcome.processed_old} on the old primary, "
        f"{outcome.processed_new} on the new one; reverse caught up in {outcome.catch_up_s:.1f} s; {outcome.seconds}"
    )
    assert outcome.write_pause_s is not None and outcome.write_pause_s > 0, "the report carries the write pause"
    assert outcome.processed_old > 0 and outcome.processed_new > 0

    # Every reported transaction is on both sides (a commit whose reply was cut by the fence may add one).
    reported = outcome.processed_old + outcome.processed_new
    history_new, history_old = scenario.history("new"), scenario.history("old")
    assert len(history_new) >= reported, f"new primary has {len(history_new)} history rows, pgbench reported {reported}"
    assert history_old == history_new
    for side in ("old", "new"):
        a, b, t, h = scenario.balances(side)
        assert a == b == t == h, (
            f"{side}: pgbench invariant broken: accounts {a}, branches {b}, tellers {t}, history {h}"
        )

    # Sequences were synced: inserts without an id on the new primary take fresh keys.
    for table in ("serial_items", "identity_items"):
        before = scenario.sql("new", f"SELECT max(id) FROM {table}")[0][0]
        new_id = scenario.sql("new", f"INSERT INTO {table} (v) VALUES ('after cutover') RETURNING id", app=True)[0][0]
        assert new_id > before, f"{table}: new id {new_id} not above {before}"
    scenario.wait_equal(timeout_s=120)  # ... and reach the old primary through the reverse pipeline

    assert scenario.cdc_columns("old") == [] and scenario.cdc_columns("new") == []

    # finish: list, then drop exactly that.
    scenario.stop_workers()
    listed = json.loads(scenario.cli("cutover", "finish", "--dry-run", "--json", "-p", names.forward).stdout)
    kinds = {(r["kind"], r["name"]) for r in listed["removals"]}
    for slot in scenario.slots("old") + scenario.slots("new"):
        assert ("slot", slot) in kinds
    assert ("schema", FORWARD_CONTROL_SCHEMA) in kinds and ("schema", BACK_CONTROL_SCHEMA) in kinds
    assert ("connector", names.connector(names.new_source)) in kinds
    assert ("connector", names.connector(names.old_source)) in kinds
    dropped = json.loads(scenario.cli("cutover", "finish", "--json", "-p", names.forward).stdout)
    assert {(r["kind"], r["name"]) for r in dropped["removals"]} == kinds
    assert scenario.slots("old") == [] and scenario.slots("new") == []
    assert scenario.schemas("old") == [] and scenario.schemas("new") == []
    assert scenario.connectors() == []
    again = json.loads(scenario.cli("cutover", "finish", "--dry-run", "--json", "-p", names.forward).stdout)
    assert again["removals"] == []
