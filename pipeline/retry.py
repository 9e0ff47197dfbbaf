"""Exponential backoff with full jitter, bounded by a total time budget.

The policy only computes delays; the runner decides how to wait (it keeps serving the Kafka
consumer while it waits). See AWS Architecture Blog, "Exponential Backoff And Jitter".
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


class RetryBudgetExceededError(Exception):
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
        cap = min(self.max_s, self.initial_s * (2 ** (self.attempts - 1)))
        delay = self.rng.uniform(0, cap)
        if hint_s is not None:
            delay = max(delay, hint_s)
        return min(delay, self.max_elapsed_s - elapsed)

    def reset(self) -> None:
        """Forget past failures (after a success)."""
        self.attempts = 0
