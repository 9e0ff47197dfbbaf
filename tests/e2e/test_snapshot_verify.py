"""Issue 6 acceptance through real Debezium, Kafka and PostgreSQL: automatic snapshot of a table
added while the pipeline runs, verify + repair of rows changed behind the pipeline's back, lag
throttling of a snapshot, a coordinator restart with a queued request, masked columns."""

from __future__ import annotations

import json
import signal
import time

from pipeline.control.snapshot.model import RequestState, SnapshotKind, TableState
from pipeline.control.verify.readiness import CutoverMonitor
from pipeline.core import metrics
from pipeline.core.settings.models import CutoverConfig
from tests.e2e.conftest import E2EPipeline, table_rows
from tests.e2e.helpers_snapshot import (
    apply_config,
    coordinator_logs,
    incremental_reads,
    notifications,
    queue,
    request_state,
    run_snapshot,
    run_verify,
    run_verify_text,
    signal_rows,
    start_coordinator,
    target,
    target_count,
    wait_for,
    write_config,
)

ITEMS_DDL = "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int)"


def fill(table: str, n: int) -> str:
    return f"INSERT INTO {table} SELECT g, 'v' || g, g FROM generate_series(1, {n}) g"


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def stop(proc, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)


def test_table_added_while_running_is_snapshotted_without_a_restart(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e([ITEMS_DDL, fill("public.items", 50)], ["public.items"])
    # The YAML the operator will apply later; the worker runs the OLD one and is never restarted.
    new_config = write_config(p, ["public.items", "public.extra"])
    coordinator = start_coordinator(p, "--interval", "0.5", "--capture-settle-s", "2")
    try:
        p.start_worker()
        p.wait_converged()
        q = queue(p)
        try:
            wait_for("the baseline", q.has_baseline, 60, p)
        finally:
            q.close()
        # The table is created and added to the YAML while everything runs; nothing is restarted.
        p.source("CREATE TABLE public.extra (id int PRIMARY KEY, name text NOT NULL, qty int)")
        p.source(fill("public.extra", 3000))
        t0 = time.monotonic()
        apply_config(new_config)
        p.source("INSERT INTO public.extra VALUES (5000, 'streamed', 1)")  # a change streamed meanwhile

        def auto_request() -> object:
            q = queue(p)
            try:
                return next((r for r in q.recent() if r.origin == "auto" and r.state.terminal), None)
            finally:
                q.close()

        done = wait_for("the automatic snapshot of public.extra", auto_request, 180, p)
        assert done.tables == ("public.extra",)
        assert done.state is RequestState.COMPLETED, done
        assert done.table_progress("public.extra").rows_scanned == 3001
        p.wait_converged(tables=["public.items", "public.extra"], timeout=120)
        print(f"new table snapshotted and applied {time.monotonic() - t0:.1f} s after the config change")
        reads = incremental_reads(p, "public.extra")
        print("incremental-snapshot read events, source block:", reads)
        assert reads and all(r["sequence"] is not None and r["snapshot"] == "incremental" for r in reads)

        # Removed from the YAML, changed while not captured, added back: snapshotted again.
        apply_config(p.config_path)

        def uncaptured() -> bool:
            q = queue(p)
            try:
                return "public.extra" not in q.covered_tables()
            finally:
                q.close()

        wait_for("public.extra to be marked uncaptured", uncaptured, 120, p)
        p.source("UPDATE public.extra SET qty = -qty WHERE id <= 100")
        p.source("INSERT INTO public.extra VALUES (6000, 'while uncaptured', 6)")
        apply_config(new_config)

        def second_auto() -> object:
            q = queue(p)
            try:
                autos = [r for r in q.recent() if r.origin == "auto"]
                return len(autos) == 2 and autos[-1].state.terminal and autos[-1]
            finally:
                q.close()

        again = wait_for("the second automatic snapshot of public.extra", second_auto, 180, p)
        assert again.state is RequestState.COMPLETED and again.tables == ("public.extra",)
        p.wait_converged(tables=["public.items", "public.extra"], timeout=120)
    finally:
        stop(coordinator)


def test_verify_finds_exact_chunks_and_repair_fixes_them(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e([ITEMS_DDL, fill("public.items", 250)], ["public.items"])
    p.start_worker()
    p.wait_converged()
    exit_code, doc, _ = run_verify(p.config_path, "--chunk-size", "50")
    assert exit_code == 0, doc
    assert doc["tables"][0]["chunks"] == 6  # 5 full chunks of 50 and the open-ended last one
    # Behind the pipeline's back: a change, a delete and an insert in the target.
    assert target(p, "UPDATE public.items SET name = 'tampered' WHERE id = 10") == 1
    assert target(p, "DELETE FROM public.items WHERE id = 120") == 1
    assert target(p, "INSERT INTO public.items VALUES (1000, 'ghost', 0, 0, 0)") == 1
    exit_code, doc, _ = run_verify(p.config_path, "--chunk-size", "50")
    assert exit_code == 1
    cutover = CutoverMonitor(p.settings, p.settings.pipelines[0], CutoverConfig(max_lag_s=30, stable_s=0))
    cutover.poll_once()  # the stored result is dirty: not ready whatever the lag
    assert not cutover.ready
    assert sample("cdc_cutover_ready", pipeline=p.pipeline_name) == 0
    assert sample("cdc_verify_mismatched_chunks", pipeline=p.pipeline_name, table="public.items") == 3
    items = doc["tables"][0]
    assert items["status"] == "mismatch"
    assert (items["rows_source"], items["rows_target"]) == (250, 250)
    assert [(c["index"], c["range"], c["source_rows"], c["target_rows"]) for c in items["mismatched_chunks"]] == [
        (1, "(-inf, 50]", 50, 50),
        (3, "(100, 150]", 50, 49),
        (6, "(250, +inf]", 0, 1),
    ]
    assert items["in_flight_chunks"] == []
    t0 = time.monotonic()
    exit_code, doc, log = run_verify(p.config_path, "--chunk-size", "50", "--repair")
    assert exit_code == 0, (doc, log, p.worker_logs())
    print(f"repair took {time.monotonic() - t0:.1f} s")
    assert doc["repair"]["deleted_target_rows"] == {"public.items": 1}
    requests = doc["repair"]["snapshot_requests"]
    assert [r["state"] for r in requests] == ["completed"]
    assert doc["before_repair"]["ok"] is False and doc["ok"] is True
    exit_code, doc, _ = run_verify(p.config_path, "--chunk-size", "50")
    assert exit_code == 0 and doc["ok"], doc
    cutover.poll_once()
    assert cutover.ready  # clean verification, heartbeat lag below 30 s
    assert sample("cdc_cutover_ready", pipeline=p.pipeline_name) == 1
    q = queue(p)
    try:
        repaired = next(r for r in q.recent() if r.origin == "repair")
    finally:
        q.close()
    # One request, filtered to the mismatched chunks' key ranges (chunks 1 and 3 and the tail).
    assert [c.filter for c in repaired.conditions] == [
        '(("id") <= (50)) OR (("id") > (100) AND ("id") <= (150)) OR (("id") > (250))'
    ]
    assert repaired.table_progress("public.items").rows_scanned == 100
    p.wait_converged()
    # Lag-aware: with the pipeline stopped, source changes are reported in flight, not as mismatches.
    assert p.stop_worker(p.workers[0]) == 0
    p.source("UPDATE public.items SET qty = -1 WHERE id IN (7, 77)")
    exit_code, doc, _ = run_verify(p.config_path, "--chunk-size", "50", "--max-wait-s", "2")
    items = doc["tables"][0]
    assert exit_code == 1
    assert doc["catch_up"]["caught_up"] is False
    assert items["status"] == "in_flight" and items["mismatched_chunks"] == []
    assert [c["index"] for c in items["in_flight_chunks"]] == [1, 2]
    assert items["pending_messages"] >= 2
    p.start_worker()
    exit_code, doc, _ = run_verify(p.config_path, "--chunk-size", "50")
    assert exit_code == 0, doc


def test_snapshot_pauses_under_lag_resumes_and_completes(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [ITEMS_DDL, fill("public.items", 5000)],
        ["public.items"],
        source={"connector_overrides": {"incremental.snapshot.chunk.size": 25}},  # many chunks: the race is long
    )
    worker = p.start_worker()
    p.wait_converged()
    # Lost rows in the target that only the snapshot brings back.
    assert target(p, "DELETE FROM public.items WHERE id % 10 = 0") == 500
    assert p.stop_worker(worker) == 0  # the artificial lag: nobody consumes the snapshot's reads
    coordinator = start_coordinator(
        p, "--interval", "0.5", "--no-auto", "--max-consumer-lag", "300", "--max-wal-retained-bytes", str(1 << 40)
    )
    try:
        q = queue(p)
        try:
            request = q.enqueue(["public.items"], SnapshotKind.INCREMENTAL, origin="cli")
        finally:
            q.close()
        paused = wait_for(
            "a throttle pause",
            lambda: (
                (r := request_state(p, request.id)).paused_by == "throttle"
                and r.table_progress("public.items").state is TableState.PAUSED
                and r
            ),
            60,
            p,
        )
        assert paused.state is RequestState.RUNNING
        held = paused.table_progress("public.items").last_key
        time.sleep(5)  # it stays paused while the lag lasts
        still = request_state(p, request.id)
        assert still.state is RequestState.RUNNING and still.paused_by == "throttle"
        assert still.table_progress("public.items").last_key == held
        assert int(held or 0) < 5000
        p.start_worker()  # the lag goes away
        done = wait_for("the snapshot to complete", lambda: request_state(p, request.id).state.terminal, 180, p)
        final = request_state(p, request.id)
        assert final.state is RequestState.COMPLETED, final
        assert final.table_progress("public.items").rows_scanned == 5000
        logs = coordinator_logs(p)
        assert "snapshot paused for lag" in logs and "snapshot resumed, lag below thresholds" in logs
        assert done
        kinds = [n.type for n in notifications(p) if n.id == str(request.id)]
        assert "PAUSED" in kinds and "RESUMED" in kinds and kinds[-1] == "COMPLETED"
        p.wait_converged()
    finally:
        stop(coordinator)


def test_coordinator_restart_neither_loses_nor_repeats_a_queued_request(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [
            ITEMS_DDL,
            fill("public.items", 6000),
            "CREATE TABLE public.other (id int PRIMARY KEY, name text NOT NULL, qty int)",
            fill("public.other", 300),
        ],
        ["public.items", "public.other"],
        source={"connector_overrides": {"incremental.snapshot.chunk.size": 25}},  # many chunks: the race is long
    )
    p.start_worker()
    p.wait_converged()
    assert target(p, "DELETE FROM public.other WHERE id <= 30") == 30  # only the queued snapshot restores these
    first = start_coordinator(p, "--interval", "0.5", "--no-auto")
    second = None
    try:
        q = queue(p)
        try:
            running = q.enqueue(["public.items"], origin="cli")
            queued = q.enqueue(["public.other"], origin="cli")
        finally:
            q.close()
        wait_for("the first snapshot to run", lambda: request_state(p, running.id).state is RequestState.RUNNING, 60, p)
        assert request_state(p, queued.id).state is RequestState.QUEUED
        first.send_signal(signal.SIGKILL)  # the coordinator dies with one request running and one queued
        first.wait(30)
        assert request_state(p, queued.id).state is RequestState.QUEUED
        second = start_coordinator(p, "--interval", "0.5", "--no-auto")
        wait_for(
            "both snapshots to end",
            lambda: all(request_state(p, r.id).state.terminal for r in (running, queued)),
            240,
            p,
        )
        a, b = request_state(p, running.id), request_state(p, queued.id)
        assert (a.state, b.state) == (RequestState.COMPLETED, RequestState.COMPLETED), (a, b)
        assert a.finished_at is not None and b.sent_at is not None and b.sent_at >= a.finished_at  # one at a time
        # Sent exactly once each: one signal row per request, one STARTED notification per request.
        assert [row[1] for row in signal_rows(p, running.id)] == ["execute-snapshot"]
        assert [row[1] for row in signal_rows(p, queued.id)] == ["execute-snapshot"]
        notes = notifications(p)
        assert [n.type for n in notes if n.id == str(running.id)].count("STARTED") == 1
        assert [n.type for n in notes if n.id == str(queued.id)].count("STARTED") == 1
        assert a.table_progress("public.items").rows_scanned == 6000
        assert b.table_progress("public.other").rows_scanned == 300
        p.wait_converged()
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_masked_column_is_excluded_not_a_mismatch(e2e) -> None:  # type: ignore[no-untyped-def]
    p: E2EPipeline = e2e(
        [
            "CREATE TABLE public.users (id int PRIMARY KEY, name text, email text)",
            "INSERT INTO public.users SELECT g, 'user ' || g, 'u' || g || '@example.com' FROM generate_series(1, 120) g",
            "CREATE TABLE public.drafts (id int PRIMARY KEY, status text)",
            "INSERT INTO public.drafts VALUES (1, 'draft'), (2, 'final')",
            "CREATE TABLE public.log (line text, n numeric)",
            "ALTER TABLE public.log REPLICA IDENTITY FULL",
        ],
        ["public.users", "public.drafts", "public.log"],
        pipeline={
            "mask_salt": "pepper",
            "transforms": [
                {"match": "public.users", "mask": {"email": "hash"}, "rename": {"name": "full_name"}},
                {"match": "public.drafts", "where": "status != 'draft'"},
            ],
        },
    )
    p.start_worker()
    # Keyless rows are streamed, not snapshotted: initial-snapshot reads of a keyless table all
    # carry the same position, i.e. the same __cdc_row_id (see the report).
    p.source("INSERT INTO public.log SELECT 'same', 1.50 FROM generate_series(1, 3)")
    p.source("INSERT INTO public.log SELECT 'line ' || g, g FROM generate_series(1, 40) g")
    wait_for("the users in the target", lambda: target_count(p, "public.users") == 120, 120, p)
    wait_for("the drafts in the target", lambda: target_count(p, "public.drafts") == 1, 60, p)
    wait_for("the log in the target", lambda: target_count(p, "public.log") == 43, 60, p)
    masked = table_rows(p.target_dsn, "public.users", ["email"])
    assert all(len(row[0]) == 64 for row in masked)  # hex HMAC, not the address
    exit_code, doc, _ = run_verify(p.config_path, "--chunk-size", "50")
    users, drafts, log = doc["tables"]
    assert users["status"] == "match" and users["ok"], users
    assert users["excluded_columns"] == {"email": "masked (hash)"}
    assert users["renamed_columns"] == {"name": "full_name"}
    assert (users["rows_source"], users["rows_target"], users["chunks"]) == (120, 120, 3)
    assert drafts["status"] == "not_verifiable"
    assert "transforms[1].where: status != 'draft'" in drafts["reason"]
    assert log["status"] == "match" and log["keyless"] and log["rows_target"] == 43, log
    assert exit_code == 1  # a table that cannot be verified is not "everything matches"...
    exit_code, text = run_verify_text(p.config_path, "--allow-unverifiable")
    assert exit_code == 0, text  # ...unless allowed
    assert "public.users   public.users   match           120       120       1" in text
    assert "excluded column email: masked (hash)" in text
    assert "not_verifiable: transforms change rows: transforms[1].where: status != 'draft'" in text
    assert text.rstrip().endswith("OK: every verifiable table matches (1 not verifiable)")
    # A keyless table: one more copy of a duplicated row is found (multiset checksum).
    target(p, "INSERT INTO public.log SELECT line, n, 0, 0, 'extra' FROM public.log WHERE line = 'same' LIMIT 1")
    exit_code, doc, _ = run_verify(p.config_path, "--allow-unverifiable", "--table", "public.log")
    (log,) = doc["tables"]
    assert exit_code == 1 and log["status"] == "mismatch"
    assert (log["rows_source"], log["rows_target"], len(log["mismatched_chunks"])) == (43, 44, 1)
    # The snapshot CLI: a filtered snapshot followed to its end, then status; nothing left to pause or stop.
    exit_code, out = run_snapshot(
        p.config_path,
        "start",
        "public.users",
        "--filter",
        "public.users=id <= 10",
        "--wait",
        "--timeout",
        "120",
        "--json",
    )
    assert exit_code == 0, out
    started = json.loads(out)
    assert started["state"] == "completed" and started["progress"]["public.users"]["rows_scanned"] == 10
    exit_code, out = run_snapshot(p.config_path, "start", "public.drafts", "--blocking", "--wait", "--json")
    assert exit_code == 0, out
    blocking = json.loads(out)
    assert blocking["state"] == "completed" and blocking["kind"] == "blocking"
    assert blocking["progress"]["public.drafts"]["state"] == "completed"
    exit_code, out = run_snapshot(p.config_path, "status", "--json")
    assert exit_code == 0
    statuses = json.loads(out)[p.settings.sources[0].name]
    assert [r["id"] for r in statuses] == [started["id"], blocking["id"]]  # the baseline is not listed
    assert run_snapshot(p.config_path, "pause")[0] == 1
    assert run_snapshot(p.config_path, "stop")[0] == 1
    exit_code, doc, _ = run_verify(p.config_path, "--allow-unverifiable", "--table", "public.users")
    assert exit_code == 0, doc
