"""The pure model of replication-slot risk: WAL rate over a window, a slot's evaluated state, the
estimated time until PostgreSQL invalidates it, and heartbeat age. No I/O, so every rule about
``pg_replication_slots`` is unit-tested here; the PostgreSQL facts it rests on are collected in
``docs/design/monitor.md``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from pipeline.core.events import format_lsn

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
"""Values of ``pg_replication_slots.wal_status`` (PostgreSQL 13+)."""


@dataclass(frozen=True, slots=True)
class WalSample:
    """One WAL position ``lsn`` (bytes) observed at monotonic time ``at_s`` (seconds)."""

    at_s: float
    lsn: int


class WalRateWindow:
    """WAL generation rate, bytes/s, over a sliding window of ``window_s`` seconds.

    Samples older than the window are dropped, but the two newest are always kept so that a
    poll interval longer than the window still yields a rate. A position going backwards
    (another server behind the same address, e.g. after a failover) restarts the window.
    Raises ValueError when ``window_s`` is not positive.
    """

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._samples: deque[WalSample] = deque()

    @property
    def samples(self) -> tuple[WalSample, ...]:
        """The samples in the window, oldest first."""
        return tuple(self._samples)

    def add(self, at_s: float, lsn: int) -> None:
        """Record position ``lsn`` (bytes) at monotonic time ``at_s`` (seconds)."""
        if self._samples:
            last = self._samples[-1]
            if lsn < last.lsn or at_s < last.at_s:
                self._samples.clear()
            elif at_s == last.at_s:
                self._samples.pop()
        self._samples.append(WalSample(at_s, lsn))
        while len(self._samples) > 2 and self._samples[0].at_s < at_s - self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Bytes/s between the oldest and newest sample; None with fewer than two samples."""
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        elapsed = last.at_s - first.at_s
        if elapsed <= 0:
            return None
        return (last.lsn - first.lsn) / elapsed


@dataclass(frozen=True, slots=True)
class SlotRow:
    """One row of ``pg_replication_slots``; LSNs as byte positions (None where NULL)."""

    slot_name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None
    safe_wal_size: int | None
    inactive_since: datetime | None = None
    invalidation_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ServerSample:
    """What one poll reads from the source server.

    ``current_lsn`` is ``pg_current_wal_lsn()`` (bytes); ``server_now`` the server's ``now()``;
    ``max_slot_wal_keep_size_mb`` the setting in MB (-1: unlimited; None before PostgreSQL 13,
    which had no limit); ``slot`` None when the slot does not exist; ``slot_stats`` the
    ``pg_stat_replication_slots`` counters (None where unavailable).
    """

    current_lsn: int
    server_now: datetime
    max_slot_wal_keep_size_mb: int | None
    slot: SlotRow | None
    slot_stats: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class SlotReport:
    """The evaluated state of one slot.

    Sizes in bytes, rate in bytes/s, times in seconds. ``safe_wal_size_bytes`` is +inf when
    retention is unlimited, 0 once lost, None when unknown (no slot, or never reserved WAL).
    ``seconds_until_lost`` is +inf when unlimited or when no WAL is being written, 0 once
    lost, NaN when unknown (no rate yet, or no slot).
    """

    slot_name: str
    exists: bool
    active: bool
    wal_status: str | None
    retained_bytes: int | None
    behind_bytes: int | None
    safe_wal_size_bytes: float | None
    wal_rate_bytes_per_s: float | None
    seconds_until_lost: float
    unlimited: bool
    current_lsn: int
    inactive_since: datetime | None = None
    invalidation_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: +inf as the string ``"inf"``, NaN as None, times in ISO 8601."""
        out: dict[str, Any] = {key: _json_value(value) for key, value in asdict(self).items()}
        out["current_lsn"] = format_lsn(self.current_lsn)
        return out


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def seconds_until_lost(
    safe_wal_size: float | None, wal_rate: float | None, *, unlimited: bool, wal_status: str | None
) -> float:
    """Estimated seconds until the slot is lost: ``safe_wal_size`` (bytes) / ``wal_rate`` (bytes/s).

    0 when ``wal_status`` is ``lost`` or nothing is safe any more (``safe_wal_size <= 0``,
    possible for an ``unreserved`` slot); +inf when ``unlimited`` (``max_slot_wal_keep_size =
    -1``) or when no WAL is being generated (rate <= 0); NaN when unknown (no safe size, or
    no rate yet).
    """
    if wal_status == "lost":
        return 0.0
    if unlimited:
        return math.inf
    if safe_wal_size is None:
        return math.nan
    if safe_wal_size <= 0:
        return 0.0
    if math.isinf(safe_wal_size):
        return math.inf
    if wal_rate is None:
        return math.nan
    if wal_rate <= 0:
        return math.inf
    return safe_wal_size / wal_rate


def evaluate_slot(slot_name: str, sample: ServerSample, wal_rate: float | None) -> SlotReport:
    """Turn one :class:`ServerSample` and the current WAL rate (bytes/s) into a :class:`SlotReport`.

    Retained = current - ``restart_lsn``; behind = current - ``confirmed_flush_lsn`` (both
    clamped at 0, None where the LSN is NULL, e.g. a lost slot).
    """
    unlimited = sample.max_slot_wal_keep_size_mb is None or sample.max_slot_wal_keep_size_mb < 0
    row = sample.slot
    if row is None:
        return SlotReport(
            slot_name=slot_name,
            exists=False,
            active=False,
            wal_status=None,
            retained_bytes=None,
            behind_bytes=None,
            safe_wal_size_bytes=None,
            wal_rate_bytes_per_s=wal_rate,
            seconds_until_lost=math.nan,
            unlimited=unlimited,
            current_lsn=sample.current_lsn,
        )
    retained = None if row.restart_lsn is None else max(0, sample.current_lsn - row.restart_lsn)
    behind = None if row.confirmed_flush_lsn is None else max(0, sample.current_lsn - row.confirmed_flush_lsn)
    safe: float | None
    if row.wal_status == "lost":
        safe = 0.0
    elif unlimited:
        safe = math.inf
    elif row.safe_wal_size is None:
        safe = None
    else:
        safe = float(row.safe_wal_size)
    return SlotReport(
        slot_name=slot_name,
        exists=True,
        active=row.active,
        wal_status=row.wal_status,
        retained_bytes=retained,
        behind_bytes=behind,
        safe_wal_size_bytes=safe,
        wal_rate_bytes_per_s=wal_rate,
        seconds_until_lost=seconds_until_lost(safe, wal_rate, unlimited=unlimited, wal_status=row.wal_status),
        unlimited=unlimited,
        current_lsn=sample.current_lsn,
        inactive_since=row.inactive_since,
        invalidation_reason=row.invalidation_reason,
    )


def heartbeat_age_seconds(heartbeat_ts: datetime, now: datetime) -> float:
    """Seconds from ``heartbeat_ts`` (the heartbeat row's ``ts``, as applied in the target) to
    ``now`` (the source's ``now()``), never negative.

    Both must be timezone-aware; raises TypeError otherwise (Python refuses to subtract).
    """
    if heartbeat_ts.tzinfo is None or now.tzinfo is None:
        raise TypeError("heartbeat_age_seconds needs timezone-aware datetimes")
    return max(0.0, (now - heartbeat_ts).total_seconds())
