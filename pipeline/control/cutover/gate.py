"""The cutover gate, shared by ``cutover plan`` and ``cutover run``: the lag held below
``cutover.max_lag_s`` for ``cutover.stable_s`` (measured end to end by heartbeats written on the
source and timed until the target shows them), the last stored verification clean, covering
every table and fresh, and the DLQ empty since that verification.

The decisions are pure functions of what was measured (unit tested); the measuring functions
take their connections and clients as arguments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.control.monitor.heartbeat import heartbeat_target_table
from pipeline.control.offsets import offsets_for_time
from pipeline.control.verify.plan import pipeline_tables
from pipeline.control.verify.source import connect_source, write_heartbeat
from pipeline.core import metrics
from pipeline.core.events import TableId
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings
from sinks.base import Target, VerificationRecord


@dataclass(frozen=True, slots=True)
class Check:
    """One gate check: ``name`` (lag, verification, dlq, fence), whether it holds, a one-line
    ``detail`` for people and ``data`` for ``--json``."""

    name: str
    ok: bool
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        doc = asdict(self)
        doc["data"] = dict(self.data)
        return doc


@dataclass(frozen=True, slots=True)
class GateResult:
    """Every check of the gate; it holds only when every check does."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when every check holds (and there is at least one)."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        """The checks that do not hold."""
        return [c for c in self.checks if not c.ok]

    def reason(self) -> str:
        """``gate refused: <name>: <detail>; ...`` (empty when the gate holds)."""
        bad = self.failed()
        return "gate refused: " + "; ".join(f"{c.name}: {c.detail}" for c in bad) if bad else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


# --------------------------------------------------------------------------- decisions (pure)


def lag_check(samples: Sequence[float | None], max_lag_s: float, stable_s: float, held_s: float) -> Check:
    """The lag half: every sample (seconds from a heartbeat's write on the source to its arrival
    in the target; None: it did not arrive within ``max_lag_s``) below ``max_lag_s``, over at
    least ``stable_s`` seconds (``held_s``: how long the sampling ran)."""
    known = [s for s in samples if s is not None]
    data = {
        "samples": len(samples),
        "max_s": max(known) if known else None,
        "held_s": round(held_s, 3),
        "max_lag_s": max_lag_s,
        "stable_s": stable_s,
    }
    if not samples:
        return Check("lag", False, "no heartbeat sample", data)
    if len(known) < len(samples) or max(known) >= max_lag_s:
        worst = "a heartbeat did not arrive" if len(known) < len(samples) else f"{max(known):.2f} s"
        return Check("lag", False, f"lag reached {max_lag_s:g} s ({worst}) within {held_s:.1f} s", data)
    if held_s < stable_s:
        return Check("lag", False, f"held {held_s:.1f} s of the {stable_s:g} s required", data)
    return Check("lag", True, f"below {max_lag_s:g} s for {held_s:.1f} s (worst {max(known):.2f} s)", data)


def verification_check(
    stored: Mapping[str, VerificationRecord], tables: Sequence[TableId], max_age_s: float, now: datetime
) -> Check:
    """The last stored verification: every table of ``tables`` has a result, each ok and at
    most ``max_age_s`` seconds old at ``now`` (aware). ``data["since"]`` is the oldest result's
    time (the DLQ check's start)."""
    missing = [str(t) for t in tables if str(t) not in stored]
    records = [stored[str(t)] for t in tables if str(t) in stored]
    dirty = [r.table for r in records if not r.ok]
    ages = {r.table: (now - r.verified_at).total_seconds() for r in records}
    stale = sorted(name for name, age in ages.items() if age > max_age_s)
    oldest = min((r.verified_at for r in records), default=None)
    data = {
        "tables": len(tables),
        "missing": missing,
        "dirty": dirty,
        "stale": stale,
        "since": oldest.isoformat() if oldest else None,
        "oldest_age_s": round(max(ages.values()), 1) if ages else None,
        "max_age_s": max_age_s,
    }
    problems = []
    if not tables:
        problems.append("the pipeline has no tables")
    if missing:
        problems.append(f"never verified: {', '.join(missing)}")
    if dirty:
        problems.append(f"not clean: {', '.join(dirty)}")
    if stale:
        problems.append(f"older than {max_age_s:g} s: {', '.join(stale)}")
    if problems:
        return Check("verification", False, "; ".join(problems), data)
    return Check("verification", True, f"clean, {len(tables)} table(s), oldest {data['oldest_age_s']} s ago", data)


