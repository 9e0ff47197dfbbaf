"""Lag-aware throttling of a running incremental snapshot (pure): the lag readings, the
pause/resume decision with hysteresis, and the arithmetic that turns watermarks and stored
offsets into per-pipeline consumer lag. A lag that cannot be read is *unknown*, never zero: it
never resumes a paused snapshot (``docs/design/snapshot.md``, "Throttling and unknown lag")."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pipeline.core.logs import get_logger

log = get_logger(__name__)

UNKNOWN_NO_OFFSETS = "no offsets stored yet"
"""Why a pipeline's lag is unknown when its consumer group stored no offset in its target."""


class ThrottleAction(Enum):
    """What :meth:`Throttle.decide` asks for."""

    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class LagReading:
    """Lag inputs of the throttle: WAL the slot retains (bytes) and the worst measured pipeline's
    consumer lag (messages); None when not measured (or not measurable this time).

    ``unmeasured`` names the pipelines whose consumer lag could not be read this time (target
    unreachable, no offsets stored yet): the worst lag is then only a lower bound.
    """

    wal_retained_bytes: int | None = None
    consumer_lag: int | None = None
    unmeasured: tuple[str, ...] = ()

    @property
    def consumer_lag_known(self) -> bool:
        """True when every pipeline's consumer lag was measured (``consumer_lag`` is the worst)."""
        return self.consumer_lag is not None and not self.unmeasured


class Throttle:
    """Pause/resume decisions for a running incremental snapshot, with hysteresis.

    PAUSE when not paused and any measured reading is above its threshold; RESUME when paused
    by the throttle and every threshold's reading is known (every pipeline's consumer lag
    measured) and below ``resume_ratio`` of it; otherwise NONE (an unknown reading never
    resumes). A None threshold is not checked.
    """

    def __init__(
        self, max_wal_retained_bytes: int | None, max_consumer_lag: int | None, resume_ratio: float = 0.8
    ) -> None:
        if not 0 < resume_ratio <= 1:
            raise ValueError(f"resume_ratio must be in (0, 1], got {resume_ratio}")
        self.max_wal = max_wal_retained_bytes
        self.max_lag = max_consumer_lag
        self.resume_ratio = resume_ratio

    def _checks(self, reading: LagReading, *, known_only: bool) -> list[tuple[str, int | None, int]]:
        """``(name, value, threshold)`` per checked reading; with ``known_only`` a consumer lag
        that misses a pipeline is None (a lower bound is enough to pause, not to resume)."""
        checks: list[tuple[str, int | None, int]] = []
        if self.max_wal is not None:
            checks.append(("wal_retained", reading.wal_retained_bytes, self.max_wal))
        if self.max_lag is not None:
            lag = reading.consumer_lag if reading.consumer_lag_known or not known_only else None
            checks.append(("consumer_lag", lag, self.max_lag))
        return checks

    def reasons(self, reading: LagReading) -> list[str]:
        """Names of the measured readings above their thresholds (``wal_retained``, ``consumer_lag``)."""
        return [
            name
            for name, value, limit in self._checks(reading, known_only=False)
            if value is not None and value > limit
        ]

    def unknown(self, reading: LagReading) -> list[str]:
        """Names of the checked readings that are not known (they keep a throttle pause in place)."""
        return [name for name, value, _ in self._checks(reading, known_only=True) if value is None]

    def decide(self, reading: LagReading, paused_by_throttle: bool, paused_by_user: bool = False) -> ThrottleAction:
        """The action for ``reading`` given the current pause state (a user's pause is left alone)."""
        if not paused_by_throttle:
            if not paused_by_user and self.reasons(reading):
                return ThrottleAction.PAUSE
            return ThrottleAction.NONE
        checks = self._checks(reading, known_only=True)
        if all(value is not None and value < limit * self.resume_ratio for _, value, limit in checks):
            return ThrottleAction.RESUME
        return ThrottleAction.NONE


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """Messages behind per ``(topic, partition)`` for one pipeline, and their ``total``.

    ``unknown`` says why the lag is not known (e.g. :data:`UNKNOWN_NO_OFFSETS`, or the target's
    error); the partitions are then counted from the low watermarks (or empty when the target
    could not be read), which is no measure of how far the pipeline is behind.
    """

    pipeline: str
    partitions: dict[tuple[str, int], int]
    unknown: str | None = None

    @property
    def total(self) -> int:
        """Sum over partitions."""
        return sum(self.partitions.values())

    def by_topic(self) -> dict[str, int]:
        """Sum per topic."""
        out: dict[str, int] = {}
        for (topic, _), lag in self.partitions.items():
            out[topic] = out.get(topic, 0) + lag
        return out


def lag_per_partition(
    watermarks: Mapping[tuple[str, int], tuple[int, int]], stored: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """``high - max(stored, low)`` per partition, never negative (pure)."""
    return {tp: max(0, high - max(stored.get(tp, low), low)) for tp, (low, high) in watermarks.items()}


def worst_consumer_lag(lags: Sequence[ConsumerLag]) -> tuple[int | None, tuple[str, ...]]:
    """``(worst known total, pipelines whose lag is unknown)``; the total is None when no
    pipeline's lag is known (no pipelines at all included): unknown, never 0."""
    known = [lag.total for lag in lags if lag.unknown is None]
    return (max(known) if known else None), tuple(lag.pipeline for lag in lags if lag.unknown is not None)


class LagProbe(Protocol):
    """What :func:`lag_reader` reads consumer lag from (:class:`~pipeline.control.snapshot.kafka.ConsumerLagProbe`)."""

    def survey(self) -> list[ConsumerLag]:
        """Every pipeline's lag; one whose target cannot be read has ``unknown`` set. Raises when
        Kafka cannot be read."""


class LagSource(Protocol):
    """Where throttling reads lag from (tests pass a fake)."""

    def __call__(self) -> LagReading: ...


def lag_reader(source_name: str, wal: Callable[[], int | None] | None, probe: LagProbe | None) -> LagSource:
    """A :class:`LagSource`: ``wal()`` (the slot's retained WAL in bytes, None when not measured;
    it logs its own failures) and the worst pipeline's consumer lag from ``probe``. A probe
    failure, a pipeline it could not measure, or no pipeline at all leaves the consumer lag
    unknown (None or listed in ``unmeasured``, logged), never zero."""

    def read() -> LagReading:
        wal_bytes = wal() if wal is not None else None
        if probe is None:
            return LagReading(wal_bytes)
        try:
            lags = probe.survey()
        except Exception as exc:  # Kafka failures: the reading is unknown, never "zero"
            log.warning("consumer lag unknown", source=source_name, error=str(exc)[:300])
            return LagReading(wal_bytes)
        worst, unmeasured = worst_consumer_lag(lags)
        if worst is None or unmeasured:
            reasons = {lag.pipeline: lag.unknown for lag in lags if lag.unknown is not None}
            log.warning(
                "consumer lag unknown",
                source=source_name,
                pipelines=reasons or "no pipeline of the source measured",
                worst_known=worst,
            )
        return LagReading(wal_bytes, worst, unmeasured)

    return read
