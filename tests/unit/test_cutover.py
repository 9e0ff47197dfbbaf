"""Pure parts of the cutover: phase transitions and the state document, gate decisions, lag
sampling and the drain on fake clocks, the fence SQL, sequence values, the report JSON, and the
root validation of ``cutover.reverse``."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql
from rich.console import Console

import pipeline.control.cutover.run as run_mod
from pipeline.control.cutover.drain import DrainTimeoutError, drain, pending
from pipeline.control.cutover.fence import (
    FenceError,
    fence_plan,
    parse_setconfig,
    run_command,
    sessions_query,
    set_statement,
)
from pipeline.control.cutover.gate import GateResult, dlq_check, lag_check, sample_lag, verification_check
from pipeline.control.cutover.report import render_state, state_document
from pipeline.control.cutover.run import Cutover, CutoverRefusedError, _fence_problems, fenced_writer_problem
from pipeline.control.cutover.sequences import SequenceSync, SourceSequence, target_spec, target_value
from pipeline.control.cutover.state import (
    CutoverState,
    FenceRecord,
    Phase,
    PhaseError,
    SavedSetting,
    can_move,
    new_run,
)
from pipeline.core.events import TableId
from pipeline.core.metrics import REGISTRY
from pipeline.core.settings.root import Settings
from sinks.base import VerificationRecord

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------ phases


def test_forward_order_and_abort_rules() -> None:
    order = ["idle", "gate", "fenced", "drained", "verified", "sequences_synced", "reverse_started", "done", "finished"]
    for a, b in itertools.pairwise(order):
        assert can_move(Phase(a), Phase(b)), (a, b)
    assert can_move(Phase.SEQUENCES_SYNCED, Phase.DONE)  # without --reverse
    assert not can_move(Phase.FENCED, Phase.VERIFIED)  # no skipping
    assert not can_move(Phase.GATE, Phase.DRAINED)
    for p in ("gate", "fenced", "drained", "verified", "sequences_synced", "reverse_started"):
        assert can_move(Phase(p), Phase.ABORTED)
    assert not can_move(Phase.DONE, Phase.ABORTED) and not can_move(Phase.FINISHED, Phase.ABORTED)
    assert can_move(Phase.ABORTED, Phase.GATE) and not can_move(Phase.DONE, Phase.GATE)
    assert not can_move(Phase.VERIFIED, Phase.FINISHED)


def test_move_records_durations_and_refuses_bad_moves() -> None:
    state = new_run("p", False, None, now=100.0)
    state.move(Phase.GATE, now=103.0, step_started=100.0)
    state.move(Phase.FENCED, now=103.5, step_started=103.0)
    assert state.durations == {"gate": 3.0, "fenced": 0.5} and state.in_flight
    with pytest.raises(PhaseError):
        state.move(Phase.DONE)
    state.move(Phase.ABORTED, now=104.0)
    assert state.aborted_from == "fenced" and not state.in_flight


def test_new_run_refuses_over_an_in_flight_or_done_cutover() -> None:
    for phase in (Phase.FENCED, Phase.DONE, Phase.FINISHED):
        with pytest.raises(PhaseError):
            new_run("p", False, CutoverState("p", phase))
    assert new_run("p", True, CutoverState("p", Phase.ABORTED)).reverse_requested


def test_state_document_round_trips_with_the_saved_fence() -> None:
    state = CutoverState("p", Phase.FENCED, fence_lsn="0/16B3748", forward_stopped=True, connector="cdc-x")
    state.fence = FenceRecord("read_only", ["app"], [SavedSetting("db", "app", None)], [{"pid": 1}], 12.5, True)
    doc = json.loads(json.dumps(state.to_dict()))
    back = CutoverState.from_dict({**doc, "from_a_newer_writer": 1})
    assert back == state
    assert back.fence is not None and back.fence.saved == [SavedSetting("db", "app", None)]
    with pytest.raises(ValueError, match="nope"):
        CutoverState.from_dict({"pipeline": "p", "phase": "nope"})


def test_report_json_lists_phases_in_order_with_the_pause() -> None:
    state = new_run("p", False, None, now=0.0)
    for i, phase in enumerate(["gate", "fenced", "drained", "verified", "sequences_synced", "done"], start=1):
        state.move(Phase(phase), now=float(i), step_started=float(i) - 0.25)
    state.write_pause_s = 4.2
    doc = state_document(state)
    assert doc["ok"] is True and doc["write_pause_s"] == 4.2
    assert [p["phase"] for p in doc["phases"]] == ["gate", "fenced", "drained", "verified", "sequences_synced", "done"]
    assert all(p["seconds"] == 0.25 for p in doc["phases"])
    assert doc["phases"][0]["at"] == "1970-01-01T00:00:01+00:00"
    json.dumps(doc)  # serialisable as is
    assert state_document(CutoverState("p", Phase.ABORTED, reason="x"))["ok"] is False
    out = io.StringIO()
    state.fence = FenceRecord("read_only", ["app"], fenced_at=1.0)
    state.fence_lsn = "0/1"
    state.sequences = [SequenceSync("public.s", "owned", "public.t", 5, None, 1005, "public.s").to_dict()]
    render_state(state, Console(file=out, width=200))
    text = out.getvalue()
    assert "write pause: 4.200 s" in text and "fence LSN: 0/1" in text and "1005" in text and "DONE" in text


# ------------------------------------------------------------------ gate


def _record(table: str, ok: bool, age_s: float) -> VerificationRecord:
    return VerificationRecord(table, ok, "match" if ok else "mismatch", 1, 1, 1, 0, NOW - timedelta(seconds=age_s))


def test_lag_check_needs_every_sample_below_the_threshold_for_the_hold() -> None:
    assert lag_check([0.5, 0.9, 1.1, 0.7], 5, 3, 3.2).ok
    assert not lag_check([0.5, 5.0], 5, 3, 3.2).ok  # equal to max_lag_s is not below it
    refused = lag_check([0.5, None], 5, 3, 6.0)
    assert not refused.ok and "did not arrive" in refused.detail
    assert not lag_check([0.5, 0.5], 5, 3, 1.0).ok  # not held long enough
    assert not lag_check([], 5, 0, 0).ok


def test_verification_check_clean_covering_and_fresh() -> None:
    tables = [TableId("public", "a"), TableId("public", "b")]
    good = {"public.a": _record("public.a", True, 10), "public.b": _record("public.b", True, 20)}
    check = verification_check(good, tables, 600, NOW)
    assert check.ok and check.data["since"] == (NOW - timedelta(seconds=20)).isoformat()
    missing = verification_check({"public.a": good["public.a"]}, tables, 600, NOW)
    assert not missing.ok and "never verified: public.b" in missing.detail
    dirty = verification_check({**good, "public.b": _record("public.b", False, 5)}, tables, 600, NOW)
    assert not dirty.ok and "not clean: public.b" in dirty.detail
    stale = verification_check({**good, "public.a": _record("public.a", True, 601)}, tables, 600, NOW)
    assert not stale.ok and "older than 600 s: public.a" in stale.detail
    assert not verification_check({}, [], 600, NOW).ok


def test_dlq_check() -> None:
    assert dlq_check("d", "t", None).ok  # no such topic
    assert dlq_check("d", "t", {("d", 0): None, ("d", 1): None}).ok
    bad = dlq_check("d", "t", {("d", 0): None, ("d", 1): 7})
    assert not bad.ok and "d[1]" in bad.detail
    assert not dlq_check("d", None, {}).ok


def test_gate_result_reason_names_failed_checks() -> None:
    ok = lag_check([0.1], 5, 0, 0.1)
    bad = dlq_check("d", "t", {("d", 0): 3})
    gate = GateResult((ok, bad))
    assert not gate.ok and gate.reason().startswith("gate refused: dlq:")
    assert GateResult((ok,)).ok and GateResult((ok,)).reason() == ""
    assert not GateResult(()).ok


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_sample_lag_times_each_heartbeat_until_stable() -> None:
    clock = FakeClock()
    written: list[datetime] = []

    def write() -> datetime:
        written.append(NOW + timedelta(seconds=clock.t))
        return written[-1]

    def read() -> datetime | None:  # the target shows a heartbeat 0.2 s after it was written
        visible = [w for w in written if (NOW + timedelta(seconds=clock.t) - w).total_seconds() >= 0.2]
        return visible[-1] if visible else None

    samples, held = sample_lag(write, read, 5, 3, every_s=1, poll_s=0.05, clock=clock, sleep=clock.sleep)
    assert len(samples) >= 4 and all(s is not None and 0.19 <= s < 0.3 for s in samples)
    assert held >= 3
    clock.t = 0
    samples, _ = sample_lag(write, lambda: None, 5, 60, clock=clock, sleep=clock.sleep)
    assert samples == [None], "stops at the first heartbeat that never arrives"


def test_drain_waits_for_heartbeat_then_offsets_of_the_marks_read_after_it() -> None:
    clock = FakeClock()
    marks_read_at: list[float] = []

    def marks() -> dict[tuple[str, int], tuple[int, int]]:
        marks_read_at.append(clock.t)
        return {("t", 0): (0, 10), ("t", 1): (0, 4)}

    def stored() -> dict[tuple[str, int], int]:
        return {("t", 0): 10 if clock.t > 2 else 8, ("t", 1): 4}

    result = drain(
        lambda: NOW,
        lambda: NOW if clock.t >= 1 else None,
        marks,
        stored,
        10,
        clock=clock,
        sleep=clock.sleep,
    )
    assert marks_read_at and marks_read_at[0] >= 1, "watermarks are read after the heartbeat was applied"
    assert len(marks_read_at) == 1 and result.marks == {"t[0]": 10, "t[1]": 4}
    clock.t = 0
    with pytest.raises(DrainTimeoutError, match="heartbeat"):
        drain(lambda: NOW, lambda: None, marks, stored, 3, clock=clock, sleep=clock.sleep)
    clock.t = 0
    with pytest.raises(DrainTimeoutError, match=r"6 message\(s\)"):
        drain(lambda: NOW, lambda: NOW, marks, lambda: {("t", 0): 8}, 0.5, clock=clock, sleep=clock.sleep)
    assert pending({("t", 0): (5, 9)}, {}) == {"t[0]": 4}


# ------------------------------------------------------------------ fence


def _text(query: sql.Composable) -> str:
    return query.as_string(None)


def test_fence_plan_roles_or_whole_database_with_the_pipeline_exempt() -> None:
    assert fence_plan("db", "cdc", ["app", "web"]) == [("app", "on"), ("web", "on")]
    assert fence_plan("db", "cdc", []) == [("cdc", "off"), (None, "on")]
    with pytest.raises(FenceError, match="pipeline's own role"):
        fence_plan("db", "cdc", ["app", "cdc"])


def test_whole_database_fence_plan_fences_roles_with_their_own_setting_first() -> None:
    # a role setting beats the database's: those roles get one of their own, once each, never the pipeline's
    assert fence_plan("db", "cdc", [], ["rogue", "cdc", "rogue", "ops"]) == [
        ("rogue", "on"),
        ("ops", "on"),
        ("cdc", "off"),
        (None, "on"),
    ]
    assert fence_plan("db", "cdc", ["app"], ["rogue"]) == [("app", "on")]  # named roles: overrides do not apply


def test_fence_statements_quote_identifiers() -> None:
    assert _text(set_statement('my"db', 'App "role"', "on")) == (
        'ALTER ROLE "App ""role""" IN DATABASE "my""db" SET "default_transaction_read_only" = \'on\''
    )
    assert _text(set_statement("db", None, "on")) == (
        'ALTER DATABASE "db" SET "default_transaction_read_only" = \'on\''
    )
    assert _text(set_statement("db", "app", None)) == (
        'ALTER ROLE "app" IN DATABASE "db" RESET "default_transaction_read_only"'
    )
    assert _text(set_statement("db", "app", "o'ff")).endswith("= 'o''ff'")


