"""The recheck rounds after the first comparison: narrow every differing chunk (bucket) to its
rows, then rounds of catch-up + target read + source read shared by all tables, then one locked
round per table for keys that kept changing; finally each table's mismatched and in-flight
chunks with their rows (docs/design-notes.md, "Verification that concludes under load")."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog

from pipeline.control.verify.compare import Pending
from pipeline.control.verify.converge import CONFIRMATIONS, KeyedCheck
from pipeline.control.verify.model import CatchUp, TableResult, VerifySettings
from pipeline.control.verify.multiset import BucketCheck
from pipeline.control.verify.source import lock_rows
from sinks.base import ChecksumPlan, KeyBound

log = structlog.get_logger(__name__)

CatchUpFn = Callable[[float], CatchUp]
"""A catch-up bounded by the given seconds (:func:`pipeline.control.verify.catchup.wait_caught_up`)."""

LOCK_TIMEOUT_S = 3.0
"""``lock_timeout`` of the share lock on hot rows: a writer holding one longer makes us give up."""

LOCK_ATTEMPTS = 3
"""Locked rounds tried when a lock is not granted or the target does not catch up in time."""


def _open(check: KeyedCheck | BucketCheck) -> bool:
    return bool(check.open_keys() if isinstance(check, KeyedCheck) else check.open_texts())


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _open_rows(checks: Sequence[tuple[TableResult, KeyedCheck | BucketCheck]]) -> int:
    return sum(len(c.open_keys() if isinstance(c, KeyedCheck) else c.open_texts()) for _, c in checks)


def build_checks(pending: Sequence[Pending]) -> list[tuple[TableResult, KeyedCheck | BucketCheck]]:
    """One :class:`KeyedCheck` per differing keyed chunk, one :class:`BucketCheck` per keyless
    table with differing buckets; not yet narrowed."""
    out: list[tuple[TableResult, KeyedCheck | BucketCheck]] = []
    buckets: dict[int, tuple[TableResult, BucketCheck]] = {}
    for item in pending:
        diff = item.diff
        if diff.bucket is None or diff.buckets is None:
            out.append((item.result, KeyedCheck(item.plan.checks, diff, item.source, item.target)))
            continue
        key = id(item.result)
        if key not in buckets:
            buckets[key] = (item.result, BucketCheck(item.plan.checks, diff.buckets, {}, item.source, item.target))
            out.append(buckets[key])
        buckets[key][1].diffs[diff.bucket] = diff
    return out


def run_round(checks: Sequence[KeyedCheck | BucketCheck], catch: CatchUpFn, max_wait_s: float) -> CatchUp:
    """One round for every check with open rows: catch up (the previous source reads all ended
    before), read each target, then each source again, and judge."""
    last = catch(max_wait_s)
    for check in checks:
        if isinstance(check, KeyedCheck):
            check.judge(check.read_target(), last.caught_up)
        else:
            check.judge(check.read_target(), last.caught_up)
    return last


def choose_hot(checks: Sequence[KeyedCheck], max_keys: int) -> list[KeyedCheck]:
    """The checks whose open keys are locked together: whole chunks only (so every key judged as
    locked was locked), in order, while the total stays within ``max_keys`` (pure)."""
    chosen: list[KeyedCheck] = []
    total = 0
    for check in checks:
        n = len(check.open_keys())
        if n and total + n <= max_keys:
            chosen.append(check)
            total += n
    return chosen


def _lock(sconn: psycopg.Connection[Any], chosen: Sequence[KeyedCheck]) -> int:
    """Lock the open keys of ``chosen``, one table after the other, in the caller's transaction."""
    by_table: dict[ChecksumPlan, list[KeyBound]] = {}
    for check in chosen:
        by_table.setdefault(check.plan, []).extend(st.key for st in check.open_keys().values())
    return sum(lock_rows(sconn, plan, keys, LOCK_TIMEOUT_S) for plan, keys in by_table.items())


