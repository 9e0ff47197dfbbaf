"""ctid chunk planning: a table split into page ranges of about ``chunk_rows`` rows each, so
several sessions can copy one large table at once. Each range is read with
``ctid >= '(first,0)' AND ctid < '(end,0)'``, a TID Range Scan (PostgreSQL 14+, "TID Range
Scan" in the planner docs) that reads only those heap pages. The last range is open-ended, so
rows on pages added after planning are still copied. Pure functions."""

from __future__ import annotations

import math

from pipeline.control.bulkload.model import Chunk


def plan_chunks(pages: int, estimated_rows: int, chunk_rows: int) -> tuple[Chunk, ...]:
    """The chunks of a table of ``pages`` heap pages holding about ``estimated_rows`` rows:
    ``ceil(estimated_rows / chunk_rows)`` ranges of equal page counts (at least one; never more
    than one per page), covering page 0 to the end of the table without gaps or overlaps.
    Raises ValueError when ``chunk_rows`` < 1 or a count is negative."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    if pages < 0 or estimated_rows < 0:
        raise ValueError("pages and estimated_rows must not be negative")
    count = max(1, min(math.ceil(estimated_rows / chunk_rows), pages))
    if count == 1:
        return (Chunk(0, 0, None),)
    step = math.ceil(pages / count)
    bounds = list(range(0, pages, step))
    return tuple(Chunk(i, first, bounds[i + 1] if i + 1 < len(bounds) else None) for i, first in enumerate(bounds))