def test_sessions_query_never_ends_our_own_or_the_pipelines_sessions() -> None:
    query, params = sessions_query(["app"], "cdc")
    text = _text(query)
    for part in ("backend_type = 'client backend'", "pid <> pg_backend_pid()", "usename IS DISTINCT FROM %s"):
        assert part in text
    assert "usename = ANY(%s)" in text and params == ["cdc", ["app"]]
    whole, params = sessions_query([], "cdc")
    assert "ANY" not in _text(whole) and params == ["cdc"]


def test_parse_setconfig() -> None:
    assert parse_setconfig(["search_path=a", "default_transaction_read_only=off"]) == "off"
    assert parse_setconfig(["work_mem=1MB"]) is None and parse_setconfig(None) is None


def test_run_command_outcomes() -> None:
    run_command(["true"], 5, "fence command")
    with pytest.raises(FenceError, match="exited 1"):
        run_command(["false"], 5, "fence command")
    with pytest.raises(FenceError, match="failed"):
        run_command(["sleep", "5"], 0.2, "fence command")
    with pytest.raises(FenceError, match="not configured"):
        run_command([], 1, "unfence command")


# ------------------------------------------------------------------ sequences


def _settings(extra: dict[str, Any] | None = None, pipelines: list[dict[str, Any]] | None = None) -> Settings:
    doc: dict[str, Any] = {
        "sources": [
            {"name": "old", "database": "a", "user": "cdc", "tables": ["public.t"]},
            {"name": "new", "database": "b", "user": "cdc", "tables": ["public.t"]},
        ],
        "pipelines": pipelines
        or [
            {"name": "fwd", "source": "old", "target": {"url": "postgresql://x@h/b", "schema": "app"}, **(extra or {})}
        ],
    }
    return Settings.model_validate(doc)


