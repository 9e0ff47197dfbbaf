"""Comparison of one planned table: per-chunk (keyed) or per-bucket (keyless) checksums of both
sides; the chunks that differ are rechecked row by row (:mod:`pipeline.control.verify.rounds`),
then :func:`settle` gives each table its final status."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pipeline.control.verify.model import CatchUp, ChunkDiff, Status, TableResult
from pipeline.control.verify.plan import TablePlan
from pipeline.control.verify.source import chunk_bounds
from sinks.base import Checksum, ChecksumSide

MAX_BUCKETS = 65536
EMPTY: Checksum = (0, None)


@dataclass
class Pending:
    """A differing chunk still to be rechecked, with the sides it was computed on."""

    result: TableResult
    plan: TablePlan
    diff: ChunkDiff
    source: ChecksumSide
    target: ChecksumSide


def bucket_count(rows: int, chunk_size: int) -> int:
    """Buckets for a keyless table of ``rows`` rows: about ``chunk_size`` rows each, at least 1,
    at most :data:`MAX_BUCKETS` (pure)."""
    return max(1, min(MAX_BUCKETS, math.ceil(rows / max(1, chunk_size))))


def compare_keyed(
    sconn: psycopg.Connection[Any],
    src: ChecksumSide,
    tgt: ChecksumSide,
    plan: TablePlan,
    chunk_size: int,
    result: TableResult,
) -> list[ChunkDiff]:
    """Checksum every key range of ``chunk_size`` source rows on both sides; adds the row
    counts and chunk count to ``result``; returns the differing chunks."""
    diffs: list[ChunkDiff] = []
    ranges = chunk_bounds(sconn, plan.checks, chunk_size)
    for index, key_range in enumerate(ranges, start=1):
        s, t = src.chunk(key_range), tgt.chunk(key_range)
        result.rows_source += s[0]
        result.rows_target += t[0]
        if s != t:
            diffs.append(ChunkDiff(index, key_range, s, t))
    result.chunks = len(ranges)
    return diffs


def compare_keyless(src: ChecksumSide, tgt: ChecksumSide, chunk_size: int, result: TableResult) -> list[ChunkDiff]:
    """Checksum hash buckets of about ``chunk_size`` rows on both sides (sorted multisets, so
    duplicated or missing copies of a row show); returns the differing buckets."""
    buckets = bucket_count(src.count(), chunk_size)
    s, t = src.buckets(buckets), tgt.buckets(buckets)
    result.rows_source = sum(c[0] for c in s.values())
    result.rows_target = sum(c[0] for c in t.values())
    result.chunks = buckets
    return [
        ChunkDiff(b + 1, (None, None), s.get(b, EMPTY), t.get(b, EMPTY), bucket=b, buckets=buckets)
        for b in range(buckets)
        if s.get(b, EMPTY) != t.get(b, EMPTY)
    ]


def recount_settled(pending: Sequence[Pending]) -> None:
    """Re-count the differing chunks that settled key by key (neither mismatched nor in flight
    after the rounds) and move their tables' row counts to the new figures: the first pass counted
    them while changes were still being applied, so a MATCH would otherwise report, e.g., 580
    source rows against 577 target rows. Raises psycopg.Error / TransientSinkError."""
    bucketed: dict[tuple[int, int], dict[int, Checksum]] = {}  # one bucket scan per side

    def bucket(side: ChecksumSide, buckets: int, index: int) -> Checksum:
        if (id(side), buckets) not in bucketed:
            bucketed[(id(side), buckets)] = side.buckets(buckets)
        return bucketed[(id(side), buckets)].get(index, EMPTY)

    for item in pending:
        listed = {c.index for c in (*item.result.mismatched, *item.result.in_flight)}
        if item.diff.index in listed:
            continue
        if item.diff.bucket is None:
            s, t = item.source.chunk(item.diff.key_range), item.target.chunk(item.diff.key_range)
        else:
            buckets = item.diff.buckets or 1
            s = bucket(item.source, buckets, item.diff.bucket)
            t = bucket(item.target, buckets, item.diff.bucket)
        item.result.rows_source += s[0] - item.diff.source[0]
        item.result.rows_target += t[0] - item.diff.target[0]


def settle(results: Sequence[TableResult], last: CatchUp, topics: dict[Any, str]) -> None:
    """Final status per table (mismatch, in flight) and the messages still pending per table."""
    for result in results:
        result.pending_messages = last.pending.get(topics.get(result.table, ""), 0)
        if result.status is not Status.MATCH:
            continue
        if result.mismatched:
            result.status = Status.MISMATCH
        elif result.in_flight:
            result.status = Status.IN_FLIGHT
            rows = sum(c.differing_rows for c in result.in_flight)
            result.reason = f"{rows} row(s) still changing or not applied yet: " + (
                last.detail or "differences did not settle"
            )
        result.mismatched.sort(key=lambda c: c.index)
        result.in_flight.sort(key=lambda c: c.index)
