"""Exponential backoff with full jitter, bounded by a total time budget.

The policy only computes delays; the runner decides how to wait (it keeps serving the Kafka
consumer while it waits). See AWS Architecture Blog, "Exponential Backoff And Jitter".
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from pipeline.core.errors import FatalError


def exponential_cap(initial_s: float, max_s: float, n: int) -> float:
    """``min(max_s, initial_s * 2**n)`` seconds, for any ``n >= 0`` without float overflow.

    A naive ``initial_s * 2**n`` raises OverflowError once ``n`` passes about 1,020 (the
    int no longer converts to a float); a retry loop with short sleeps and a long budget
    gets there. The exponent is clamped where the cap has long since reached ``max_s``.
    """
    if initial_s <= 0 or n < 0:
        return max(0.0, min(max_s, initial_s))
    return min(max_s, math.ldexp(initial_s, min(n, 512)))


class RetryBudgetExceededError(FatalError):
    """Retries went on longer than ``max_elapsed_s``; the worker must stop without committing."""


@dataclass
class Backoff:
    """Delays for attempts 1, 2, ...: ``uniform(0, min(max_s, initial_s * 2**(n-1)))``, seconds.

    ``next_delay()`` raises RetryBudgetExceededError once ``max_elapsed_s`` have passed since
    the first failure.
    """

    initial_s: float
    max_s: float
    max_elapsed_s: float
    attempts: int = 0
    started: float = field(default=0.0)
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, hint_s: float | None = None) -> float:
        """Seconds to wait before the next attempt (at least ``hint_s`` when given)."""
        now = time.monotonic()
        if self.attempts == 0:
            self.started = now
        self.attempts += 1
        elapsed = now - self.started
        if elapsed >= self.max_elapsed_s:
            raise RetryBudgetExceededError(
                f"gave up after {self.attempts - 1} retries over {elapsed:.0f}s (retry.max_elapsed_s)"
            )
        cap = exponential_cap(self.initial_s, self.max_s, self.attempts - 1)
        delay = self.rng.uniform(0, cap)
        if hint_s is not None:
            delay = max(delay, hint_s)
        return min(delay, self.max_elapsed_s - elapsed)

    def reset(self) -> None:
        """Forget past failures (after a success)."""
        self.attempts = 0