def test_sequence_target_value_and_routing() -> None:
    used = SourceSequence(TableId("public", "t_id_seq"), "owned", TableId("public", "t"), "id", 41, True)
    fresh = SourceSequence(TableId("public", "t_id_seq"), "owned", TableId("public", "t"), "id", 1, False)
    assert target_value(used, 1000) == 1041 and target_value(fresh, 0) == 0
    pipe = _settings().pipelines[0]
    spec = target_spec(pipe, used)
    assert (spec.table, spec.column, spec.name) == (TableId("app", "t"), "id", TableId("public", "t_id_seq"))
    routed = _settings({"transforms": [{"match": "public.t", "route": "x.{table}", "rename": {"id": "ident"}}]})
    spec = target_spec(routed.pipelines[0], used)
    assert (spec.table, spec.column) == (TableId("x", "t"), "ident")
    free = SourceSequence(TableId("public", "free"), "free", None, None, 5, True)
    assert target_spec(pipe, free).table is None


# ------------------------------------------------------------------ settings: cutover.reverse


def _pipes(reverse: dict[str, str], back: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": "fwd", "source": "old", "target": {"url": "postgresql://x@h/b"}, "cutover": {"reverse": reverse}},
        {"name": "back", "source": "new", "target": {"url": "postgresql://x@h/a", **back}, **({})},
    ]


