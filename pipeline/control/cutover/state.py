"""The cutover's durable state: phases, their allowed order, and the document saved in the
target's ``<control_schema>.cutover_state`` after every phase (pure; no I/O).

Everything an abort needs lives here, so a ``cutover run`` killed at any point can be undone by
another process: the fence's saved prior settings (recorded BEFORE the fence is applied), whether
the forward connector was stopped, what the reverse direction created.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """A cutover phase (``cdc_cutover_phase{phase}``); see CUTOVER order in :data:`FORWARD`."""

    IDLE = "idle"
    GATE = "gate"
    FENCED = "fenced"
    DRAINED = "drained"
    VERIFIED = "verified"
    SEQUENCES_SYNCED = "sequences_synced"
    REVERSE_STARTED = "reverse_started"
    DONE = "done"
    ABORTED = "aborted"
    FINISHED = "finished"


FORWARD: tuple[Phase, ...] = (
    Phase.IDLE,
    Phase.GATE,
    Phase.FENCED,
    Phase.DRAINED,
    Phase.VERIFIED,
    Phase.SEQUENCES_SYNCED,
    Phase.REVERSE_STARTED,
    Phase.DONE,
    Phase.FINISHED,
)
"""The phases of a successful cutover in order (``reverse_started`` only with ``--reverse``)."""

IN_FLIGHT = frozenset(FORWARD[1:7])
"""Phases of a cutover that started and has not reached ``done``: an abort must undo them."""


class PhaseError(ValueError):
    """A transition the phase order does not allow (e.g. ``fenced`` -> ``verified``, or any
    change after ``done`` but ``finished``)."""


def can_move(current: Phase, new: Phase) -> bool:
    """Whether ``current -> new`` is allowed: the next forward phase (``sequences_synced`` may
    skip ``reverse_started`` to ``done``); ``aborted`` from any phase before ``done``; a new
    cutover (``gate``) from ``idle`` or ``aborted``; ``finished`` only from ``done`` (pure)."""
    if new is Phase.ABORTED:
        return current in IN_FLIGHT or current in (Phase.IDLE, Phase.ABORTED)
    if new is Phase.GATE:
        return current in (Phase.IDLE, Phase.ABORTED)
    if current is Phase.SEQUENCES_SYNCED and new is Phase.DONE:
        return True
    if current not in FORWARD or new not in FORWARD:
        return False
    return FORWARD.index(new) == FORWARD.index(current) + 1


@dataclass
class SavedSetting:
    """A per-database setting the fence overwrote: ``role`` (None: the database-level setting,
    ``ALTER DATABASE``) and its ``default_transaction_read_only`` value before the fence (None:
    it was not set, so an unfence RESETs it)."""

    database: str
    role: str | None
    value: str | None


@dataclass
class FenceRecord:
    """How the source was fenced: the method, the roles (empty: the whole database), the prior
    settings (saved before anything changed), the sessions terminated and when it began
    (``fenced_at``, seconds since the epoch: where the write pause starts)."""

    method: str
    roles: list[str]
    saved: list[SavedSetting] = field(default_factory=list)
    terminated: list[dict[str, Any]] = field(default_factory=list)
    fenced_at: float = 0.0
    applied: bool = False


@dataclass
class CutoverState:
    """The document saved after every phase (JSON by :meth:`to_dict` / :meth:`from_dict`).

    ``durations`` maps a phase to the seconds of the step that ended in it (``gate``: the gate
    checks; ``fenced``: the fence; ``drained``: the drain, ...). ``write_pause_s`` is set when
    ``done`` is durable. ``reason`` says why a cutover was aborted.
    """

    pipeline: str
    phase: Phase = Phase.IDLE
    reverse_requested: bool = False
    started_at: float | None = None
    entered_at: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    fence: FenceRecord | None = None
    fence_lsn: str | None = None
    connector: str | None = None
    forward_stopped: bool = False
    drain: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    sequences: list[dict[str, Any]] = field(default_factory=list)
    reverse: dict[str, Any] | None = None
    write_pause_s: float | None = None
    reason: str | None = None
    aborted_from: str | None = None
    undo: list[str] = field(default_factory=list)
    updated_at: float | None = None

    def move(self, new: Phase, now: float | None = None, step_started: float | None = None) -> None:
        """Enter ``new`` at ``now`` (seconds since the epoch); ``step_started`` (epoch) gives the
        step's duration, recorded under ``new``. Raises PhaseError for a disallowed move."""
        if not can_move(self.phase, new):
            raise PhaseError(f"cutover of {self.pipeline}: cannot go from {self.phase.value} to {new.value}")
        at = time.time() if now is None else now
        if new is Phase.ABORTED:
            self.aborted_from = self.phase.value
        self.phase = new
        self.entered_at[new.value] = at
        if step_started is not None:
            self.durations[new.value] = max(0.0, at - step_started)
        self.updated_at = at

    @property
    def in_flight(self) -> bool:
        """True between the start of a cutover and ``done`` (an abort has something to undo)."""
        return self.phase in IN_FLIGHT

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (phases as their names)."""
        doc = asdict(self)
        doc["phase"] = self.phase.value
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CutoverState:
        """The state of a document written by :meth:`to_dict`; unknown keys are ignored (a newer
        writer), missing ones take their defaults. Raises ValueError for an unknown phase."""
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        fence = known.pop("fence", None)
        state = cls(**{**known, "phase": Phase(known.get("phase", "idle"))})
        if isinstance(fence, dict):
            saved = [SavedSetting(**s) for s in fence.get("saved", [])]
            state.fence = FenceRecord(**{**fence, "saved": saved})
        return state


def new_run(pipeline: str, reverse: bool, previous: CutoverState | None, now: float | None = None) -> CutoverState:
    """A fresh state for a new ``cutover run`` (``previous`` must be idle or aborted; it is
    replaced). Raises PhaseError when ``previous`` is in flight, done or finished."""
    if previous is not None and previous.phase not in (Phase.IDLE, Phase.ABORTED):
        raise PhaseError(f"cutover of {pipeline} is {previous.phase.value}: abort it first (or it is done)")
    state = CutoverState(pipeline, reverse_requested=reverse)
    state.started_at = time.time() if now is None else now
    return state
