"""Recovering a connector whose replication slot or WAL position is gone.

Debezium's PostgreSQL connector refuses to stream when the offset Kafka Connect stored for it
is no longer on the server: the slot is missing, its ``restart_lsn`` is past the stored
``lsn_proc`` (the slot was dropped and re-created), or its WAL was removed (``wal_status =
'lost'``). The task then fails with "The connector is trying to read change stream starting at
..., but this is no longer available on the server" (Debezium ``BaseSourceTask``, with
``PostgresConnection.validateLogPosition``), and a restart cannot help: the stored offset must
go and the tables must be snapshotted again.

:func:`diagnose` recognises that state (pure); :func:`inspect` gathers its inputs (slot state
first, then the Connect offsets, so a slot advancing in between cannot look ahead of them).
:class:`Recovery` runs the way back: stop the connector (``PUT /connectors/{name}/stop``),
reset its offsets (KIP-875 ``DELETE /connectors/{name}/offsets``, connector STOPPED), drop the
dead slot, ``source prepare``, resume with a fresh snapshot, then verify every pipeline of the
source (and repair when asked). The slot is re-created by Debezium itself when the connector
starts without one, which is what ties its initial snapshot to the slot's consistent point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import psycopg

from connectors import source_prep
from connectors.connect_client import ConnectClient, ConnectError, ConnectorStatus, SourceOffset
from connectors.debezium import build_connector_config
from connectors.slots import SlotState, current_wal_lsn, drop_slot, format_lsn, slot_state
from pipeline.control.snapshot.model import SnapshotKind, SnapshotRequest
from pipeline.control.snapshot.sql import SnapshotQueue
from pipeline.control.snapshot.wiring import build_coordinator
from pipeline.control.verify.model import VerifyResult, VerifySettings, export_verify_metrics
from pipeline.control.verify.repair import repair_pipeline
from pipeline.control.verify.run import store_result, verify_pipeline
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings, SourceSettings
from pipeline.core.settings.root import Settings
from sinks.factory import make_target

log = get_logger(__name__)

UNAVAILABLE_TRACE = "no longer available on the server"
"""Part of Debezium's message when the stored offset cannot be streamed from (``BaseSourceTask``)."""

SnapshotChoice = Literal["initial", "incremental"]