def test_reverse_references_are_validated() -> None:
    good = _settings(pipelines=_pipes({"source": "new", "pipeline": "back"}, {"versions": "table"}))
    assert good.pipelines[0].cutover.reverse is not None
    cases = [
        (_pipes({"source": "nope", "pipeline": "back"}, {"versions": "table"}), "unknown source 'nope'"),
        (_pipes({"source": "new", "pipeline": "fwd"}, {"versions": "table"}), "must name another entry"),
        (_pipes({"source": "new", "pipeline": "missing"}, {"versions": "table"}), "must name another entry"),
        (_pipes({"source": "old", "pipeline": "back"}, {"versions": "table"}), "reads 'new', not 'old'"),
        (_pipes({"source": "new", "pipeline": "back"}, {}), "set target.versions: table on 'back'"),
    ]
    for pipelines, message in cases:
        with pytest.raises(ValueError, match=message):
            _settings(pipelines=pipelines)


def test_a_fence_reaching_the_reverse_writer_through_a_group_is_refused() -> None:
    pipes = _pipes({"source": "new", "pipeline": "back"}, {"versions": "table"})
    pipes[1]["target"]["url"] = "postgresql://rollback@h/a"
    settings = _settings(pipelines=pipes)
    fwd = settings.pipelines[0]
    assert "'rollback', the role pipeline 'back' writes" in fenced_writer_problem(
        settings, fwd, [("app_group", "on"), ("rollback", "on")]
    )
    assert fenced_writer_problem(settings, fwd, [("app_group", "on"), ("web", "on")]) == ""
    assert fenced_writer_problem(_settings(), _settings().pipelines[0], [("rollback", "on")]) == ""


# ------------------------------------------------------------------ orchestrator (no services)


class FakeStore:
    """A TargetCutover keeping every saved document."""

    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []

    def load_state(self, pipeline: str) -> dict[str, Any] | None:
        return self.saved[-1] if self.saved else None

    def save_state(self, pipeline: str, phase: str, state: Any) -> None:
        assert phase == state["phase"]
        self.saved.append(json.loads(json.dumps(dict(state))))

    def read_sequence(self, spec: Any) -> int | None:
        return None

    def set_sequence(self, spec: Any, value: int) -> str:
        return ""

    def close(self) -> None:
        pass


def _closed_port_settings() -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "sources": [{"name": "old", "port": 1, "database": "a", "user": "cdc", "tables": ["public.t"]}],
            "pipelines": [{"name": "fwd", "source": "old", "target": {"url": "postgresql://x@127.0.0.1:1/b"}}],
        }
    )