def locked_round(
    sconn: psycopg.Connection[Any], checks: Sequence[KeyedCheck], catch: CatchUpFn, cfg: VerifySettings
) -> CatchUp | None:
    """Share-lock the open keys of ``checks`` (one table's; :func:`choose_hot`, at most
    ``cfg.max_hot_keys``) on the source in one transaction, re-read them under the lock, catch up (at most
    ``cfg.hot_key_lock_s`` and ``cfg.max_wait_s``: writers of those rows wait that long at most), read the target,
    judge, release. None when nothing
    was chosen or a row could not be locked within ``LOCK_TIMEOUT_S`` (or a deadlock, or the source role
    lacks the privilege FOR SHARE needs)."""
    chosen = choose_hot(checks, cfg.max_hot_keys)
    if not chosen:
        return None
    keys = sum(len(c.open_keys()) for c in chosen)
    started = time.monotonic()
    try:
        with sconn.transaction():
            locked = _lock(sconn, chosen)
            for check in chosen:  # the images under the lock become the "before" reads
                open_keys = check.open_keys()
                images = check.read(check.src, open_keys)
                for text, state in open_keys.items():
                    state.source = images.get(text)
            last = catch(min(cfg.hot_key_lock_s, cfg.max_wait_s))
            for check in chosen:
                check.judge(check.read_target(), last.caught_up, locked=True)
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
        log.info("verify_lock_failed", keys=keys, error=type(exc).__name__)
        return None
    except psycopg.errors.InsufficientPrivilege:
        # FOR SHARE needs UPDATE (or DELETE/TRUNCATE...) privilege on the table (PostgreSQL "SELECT",
        # "The Locking Clause"); a SELECT-only source role leaves hot keys in flight instead of failing.
        log.warning("verify_lock_not_permitted", keys=keys, hint="grant UPDATE on the table to lock hot keys")
        return None
    log.info(
        "verify_hot_keys_locked",
        tables=sorted({str(c.plan.table) for c in chosen}),
        keys=keys,
        locked=locked,
        held_s=round(time.monotonic() - started, 3),
        caught_up=last.caught_up,
    )
    return last


def converge(
    pending: Sequence[Pending],
    catch: CatchUpFn,
    cfg: VerifySettings,
    first: CatchUp,
    sconn: psycopg.Connection[Any],
) -> CatchUp:
    """Narrow and recheck ``pending`` (see the module docstring); puts each table's mismatched
    and in-flight chunks (with rows) into its result. Returns the last catch-up outcome."""
    checks = build_checks(pending)
    started = time.monotonic()
    for _, check in checks:
        check.narrow()
    log.info("verify_narrowed", checks=len(checks), rows=_open_rows(checks), seconds=_since(started))
    last = first
    for number in range(1, max(cfg.recheck_attempts, CONFIRMATIONS) + 1):
        todo = [c for _, c in checks if _open(c)]
        if not todo:
            break
        started = time.monotonic()
        last = run_round(todo, catch, cfg.max_wait_s)
        log.info(
            "verify_round",
            round=number,
            open_rows=_open_rows(checks),
            caught_up=last.caught_up,
            waited_s=round(last.waited_s, 3),
            seconds=_since(started),
        )
    if cfg.hot_key_lock_s > 0 and last.caught_up:  # locking while the pipeline is behind only stalls writers
        last = _lock_hot(checks, sconn, catch, cfg, last)
    _settle(checks, cfg.max_reported_rows)
    return last


def _lock_hot(
    checks: Sequence[tuple[TableResult, KeyedCheck | BucketCheck]],
    sconn: psycopg.Connection[Any],
    catch: CatchUpFn,
    cfg: VerifySettings,
    last: CatchUp,
) -> CatchUp:
    by_table: dict[ChecksumPlan, list[KeyedCheck]] = {}
    for _, check in checks:
        if isinstance(check, KeyedCheck) and check.open_keys():
            by_table.setdefault(check.plan, []).append(check)
    for keyed in by_table.values():  # one table per transaction: no lock-order cycle with writers
        for _ in range(LOCK_ATTEMPTS):  # again when a lock was not granted or the wait ran out
            if not any(c.open_keys() for c in keyed):
                break
            got = locked_round(sconn, keyed, catch, cfg)
            if got is not None:
                last = got
    return last


def _settle(checks: Sequence[tuple[TableResult, KeyedCheck | BucketCheck]], limit: int) -> None:
    listed: dict[int, int] = {}
    for result, check in checks:
        left = max(0, limit - listed.get(id(result), 0))
        if isinstance(check, KeyedCheck):
            bad, still = check.outcome(left)
            mismatched = [bad] if bad is not None else []
            in_flight = [still] if still is not None else []
        else:
            mismatched, in_flight = check.outcomes(left)
        result.mismatched.extend(mismatched)
        result.in_flight.extend(in_flight)
        listed[id(result)] = listed.get(id(result), 0) + sum(len(c.rows) for c in [*mismatched, *in_flight])
