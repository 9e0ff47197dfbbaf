"""The drain after the fence, measured by position, never by a fixed wait: a heartbeat written
on the source after the fence commits after every fenced write, and Debezium emits changes in
commit order, so once the target shows it every earlier change is in Kafka; the change topics'
high watermarks read THEN are the last positions to apply, and the drain ends when the offsets
the pipeline stored in the target (design invariant 1) reach them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pipeline.control.snapshot.lag import lag_per_partition

Marks = Mapping[tuple[str, int], tuple[int, int]]


class DrainTimeoutError(RuntimeError):
    """The drain did not reach the fence within ``cutover.drain_timeout_s``; the message says
    which half (heartbeat or offsets) and what is still pending."""


@dataclass
class DrainResult:
    """What the drain saw: the heartbeat written after the fence (ISO), seconds until it was
    applied, the watermarks drained to (``topic[partition]`` -> high) and the total seconds."""

    heartbeat: str
    heartbeat_s: float
    offsets_s: float
    marks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def pending(marks: Marks, stored: Mapping[tuple[str, int], int]) -> dict[str, int]:
    """Messages below the high watermarks of ``marks`` not yet applied, per ``topic[partition]``
    (only counts > 0; pure)."""
    return {f"{t}[{p}]": lag for (t, p), lag in lag_per_partition(marks, stored).items() if lag > 0}


def drain(
    write: Callable[[], datetime],
    read: Callable[[], datetime | None],
    watermarks: Callable[[], Marks],
    stored: Callable[[], Mapping[tuple[str, int], int]],
    timeout_s: float,
    poll_s: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DrainResult:
    """Drain (see the module docstring) within ``timeout_s`` seconds: ``write()`` the heartbeat,
    poll ``read()`` until it shows, then take ``watermarks()`` once and poll ``stored()`` until
    nothing below them is pending. Raises DrainTimeoutError, or what the callables raise."""
    start = clock()
    deadline = start + timeout_s
    written = write()
    while True:
        seen = read()
        if seen is not None and seen >= written:
            break
        if clock() >= deadline:
            raise DrainTimeoutError(
                f"drain: the heartbeat written after the fence ({written.isoformat()}) was not applied"
                f" within {timeout_s:g} s (is the pipeline running?)"
            )
        sleep(poll_s)
    seen_at = clock()
    marks = watermarks()
    while True:
        left = pending(marks, stored())
        if not left:
            break
        if clock() >= deadline:
            raise DrainTimeoutError(
                f"drain: {sum(left.values())} message(s) not applied within {timeout_s:g} s ({', '.join(sorted(left))})"
            )
        sleep(poll_s)
    done = clock()
    return DrainResult(
        written.isoformat(), seen_at - start, done - seen_at, {f"{t}[{p}]": high for (t, p), (_, high) in marks.items()}
    )
