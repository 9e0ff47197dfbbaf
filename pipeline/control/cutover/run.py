"""The cutover orchestrator: gate -> fence -> fence LSN -> drain -> final verification -> stop the
forward connector -> sequence sync -> (reverse) -> done, with the state saved durably in the
target after every phase and an automatic abort on any failure before ``done``.

Safety rules this module keeps:

- whatever an abort must undo is saved BEFORE it is done (the fence's prior settings, the
  forward connector about to be stopped, a reverse direction about to start), so an abort by
  another process after a ``kill -9`` undoes exactly that;
- an abort whose undo fails keeps the phase (``cutover status`` still shows the fence) and says
  what failed; ``cutover abort`` retries it (every undo step is idempotent);
- the write pause is measured from just before the fence until ``done`` is durable;
- the forward connector is stopped after the drain and the final verification (so a verifier
  that catches up by heartbeat still can), before anything is written to the target or the
  reverse direction starts; one ``run`` or ``abort`` at a time (:func:`cutover_lock`).

Test hook: ``CDC_CUTOVER_PAUSE_AFTER=<phase>`` makes ``run`` sleep ``CDC_CUTOVER_PAUSE_S``
seconds (default 3600) once that phase is durable, so tests can kill it there.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

from confluent_kafka.admin import AdminClient

from connectors.connect_client import ConnectClient
from connectors.debezium import Redactor
from pipeline.control.cutover.drain import drain
from pipeline.control.cutover.fence import (
    FenceError,
    apply_fence,
    current_lsn,
    fence_plan,
    lift_fence,
    read_prior,
    resolve_plan,
)
from pipeline.control.cutover.gate import check_gate
from pipeline.control.cutover.sequences import discover, sync
from pipeline.control.cutover.state import CutoverState, FenceRecord, Phase, new_run
from pipeline.control.monitor.heartbeat import heartbeat_target_table
from pipeline.control.offsets import change_partitions, watermarks
from pipeline.control.verify.model import CatchUp, VerifyResult, VerifySettings
from pipeline.control.verify.plan import pipeline_tables
from pipeline.control.verify.run import store_result, verify_pipeline
from pipeline.control.verify.source import connect_source, write_heartbeat
from pipeline.core import metrics
from pipeline.core.logs import get_logger, kafka_logging
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from pipeline.core.settings.secrets import secret_values
from sinks.base import Target, TargetCutover, open_cutover
from sinks.factory import make_target, target_user

log = get_logger(__name__)

PAUSE_ENV = "CDC_CUTOVER_PAUSE_AFTER"
PAUSE_SECONDS_ENV = "CDC_CUTOVER_PAUSE_S"


class CutoverInterruptedError(BaseException):
    """SIGTERM during ``cutover run`` (raised from the signal handler, like KeyboardInterrupt)."""


class CutoverRefusedError(RuntimeError):
    """The command cannot act on the stored state (abort after ``done``, run while another is in
    flight and could not be aborted); the message says what to do instead."""


def export_state(state: CutoverState) -> None:
    """Set ``cdc_cutover_phase`` (1 for the current phase, 0 for the others),
    ``cdc_cutover_write_pause_seconds`` and ``cdc_cutover_phase_duration_seconds``."""
    for phase in Phase:
        metrics.CUTOVER_PHASE.labels(state.pipeline, phase.value).set(1 if phase is state.phase else 0)
    if state.write_pause_s is not None:
        metrics.CUTOVER_WRITE_PAUSE.labels(state.pipeline).set(state.write_pause_s)
    for name, seconds in state.durations.items():
        metrics.CUTOVER_PHASE_DURATION.labels(state.pipeline, name).set(seconds)


def load_state(store: TargetCutover, pipeline: str) -> CutoverState:
    """The stored state of ``pipeline`` (``idle`` when none was saved)."""
    doc = store.load_state(pipeline)
    return CutoverState(pipeline) if doc is None else CutoverState.from_dict(doc)


@dataclass
class Cutover:
    """One pipeline's cutover: ``settings``, ``pipeline``, the target (its own by default) and the
    durable state. :meth:`run` and :meth:`abort` return the final state; neither raises for a
    failed step (the state says why), only CutoverRefusedError and errors of the store itself."""

    settings: Settings
    pipeline: PipelineSettings
    target: Target
    store: TargetCutover
    state: CutoverState

    @classmethod
    @contextmanager
    def open(cls, settings: Settings, pipeline: PipelineSettings, exclusive: bool = False) -> Iterator[Cutover]:
        """A cutover on a target of its own, closed on exit; ``exclusive`` (``run``, ``abort``) holds
        the pipeline's cutover lock meanwhile (:func:`cutover_lock`). Raises TransientSinkError,
        CutoverRefusedError, psycopg.Error."""
        with contextlib.ExitStack() as stack:
            if exclusive:
                stack.enter_context(cutover_lock(settings, pipeline))
            target = make_target(pipeline, purpose="cutover")
            stack.callback(target.close)
            store = open_cutover(target)
            stack.callback(store.close)
            yield cls(settings, pipeline, target, store, load_state(store, pipeline.name))

    # ----------------------------------------------------------------- state

    def save(self) -> None:
        """Save the state durably and export its metrics."""
        self.state.updated_at = time.time()
        self.store.save_state(self.pipeline.name, self.state.phase.value, self.state.to_dict())
        export_state(self.state)

    def _save_quietly(self) -> None:
        """:meth:`save`, logging instead of raising: an undo step must not stop the next one (the
        fence above all) because the target that holds the state is down; the undo steps are
        idempotent, so a state saved late only makes a later abort repeat one."""
        try:
            self.save()
        except Exception as exc:  # any store failure: the abort goes on
            log.error("cutover state not saved; the abort goes on", pipeline=self.pipeline.name, error=str(exc)[:300])

    def _enter(self, phase: Phase, step_started: float) -> None:
        self.state.move(phase, step_started=step_started)
        self.save()
        log.info("cutover phase", pipeline=self.pipeline.name, phase=phase.value)
        _test_pause(phase)

    # ----------------------------------------------------------------- run

    def run(self, reverse: bool = False) -> CutoverState:
        """Run the whole cutover (see the module docstring). A previous cutover still in flight
        (a crashed run) is aborted first. Raises CutoverRefusedError after ``done``."""
        if self.state.in_flight:
            self.abort("a new cutover run found this one interrupted")
            if self.state.in_flight:
                raise CutoverRefusedError(f"the interrupted cutover could not be aborted: {self.state.reason}")
        if self.state.phase in (Phase.DONE, Phase.FINISHED):
            raise CutoverRefusedError(f"cutover of {self.pipeline.name} is already {self.state.phase.value}")
        self.state = new_run(self.pipeline.name, reverse, self.state)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("gate", self._gate),
            ("fence", self._fence),
            ("drain", self._drain),
            ("verify", self._verify),
            ("sequences", self._sequences),
        ]
        if reverse:
            steps.append(("reverse", self._reverse))
        steps.append(("done", self._done))
        with _sigterm_raises():
            for name, step in steps:
                try:
                    step()
                except (Exception, KeyboardInterrupt, CutoverInterruptedError) as exc:
                    why = "interrupted" if isinstance(exc, KeyboardInterrupt | CutoverInterruptedError) else str(exc)
                    log.error("cutover step failed", pipeline=self.pipeline.name, step=name, error=why[:500])
                    if self.state.phase is Phase.DONE:
                        raise  # past the point of no return: nothing to undo
                    self.abort(f"{name}: {why}")
                    return self.state
        return self.state

    def _gate(self) -> None:
        started = time.time()
        problems = _fence_problems(self.settings, self.pipeline)
        with admin_client(self.settings) as admin:
            gate = check_gate(self.settings, self.pipeline, self.target, admin)
        self.state.gate = gate.to_dict()
        if problems:
            raise RuntimeError(f"fence: {problems}")
        if not gate.ok:
            raise RuntimeError(gate.reason())
        self._enter(Phase.GATE, started)

    def _fence(self) -> None:
        started = time.time()
        fence = self.pipeline.cutover.fence
        source = self.settings.source(self.pipeline.source)
        record = FenceRecord(fence.method, list(fence.roles))
        with connect_source(source, "cutover fence", fence.timeout_s) as conn:
            plan = resolve_plan(conn, source.database, source.user, fence.roles) if fence.method == "read_only" else []
            problem = fenced_writer_problem(self.settings, self.pipeline, plan)
            if problem:
                raise FenceError(problem)
            if plan:
                record.saved = read_prior(conn, source.database, plan)
            self.state.fence = record
            self.save()  # the prior settings are durable before anything changes
            record.fenced_at = time.time()
            try:
                apply_fence(conn, source, fence, record, plan)
            finally:
                self.save()
            self.state.fence_lsn = current_lsn(conn)
        self._enter(Phase.FENCED, started)

    def _drain(self) -> None:
        started = time.time()
        source = self.settings.source(self.pipeline.source)
        hb = heartbeat_target_table(source, self.pipeline)
        group = self.pipeline.resolved_consumer_group
        with connect_source(source, "cutover drain", 30) as conn, admin_client(self.settings) as admin:
            result = drain(
                lambda: write_heartbeat(conn, source),
                lambda: self.target.read_heartbeat(hb, source.name),
                lambda: watermarks(admin, change_partitions(admin, source, self.pipeline)),
                lambda: self.target.group_offsets(group),
                self.settings.cutover.drain_timeout_s,
            )
        self.state.drain = result.to_dict()
        self._enter(Phase.DRAINED, started)

    def _stop_forward(self) -> None:
        """Stop the forward connector (KIP-875 ``PUT /connectors/{name}/stop``; the slot stays)."""
        source = self.settings.source(self.pipeline.source)
        name = source.resolved_connector_name
        self.state.connector, self.state.forward_stopped = name, True
        self.save()  # recorded first: resuming a running connector is harmless
        with ConnectClient(self.settings.connect) as client:
            client.stop(name)
            status = client.wait_for(name, lambda s: s.state == "STOPPED", timeout_s=60, interval_s=0.5)
        if status.state != "STOPPED":
            raise RuntimeError(f"connector {name} did not stop (state {status.state})")

    def _verify(self) -> None:
        started = time.time()
        result = final_verification(self.settings, self.pipeline, self.settings.cutover.final_verify_timeout_s)
        store_result(self.target, result)
        self.state.verification = _verification_summary(result)
        if not result.ok:
            bad = [f"{t.table}: {t.status.value}" for t in result.tables if not t.ok]
            raise RuntimeError(f"final verification is not a MATCH ({', '.join(bad)})")
        self._stop_forward()
        self._enter(Phase.VERIFIED, started)

    def _sequences(self) -> None:
        started = time.time()
        source = self.settings.source(self.pipeline.source)
        cutover = self.pipeline.cutover
        with connect_source(source, "cutover sequences", 60) as conn:
            found = discover(conn, pipeline_tables(self.settings, self.pipeline), cutover.sequences)
        synced = sync(self.store, self.pipeline, found, cutover.sequence_margin)
        self.state.sequences = [s.to_dict() for s in synced]
        self._enter(Phase.SEQUENCES_SYNCED, started)

    def _reverse(self) -> None:
        started = time.time()
        module = _reverse_module()
        self.state.reverse = {"starting": True}
        self.save()  # an abort from here on stops the reverse direction
        made = module.start_reverse(self.settings, self.pipeline)
        self.state.reverse = dict(made.to_dict())
        self._enter(Phase.REVERSE_STARTED, started)

    def _done(self) -> None:
        started = time.time()
        before = self.state.phase
        try:
            self._enter(Phase.DONE, started)
        except Exception:
            self.state.phase = before  # 'done' is not durable: still before the point of no return, so abort
            raise
        fence = self.state.fence
        if fence is not None:
            self.state.write_pause_s = time.time() - fence.fenced_at
            self.save()
        log.info("cutover done", pipeline=self.pipeline.name, write_pause_s=self.state.write_pause_s)

    # ----------------------------------------------------------------- abort

    def abort(self, reason: str) -> CutoverState:
        """Undo whatever the stored state says was done (stop the reverse direction, resume the
        forward connector, lift the fence with the saved prior settings), then record ``aborted``
        with ``reason``. Idempotent; a state that is idle or aborted is re-undone harmlessly. When
        an undo step fails the phase is kept and the failure recorded. Raises CutoverRefusedError
        at or after ``done``."""
        if self.state.phase in (Phase.DONE, Phase.FINISHED):
            raise CutoverRefusedError(
                f"cutover of {self.pipeline.name} is {self.state.phase.value}: the target already took writes;"
                " use 'cutover finish' to end the rollback window, or roll back through the reverse pipeline"
            )
        started = time.time()
        redact = Redactor(secret_values(self.settings))  # step errors may quote a DSN or a Connect reply
        reason = redact(reason)
        failures = [redact(f) for f in (self._undo_reverse(), self._undo_forward(), self._undo_fence()) if f]
        self.state.reason = reason
        if failures:
            self.state.undo = failures
            self.state.reason = f"{reason}; abort incomplete: {'; '.join(failures)}"
            self.save()
            return self.state
        self.state.undo = []
        if self.state.phase is not Phase.ABORTED:
            self.state.move(Phase.ABORTED, step_started=started)
        self.save()
        log.warning("cutover aborted", pipeline=self.pipeline.name, reason=reason[:500])
        return self.state

    def _undo_reverse(self) -> str:
        if self.state.reverse is None:
            return ""
        try:
            module = _reverse_module()
            started = self.state.reverse
            known = {k: started[k] for k in ("connector", "slot", "publication", "slot_lsn") if k in started}
            made = module.ReverseStarted(**known) if len(known) == 4 else None
            module.stop_reverse(self.settings, self.pipeline, made)
        except Exception as exc:
            return f"stop reverse: {exc}"
        self.state.reverse = None
        self._save_quietly()
        return ""

    def _undo_forward(self) -> str:
        if not self.state.forward_stopped or self.state.connector is None:
            return ""
        name = self.state.connector
        try:
            with ConnectClient(self.settings.connect) as client:
                client.resume(name)
                status = client.wait_for(name, lambda st: st.healthy or st.failed, timeout_s=60, interval_s=0.5)
        except Exception as exc:
            return f"resume connector {name}: {exc}"
        if not status.healthy:
            return f"resume connector {name}: state {status.state} after the resume"
        self.state.forward_stopped = False
        self._save_quietly()
        return ""

    def _undo_fence(self) -> str:
        record = self.state.fence
        if record is None:
            return ""
        source = self.settings.source(self.pipeline.source)
        fence = self.pipeline.cutover.fence
        try:
            with connect_source(source, "cutover unfence", fence.timeout_s) as conn:
                lift_fence(conn, fence, record)
        except Exception as exc:
            return f"lift fence: {exc}"
        record.applied = False
        self._save_quietly()
        return ""


@contextmanager
def cutover_lock(settings: Settings, pipeline: PipelineSettings) -> Iterator[None]:
    """Hold ``pipeline``'s cutover lock while inside: a session-level advisory lock on the source
    (``pg_try_advisory_lock``, PostgreSQL docs "Advisory Locks"), so a second ``run`` or an
    ``abort`` cannot act while a run is in progress, and a run killed with ``kill -9`` frees it
    with its session. Raises CutoverRefusedError when another process holds it, psycopg.Error."""
    source = settings.source(pipeline.source)
    with connect_source(source, "cutover lock", 30) as conn:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS got", (f"cdc-pipeline cutover {pipeline.name}",)
        ).fetchone()
        if row is None or not row["got"]:
            raise CutoverRefusedError(
                f"a 'cutover run' or 'cutover abort' of {pipeline.name} is in progress; stop a run with Ctrl-C or"
                " SIGTERM (it aborts by itself) or wait for it"
            )
        yield


def final_verification(settings: Settings, pipeline: PipelineSettings, timeout_s: float) -> VerifyResult:
    """:func:`pipeline.control.verify.run.verify_pipeline` of every table, bounded by ``timeout_s``
    seconds (queries by ``statement_timeout``, the whole by a thread join); the drain already
    caught up, so verification does not wait again. Raises TimeoutError, or what it raises."""
    cfg = replace(
        VerifySettings.from_config(settings.verify), statement_timeout_s=timeout_s, max_wait_s=min(timeout_s, 60.0)
    )
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = verify_pipeline(settings, pipeline, config=cfg, catch_up=lambda: CatchUp(True, True, 0.0))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, name="cutover-verify", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"final verification did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    result: VerifyResult = box["result"]
    return result


def _verification_summary(result: VerifyResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat(),
        "tables": {str(t.table): {"status": t.status.value, "rows": t.rows_source} for t in result.tables},
    }


def _fence_problems(settings: Settings, pipeline: PipelineSettings) -> str:
    source = settings.source(pipeline.source)
    fence = pipeline.cutover.fence
    if fence.method != "read_only":
        return ""
    try:
        fence_plan(source.database, source.user, fence.roles)
    except FenceError as exc:
        return str(exc)
    return _reverse_writer_problem(settings, pipeline)


def _reverse_writer_problem(settings: Settings, pipeline: PipelineSettings) -> str:
    """Why the fence would stop the reverse pipeline's writes into the old source, or "": the
    fence stays up through the rollback window, so the role the reverse pipeline writes as must
    be neither a fenced role nor, under a whole-database fence, any role but the pipeline's own
    (the only one exempted)."""
    reverse = pipeline.cutover.reverse
    if reverse is None:
        return ""
    source = settings.source(pipeline.source)
    writer = target_user(settings.pipeline(reverse.pipeline).target)
    fence = pipeline.cutover.fence
    if writer is not None and writer in fence.roles:
        return (
            f"cutover.fence.roles: {writer!r} is the role pipeline {reverse.pipeline!r} writes the old source as;"
            " fencing it would stop the rollback copy"
        )
    if not fence.roles and writer != source.user:
        return (
            f"a whole-database fence exempts only {source.user!r}, but pipeline {reverse.pipeline!r} writes the old"
            f" source as {writer!r}: list the application roles in cutover.fence.roles, or connect it as"
            f" {source.user!r}"
        )
    return ""


def fenced_writer_problem(
    settings: Settings, pipeline: PipelineSettings, plan: Sequence[tuple[str | None, str]]
) -> str:
    """Why ``plan`` (the fence with roles expanded through their groups, from
    :func:`~pipeline.control.cutover.fence.resolve_plan`) would make the reverse pipeline's
    writer role read-only on the old source, or "": the static check of
    :func:`_reverse_writer_problem` cannot see membership, which lives in the catalog."""
    reverse = pipeline.cutover.reverse
    if reverse is None:
        return ""
    writer = target_user(settings.pipeline(reverse.pipeline).target)
    if writer is None or (writer, "on") not in plan:
        return ""
    return (
        f"cutover.fence.roles: {writer!r}, the role pipeline {reverse.pipeline!r} writes the old source as,"
        " is a member of a fenced role; fencing it would stop the rollback copy"
    )


def _reverse_module() -> Any:
    """``pipeline.control.cutover.reverse`` (the rollback direction, built separately); raises
    RuntimeError with a clear message when this build lacks it."""
    try:
        module = importlib.import_module("pipeline.control.cutover.reverse")
    except ImportError as exc:
        raise RuntimeError("--reverse: this build has no reverse direction (pipeline.control.cutover.reverse)") from exc
    return module


@contextmanager
def admin_client(settings: Settings) -> Iterator[Any]:
    """A Kafka ``AdminClient`` of ``settings.kafka`` (nothing to close)."""
    yield AdminClient(kafka_logging(settings.kafka.client_config()))


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises CutoverInterruptedError (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise CutoverInterruptedError(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _test_pause(phase: Phase) -> None:
    """Test hook (see the module docstring)."""
    if os.environ.get(PAUSE_ENV) == phase.value:
        time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, "3600")))
