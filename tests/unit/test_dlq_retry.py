"""DLQ limits and backoff policy."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.retry import Backoff, RetryBudgetExceededError, exponential_cap
from pipeline.dataplane.dlq import DeadLetter, DlqLimiter, DlqLimitExceededError


def test_consecutive_limit_stops() -> None:
    limiter = DlqLimiter(max_consecutive=3, max_ratio=1.0, window=100)
    limiter.observe(True)
    limiter.observe(True)
    limiter.observe(False)  # resets the run
    limiter.observe(True)
    limiter.observe(True)
    with pytest.raises(DlqLimitExceededError, match="3 consecutive"):
        limiter.observe(True)


def test_ratio_limit_needs_a_full_window() -> None:
    limiter = DlqLimiter(max_consecutive=1000, max_ratio=0.5, window=10)
    for dead in [True, False] * 4 + [True]:
        limiter.observe(dead)  # 9 messages: window not full yet
    with pytest.raises(DlqLimitExceededError, match="60% of the last 10"):
        limiter.observe(True)


def test_dead_letter_headers_carry_origin_and_reason() -> None:
    letter = DeadLetter("app.public.t", 3, 42, b"k", b"v", 1700, "PoisonMessageError", "not JSON")
    headers = dict(letter.headers("p1"))
    assert headers["cdc.original.topic"] == b"app.public.t"
    assert headers["cdc.original.partition"] == b"3"
    assert headers["cdc.original.offset"] == b"42"
    assert headers["cdc.error.reason"] == b"not JSON"
    assert headers["cdc.pipeline"] == b"p1"


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(initial_s=1, max_s=4, max_elapsed_s=1e9, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    assert all(0 <= d <= 4 for d in delays)
    assert max(delays[4:]) > 1  # later caps are larger than the first attempt's
    assert b.next_delay(hint_s=3.5) >= 3.5


def test_backoff_survives_thousands_of_attempts() -> None:
    # A registry or sink outage with short sleeps and a long budget: attempt 1,025 used to
    # raise OverflowError (0.01 * 2**1024 does not convert to a float) instead of a delay.
    b = Backoff(initial_s=0.01, max_s=0.02, max_elapsed_s=1e9, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(5000)]
    assert b.attempts == 5000
    assert all(0 <= d <= 0.02 for d in delays)


@given(st.floats(1e-6, 60), st.floats(1e-6, 3600), st.integers(0, 10**6))
def test_exponential_cap_is_min_of_max_and_doubling(initial: float, max_s: float, n: int) -> None:
    cap = exponential_cap(initial, max_s, n)
    assert cap <= max_s
    if n < 64:
        assert cap == min(max_s, initial * 2**n)
    else:  # 1e-6 * 2**64 is far above any max_s drawn here
        assert cap == max_s


def test_backoff_budget() -> None:
    b = Backoff(initial_s=0.01, max_s=0.01, max_elapsed_s=0.0)
    b.next_delay  # noqa: B018 - attribute exists
    with pytest.raises(RetryBudgetExceededError):
        b.next_delay()


@given(st.lists(st.booleans(), max_size=300), st.integers(10, 40))
def test_limiter_running_count_matches_a_recount(outcomes: list[bool], window: int) -> None:
    limiter = DlqLimiter(max_consecutive=10_000, max_ratio=1.0, window=window)
    for dead in outcomes:
        limiter.observe(dead)
        assert limiter._dead_in_window == sum(limiter._recent)