class Problem(StrEnum):
    """Why the connector's position is gone."""

    SLOT_LOST = "slot lost"
    SLOT_MISSING = "slot missing"
    SLOT_AHEAD = "slot ahead of offset"
    SERVER_BEHIND = "server behind offset"
    UNAVAILABLE = "offset unavailable"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A connector that cannot stream from its stored position: ``detail`` (one line) and ``fix``."""

    source: str
    problem: Problem
    detail: str
    fix: str

    @property
    def recoverable(self) -> bool:
        """False when the source is another server (its LSNs restarted): re-snapshotting is not enough,
        the version guard would skip every row as older than what the target holds."""
        return self.problem is not Problem.SERVER_BEHIND

    def line(self) -> str:
        """``position lost (<problem>): <detail>``."""
        return f"position lost ({self.problem.value}): {self.detail}"

    def to_dict(self) -> dict[str, str]:
        """Plain data for ``--json`` output."""
        return {"problem": self.problem.value, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True, slots=True)
class SourceView:
    """What :func:`diagnose` needs from the source database: the slot (None: absent) and
    ``pg_current_wal_lsn()``."""

    slot: SlotState | None
    current_lsn: int


def offset_lsn(offsets: Sequence[SourceOffset]) -> int | None:
    """The stored position Debezium validates: ``lsn_proc`` (last completely processed), else
    ``lsn``; None when no offset holds one."""
    for entry in offsets:
        for key in ("lsn_proc", "lsn"):
            value = entry.offset.get(key)
            if isinstance(value, int | float) and value > 0:
                return int(value)
    return None


def snapshot_in_progress(offsets: Sequence[SourceOffset]) -> bool:
    """True while the stored offset is a snapshot's (Debezium keeps ``snapshot`` in the offset
    until the snapshot completed, ``PostgresOffsetContext.getOffset``)."""
    return any("snapshot" in e.offset and not e.offset.get("snapshot_completed") for e in offsets)


def diagnose(
    source: SourceSettings,
    *,
    trace: str | None,
    view: SourceView | None,
    offsets: Sequence[SourceOffset] | None,
) -> Diagnosis | None:
    """The connector's lost position, or None when nothing shows one (pure).

    ``trace`` is the failed connector's or task's trace (None when none failed); ``view`` the
    source's slot and WAL position (None: not reachable); ``offsets`` the Connect offsets
    (None: not known). Checks, in order: slot ``wal_status = 'lost'``; stored LSN beyond the
    server's current WAL (another server); a stored offset with no slot; slot ``restart_lsn``
    past the stored LSN (what Debezium checks); Debezium's own message in ``trace``.
    """
    slot_name = source.resolved_slot_name
    fix = source_prep.recover_command(source)
    stored = offset_lsn(offsets) if offsets else None
    if view is not None and view.slot is not None and view.slot.lost:
        return Diagnosis(source.name, Problem.SLOT_LOST, f"slot {slot_name} lost its WAL (wal_status 'lost')", fix)
    if view is not None and stored is not None and stored > view.current_lsn:
        return Diagnosis(
            source.name,
            Problem.SERVER_BEHIND,
            f"the stored offset {format_lsn(stored)} is ahead of the server's WAL {format_lsn(view.current_lsn)}: "
            "the source is another PostgreSQL server",
            "reload the target from scratch (its rows carry the old server's positions), then: " + fix,
        )
    if view is not None and view.slot is None and offsets:
        at = f" at {format_lsn(stored)}" if stored is not None else ""
        return Diagnosis(
            source.name, Problem.SLOT_MISSING, f"slot {slot_name} does not exist but Connect holds an offset{at}", fix
        )
    slot = view.slot if view is not None else None
    if slot is not None and slot.restart_lsn is not None and stored is not None and slot.restart_lsn > stored:
        return Diagnosis(
            source.name,
            Problem.SLOT_AHEAD,
            f"slot {slot_name} starts at {format_lsn(slot.restart_lsn)}, after the stored offset {format_lsn(stored)} "
            "(the slot was re-created)",
            fix,
        )
    if trace is not None and UNAVAILABLE_TRACE in trace:
        return Diagnosis(
            source.name, Problem.UNAVAILABLE, "Debezium: the stored offset is no longer available on the server", fix
        )
    return None


def failed_trace(status: ConnectorStatus | None) -> str | None:
    """The connector's trace, or the first failed task's, or None."""
    if status is None:
        return None
    return status.trace or next((t.trace for t in status.tasks if t.trace), None)


def read_view(source: SourceSettings) -> SourceView | None:
    """The source's slot and current WAL position, or None when it cannot be reached."""
    try:
        with source_prep.connect(source, "cdc-pipeline connectors status") as conn:
            return SourceView(slot_state(conn, source.resolved_slot_name), current_wal_lsn(conn))
    except psycopg.Error as exc:
        log.info("source not reachable for the slot check", source=source.name, error=str(exc)[:200])
        return None


def inspect(
    source: SourceSettings, client: ConnectClient, status: ConnectorStatus | None, read_source: bool = True
) -> Diagnosis | None:
    """:func:`diagnose` with the slot read from the source (unless not ``read_source``), then the
    offsets from Connect. Either side that cannot be read is left out (the diagnosis uses what is known).
    """
    view = read_view(source) if read_source else None
    offsets: list[SourceOffset] | None
    try:
        offsets = client.offsets(source.resolved_connector_name)
    except ConnectError:
        offsets = None
    return diagnose(source, trace=failed_trace(status), view=view, offsets=offsets)


# --------------------------------------------------------------------------- recovery