def test_a_rerun_aborts_the_interrupted_cutover_first_and_a_failed_gate_aborts_without_touching() -> None:
    settings = _closed_port_settings()
    store = FakeStore()
    interrupted = CutoverState("fwd", Phase.DRAINED)  # nothing recorded to undo
    cutover = Cutover(settings, settings.pipelines[0], None, store, interrupted)  # type: ignore[arg-type]
    final = cutover.run()
    assert store.saved[0]["phase"] == "aborted" and store.saved[0]["aborted_from"] == "drained"
    assert "interrupted" in store.saved[0]["reason"]
    assert final.phase is Phase.ABORTED and final.aborted_from == "idle"
    assert final.reason is not None and final.reason.startswith("gate: "), final.reason
    assert final.fence is None and not final.forward_stopped
    assert REGISTRY.get_sample_value("cdc_cutover_phase", {"pipeline": "fwd", "phase": "aborted"}) == 1
    assert REGISTRY.get_sample_value("cdc_cutover_phase", {"pipeline": "fwd", "phase": "drained"}) == 0


def test_an_abort_reason_never_stores_a_secret() -> None:
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1", "sasl_password": "kafka-secret-1"},
            "sources": [
                {
                    "name": "old",
                    "port": 1,
                    "database": "a",
                    "user": "cdc",
                    "password": "src-secret-2",
                    "tables": ["public.t"],
                }
            ],
            "pipelines": [{"name": "fwd", "source": "old", "target": {"url": "postgresql://x:url%2Fsecret@h:1/b"}}],
        }
    )
    store = FakeStore()
    cutover = Cutover(settings, settings.pipelines[0], None, store, CutoverState("fwd", Phase.GATE))  # type: ignore[arg-type]
    final = cutover.abort("drain: password src-secret-2 / kafka-secret-1 / url/secret refused")
    assert final.reason is not None and "drain: password" in final.reason
    for secret in ("src-secret-2", "kafka-secret-1", "url/secret"):
        assert secret not in json.dumps(store.saved), secret


def test_abort_is_refused_after_done() -> None:
    settings = _closed_port_settings()
    cutover = Cutover(settings, settings.pipelines[0], None, FakeStore(), CutoverState("fwd", Phase.DONE))  # type: ignore[arg-type]
    with pytest.raises(CutoverRefusedError, match="finish"):
        cutover.abort("x")
    with pytest.raises(CutoverRefusedError, match="already done"):
        cutover.run()


# ------------------------------------------------------------------ review fixes


def test_the_fence_may_not_stop_the_reverse_pipelines_writes() -> None:
    """The fence stays up through the rollback window: the role the reverse pipeline writes the
    old source as must not be fenced (listed, or not exempt from a whole-database fence)."""

    def settings(fence: dict[str, Any], writer: str) -> Settings:
        pipes = _pipes({"source": "new", "pipeline": "back"}, {"versions": "table"})
        pipes[0]["cutover"]["fence"] = fence
        pipes[1]["target"]["url"] = f"postgresql://{writer}@h/a"
        return _settings(pipelines=pipes)

    whole = settings({}, "app")
    assert "exempts only 'cdc'" in _fence_problems(whole, whole.pipelines[0])
    listed = settings({"roles": ["app", "web"]}, "app")
    assert "'app' is the role pipeline 'back' writes" in _fence_problems(listed, listed.pipelines[0])
    fine = settings({"roles": ["web"]}, "app")
    assert _fence_problems(fine, fine.pipelines[0]) == ""
    as_pipeline = settings({}, "cdc")
    assert _fence_problems(as_pipeline, as_pipeline.pipelines[0]) == ""


class _DownStore(FakeStore):
    """The target holding the state is unreachable."""

    def save_state(self, pipeline: str, phase: str, state: Any) -> None:
        raise ConnectionError("target down")


def test_abort_lifts_the_fence_even_when_the_state_cannot_be_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed save after resuming the connector used to skip lifting the fence."""
    lifted: list[FenceRecord] = []

    class Status:
        healthy, failed, state = True, False, "RUNNING"

    class Client:
        def __init__(self, _settings: Any) -> None:
            pass

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def resume(self, name: str) -> None:
            pass

        def wait_for(self, name: str, _cond: Any, **_kw: Any) -> Status:
            return Status()

    monkeypatch.setattr(run_mod, "ConnectClient", Client)
    monkeypatch.setattr(run_mod, "connect_source", lambda *_a, **_k: contextlib.nullcontext(None))
    monkeypatch.setattr(run_mod, "lift_fence", lambda _conn, _fence, record: lifted.append(record))
    settings = _closed_port_settings()
    state = CutoverState("fwd", Phase.VERIFIED)
    state.fence = FenceRecord("read_only", ["app"], applied=True)
    state.forward_stopped, state.connector = True, "cdc-old"
    cutover = Cutover(settings, settings.pipelines[0], None, _DownStore(), state)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        cutover.abort("drain: timeout")  # the final save fails, after every undo step ran
    assert lifted and lifted[0].applied is False
    assert state.forward_stopped is False