def dlq_check(topic: str, since: str | None, newer: Mapping[tuple[str, int], int | None] | None) -> Check:
    """The DLQ empty since ``since``: ``newer`` maps each DLQ partition to the first offset of a
    message at or after that time (None: none); None for ``newer`` means the topic does not exist."""
    data: dict[str, Any] = {"topic": topic, "since": since}
    if since is None:
        return Check("dlq", False, "no verification time to measure from", data)
    if newer is None:
        return Check("dlq", True, f"{topic} does not exist", data)
    found = {f"{t}[{p}]": o for (t, p), o in newer.items() if o is not None}
    data["partitions_with_messages"] = found
    if found:
        return Check("dlq", False, f"{topic} received messages since the verification ({', '.join(found)})", data)
    return Check("dlq", True, f"{topic} empty since {since}", data)


# --------------------------------------------------------------------------- measuring


def sample_lag(
    write: Callable[[], datetime],
    read: Callable[[], datetime | None],
    max_lag_s: float,
    stable_s: float,
    every_s: float = 1.0,
    poll_s: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[float | None], float]:
    """Sample the end-to-end lag for ``stable_s`` seconds: ``write()`` a heartbeat (returns the
    value written), poll ``read()`` (the value the target holds) until it reaches it; the sample
    is the seconds that took, None when ``max_lag_s`` passed first (sampling stops there: the
    gate cannot hold). One sample at least, then one about every ``every_s`` seconds. Returns
    ``(samples, seconds sampled)``. Raises what ``write``/``read`` raise."""
    start = clock()
    samples: list[float | None] = []
    while True:
        began = clock()
        written = write()
        sample: float | None = None
        while clock() - began < max_lag_s:
            seen = read()
            if seen is not None and seen >= written:
                sample = clock() - began
                break
            sleep(poll_s)
        samples.append(sample)
        if sample is None or sample >= max_lag_s or clock() - start >= stable_s:
            return samples, clock() - start
        sleep(max(0.0, every_s - (clock() - began)))


def dlq_since(
    admin: Any, topic: str, since: datetime, timeout_s: float = 10.0
) -> dict[tuple[str, int], int | None] | None:
    """Per partition of ``topic``, the first offset of a message at or after ``since`` (Kafka
    ListOffsets by timestamp, :func:`pipeline.control.offsets.offsets_for_time`); None when the
    topic does not exist. Raises KafkaException."""
    metadata = admin.list_topics(topic=topic, timeout=timeout_s)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    partitions = [(topic, p) for p in found.partitions]
    return offsets_for_time(admin, partitions, int(since.timestamp() * 1000), timeout_s)


def check_gate(settings: Settings, pipeline: PipelineSettings, target: Target, admin: Any) -> GateResult:
    """Measure and decide the whole gate for ``pipeline`` (lag sampling takes ``cutover.stable_s``).
    Raises psycopg.Error (source), TransientSinkError (target), KafkaException."""
    config = settings.cutover
    source = settings.source(pipeline.source)
    hb = heartbeat_target_table(source, pipeline)
    with connect_source(source, "cutover gate", 30) as sconn:
        samples, held = sample_lag(
            lambda: write_heartbeat(sconn, source),
            lambda: target.read_heartbeat(hb, source.name),
            config.max_lag_s,
            config.stable_s,
        )
    lag = lag_check(samples, config.max_lag_s, config.stable_s, held)
    metrics.CUTOVER_LAG_GATE.labels(pipeline.name).set(1 if lag.ok else 0)
    verification = target.verification(30)
    try:
        stored = verification.load_results(pipeline.name)
    finally:
        verification.close()
    now = datetime.now(UTC)
    verified = verification_check(stored, pipeline_tables(settings, pipeline), config.verification_max_age_s, now)
    since = verified.data.get("since")
    topic = pipeline.resolved_dlq_topic
    newer = dlq_since(admin, topic, datetime.fromisoformat(since)) if since else None
    return GateResult((lag, verified, dlq_check(topic, since, newer)))