class RecoveryError(Exception):
    """A recovery step failed; the message says which and why (no secrets)."""


@dataclass(frozen=True, slots=True)
class RecoverOptions:
    """``snapshot``: ``initial`` (the connector snapshots on start, having no offsets; needs
    ``snapshot_mode`` initial, always or when_needed) or ``incremental`` (it starts with
    ``snapshot.mode=no_data``, then an incremental snapshot of ``tables``, default all, runs
    through the snapshot queue). ``repair``: repair what verify finds. ``timeout_s`` bounds each wait."""

    snapshot: SnapshotChoice = "initial"
    tables: tuple[str, ...] = ()
    repair: bool = False
    timeout_s: float = 900.0


@dataclass
class RecoveryReport:
    """What :meth:`Recovery.run` did: the final verification of each pipeline of the source."""

    verified: dict[str, VerifyResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every pipeline verified clean."""
        return all(r.exit_code(False) == 0 for r in self.verified.values())


Say = Callable[[str], None]


class Recovery:
    """The recovery of one source's connector (see the module docstring); :meth:`plan` lists the
    steps, :meth:`run` runs them, printing each result through ``say``.

    Raises RecoveryError from :meth:`run` when a step fails (the steps before it stay done; running
    again is safe: each step is idempotent).
    """

    def __init__(
        self,
        settings: Settings,
        source: SourceSettings,
        client: ConnectClient,
        options: RecoverOptions,
        say: Say,
        on_snapshot: Callable[[list[SnapshotRequest]], None] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.source = source
        self.client = client
        self.options = options
        self.say = say
        self.on_snapshot = on_snapshot
        self.poll_s = poll_s
        self.name = source.resolved_connector_name
        self.pipelines: list[PipelineSettings] = [p for p in settings.pipelines if p.source == source.name]

    @property
    def tables(self) -> list[str]:
        """The tables re-snapshotted incrementally: ``options.tables`` or all the source's."""
        return list(self.options.tables) or list(self.source.tables)

    def problems(self) -> list[str]:
        """Reasons the recovery cannot run as asked (empty when it can)."""
        found: list[str] = []
        if self.options.snapshot == "initial" and self.source.snapshot_mode in ("no_data", "initial_only"):
            found.append(
                f"sources[{self.source.name}].snapshot_mode is {self.source.snapshot_mode}: the connector would not "
                "snapshot and stream on start; use --snapshot incremental"
            )
        elif self.options.snapshot == "initial" and self.source.initial_load == "bulk":
            found.append(
                f"sources[{self.source.name}].initial_load is bulk: its connector always starts with "
                "snapshot.mode=no_data and would not snapshot; use --snapshot incremental"
            )
        unknown = sorted(set(self.options.tables) - set(self.source.tables))
        if unknown:
            found.append(f"not captured by source {self.source.name}: {', '.join(unknown)}")
        return found

    def plan(self) -> list[str]:
        """One line per step, in order."""
        slot = self.source.resolved_slot_name
        steps = [
            f"stop connector {self.name} (PUT /connectors/{self.name}/stop) and wait until STOPPED",
            f"delete its Connect offsets (DELETE /connectors/{self.name}/offsets)",
            f"drop replication slot {slot} if it exists (the connector creates a new one on start)",
            f"source prepare: control tables and publication {self.source.resolved_publication_name}",
        ]
        if self.options.snapshot == "initial":
            steps.append(
                f"resume {self.name}: with no offsets it creates slot {slot} and snapshots every table "
                f"(snapshot.mode={self.source.snapshot_mode}); wait until the snapshot is done"
            )
        else:
            steps += [
                f"resume {self.name} with snapshot.mode=no_data: it creates slot {slot} and streams from now",
                "restore the configured connector config once an offset is stored",
                f"incremental snapshot of {', '.join(self.tables)} through the snapshot queue; wait until done",
            ]
        which = ", ".join(p.name for p in self.pipelines) or "none: no pipeline reads this source"
        steps.append(f"verify {'and repair ' if self.options.repair else ''}the pipelines of the source ({which})")
        return steps

    def run(self) -> RecoveryReport:
        """Run every step; returns the final verification of each pipeline."""
        self.stop()
        self.reset_offsets()
        self.drop_dead_slot()
        self.prepare()
        if self.options.snapshot == "initial":
            self.resume()
            self.wait_snapshot_done()
        else:
            self.resume(snapshot_mode="no_data")
            self.wait_streaming()
            self.restore_config()
            self.incremental_snapshot()
        return self.verify()

    # -- steps

    def _wait_status(self, done: Callable[[ConnectorStatus], bool], what: str, stable_s: float) -> ConnectorStatus:
        """Wait until ``done`` holds for ``stable_s``; a RUNNING target stops waiting at a failure."""
        time.sleep(min(2.0, self.poll_s * 2))  # Connect may report the previous state briefly
        settle = done if what != "RUNNING" else (lambda s: done(s) or s.failed)
        status = self.client.wait_for(
            self.name, settle, timeout_s=self.options.timeout_s, interval_s=self.poll_s, stable_s=stable_s
        )
        if not done(status):
            trace = failed_trace(status)
            why = f"; {trace.strip().splitlines()[0]}" if trace else ""
            raise RecoveryError(
                f"{self.name} did not become {what} in {self.options.timeout_s:.0f}s: {status.state}{why}"
            )
        return status

    def stop(self) -> None:
        """``PUT .../stop`` and wait until STOPPED with no tasks."""
        self.client.stop(self.name)
        self._wait_status(lambda s: s.state == "STOPPED" and not s.tasks, "STOPPED", 0.0)
        self.say(f"{self.name}: stopped")

    def reset_offsets(self) -> None:
        """``DELETE .../offsets`` and check that none is left."""
        self.client.reset_offsets(self.name)
        left = self.client.offsets(self.name)
        if offset_lsn(left) is not None:
            raise RecoveryError(f"{self.name}: offsets still stored after the reset: {left}")
        self.say(f"{self.name}: Connect offsets deleted")

    def drop_dead_slot(self) -> None:
        """Drop the source's slot once no WAL sender holds it (the connector is stopped)."""
        slot = self.source.resolved_slot_name
        deadline = time.monotonic() + self.options.timeout_s
        try:
            with source_prep.connect(self.source, "cdc-pipeline connectors recover") as conn:
                while (state := slot_state(conn, slot)) is not None and state.active:
                    if time.monotonic() >= deadline:
                        raise RecoveryError(f"slot {slot} is still streamed by pid {state.active_pid}")
                    time.sleep(self.poll_s)
                dropped = drop_slot(conn, slot)
        except psycopg.Error as exc:
            raise RecoveryError(
                f"dropping slot {slot}: {source_prep.redactor(self.source)(str(exc).strip())}"
            ) from None
        self.say(f"slot {slot}: {'dropped' if dropped else 'absent'}")

    def prepare(self) -> None:
        """``source prepare`` (idempotent)."""
        try:
            steps = source_prep.prepare(self.source)
        except source_prep.PrepareError as exc:
            raise RecoveryError(f"source prepare: {exc}") from None
        for step in steps:
            self.say(f"source prepared: {step.description}")
        if not steps:
            self.say("source prepare: already prepared")

    def resume(self, snapshot_mode: str | None = None) -> None:
        """Resume (with ``snapshot.mode`` overridden first when given); wait until RUNNING and the slot exists."""
        if snapshot_mode is not None:
            config = build_connector_config(self.source)
            config["snapshot.mode"] = snapshot_mode
            self.client.put_config(self.name, config)
        self.client.resume(self.name)
        self._wait_status(lambda s: s.healthy, "RUNNING", 3.0)
        self._wait_for(lambda: self._slot() is not None, f"slot {self.source.resolved_slot_name} to be created")
        self.say(f"{self.name}: running; slot {self.source.resolved_slot_name} created")

    def _slot(self) -> SlotState | None:
        with source_prep.connect(self.source, "cdc-pipeline connectors recover") as conn:
            return slot_state(conn, self.source.resolved_slot_name)

    def _wait_for(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.options.timeout_s
        while not check():
            if time.monotonic() >= deadline:
                raise RecoveryError(f"timed out after {self.options.timeout_s:.0f}s waiting for {what}")
            time.sleep(self.poll_s)

    def wait_snapshot_done(self) -> None:
        """Wait until Connect stores a streaming offset (the initial snapshot completed)."""

        def done() -> bool:
            offsets = self.client.offsets(self.name)
            return offset_lsn(offsets) is not None and not snapshot_in_progress(offsets)

        self._wait_for(done, f"the initial snapshot of {self.name}")
        self.say(f"{self.name}: initial snapshot done, streaming")

    def wait_streaming(self) -> None:
        """Wait until Connect stores an offset (so a restart does not count as a first start)."""
        self._wait_for(lambda: offset_lsn(self.client.offsets(self.name)) is not None, f"an offset of {self.name}")
        self.say(f"{self.name}: streaming, offset stored")

    def restore_config(self) -> None:
        """PUT the configured connector config back (the task restarts from its stored offset)."""
        self.client.put_config(self.name, build_connector_config(self.source))
        self._wait_status(lambda s: s.healthy, "RUNNING", 3.0)
        self.say(f"{self.name}: configured snapshot.mode={self.source.snapshot_mode} restored")

    def incremental_snapshot(self) -> None:
        """Fail requests left in flight by the reset, queue an incremental snapshot of the tables and wait."""
        queue = SnapshotQueue(self.source)
        try:
            stale = queue.in_flight()
            if stale is not None:
                queue.fail(stale.id, "abandoned: the connector's offsets were reset by connectors recover")
                self.say(f"snapshot request {stale.id}: failed (abandoned by the offset reset)")
            request = queue.enqueue(self.tables, SnapshotKind.INCREMENTAL, origin="recover")
            queue.send_next()
        except psycopg.Error as exc:
            raise RecoveryError(f"snapshot queue: {type(exc).__name__}: {str(exc).strip()}") from None
        finally:
            queue.close()
        self.say(f"snapshot request {request.id}: queued for {', '.join(self.tables)}")
        coordinator = build_coordinator(self.settings, self.source, with_lag=False)
        try:
            found = coordinator.wait_for([request.id], self.options.timeout_s, on_poll=self.on_snapshot)
        finally:
            coordinator.stop(5.0)
        final = found[0] if found else None
        if final is None or final.state.value != "completed":
            state = final.state.value if final is not None else "missing"
            raise RecoveryError(f"incremental snapshot {request.id} ended {state}: {final.detail if final else ''}")
        self.say(f"snapshot request {request.id}: completed")

    def verify(self) -> RecoveryReport:
        """Verify each pipeline of the source (repair and verify again when asked and needed)."""
        report = RecoveryReport()
        cfg = VerifySettings.from_config(self.settings.verify)
        for pipeline in self.pipelines:
            result = self._verify_one(pipeline, cfg)
            if self.options.repair and any(t.mismatched for t in result.tables):
                self.say(f"pipeline {pipeline.name}: repairing mismatched chunks")
                repair = repair_pipeline(self.settings, pipeline, result, cfg, on_progress=self.on_snapshot)
                for table, rows in sorted(repair.deleted.items()):
                    self.say(f"  {table}: {rows} target row(s) absent from the source deleted")
                result = self._verify_one(pipeline, cfg)
            report.verified[pipeline.name] = result
        return report

    def _verify_one(self, pipeline: PipelineSettings, cfg: VerifySettings) -> VerifyResult:
        target = make_target(pipeline, purpose="verify")
        try:
            result = verify_pipeline(self.settings, pipeline, None, cfg, target=target)
            export_verify_metrics(result)
            store_result(target, result)
        finally:
            target.close()
        return result
