"""The fast path of one chunk: source ``COPY (SELECT ...) TO STDOUT`` streamed as bytes into
the target's ``COPY ... FROM STDIN`` (:meth:`sinks.base.TargetBulkLoad.copy_in`), one target
transaction per chunk. The bytes are never parsed here: PostgreSQL's COPY formats are the same
on both ends ("COPY", "File Formats"), binary when every column type matches."""

from __future__ import annotations

from typing import Any

import psycopg

from pipeline.control.bulkload.model import CopyTask
from pipeline.control.bulkload.sqlplan import FastPlan, copy_in_columns, copy_out_sql, hmac_settings
from sinks.base import PreparedTable, TargetBulkLoad

FLUSH_BYTES = 1 << 20
"""Bytes gathered from the source before one write to the target (fewer, larger COPY messages)."""


def copy_chunk_fast(
    task: CopyTask,
    plan: FastPlan,
    prepared: PreparedTable,
    binary: bool,
    source_conn: psycopg.Connection[Any],
    bulk: TargetBulkLoad,
    salt: bytes | None,
) -> int:
    """Copy ``task``'s chunk by ``plan`` into ``prepared`` (binary or text COPY); rows copied
    (the source COPY's row count). ``source_conn`` is in the job's snapshot transaction; the
    HMAC pads of ``salt`` are set in it first when the plan hashes. Raises psycopg errors of
    the source and TransientSinkError/psycopg errors of the target (the chunk's target
    transaction is then rolled back)."""
    if plan.hashes:
        assert salt is not None
        statement, params = hmac_settings(salt)
        source_conn.execute(statement, params)
    cursor = source_conn.cursor()
    out_sql = copy_out_sql(plan, prepared, task.chunk, task.snapshot, binary)
    with bulk.copy_in(prepared.table, copy_in_columns(plan, prepared), binary) as writer:
        buffer = bytearray()
        with cursor.copy(out_sql) as out:
            for data in out:
                buffer += data
                if len(buffer) >= FLUSH_BYTES:
                    writer.write(bytes(buffer))
                    buffer.clear()
        if buffer:
            writer.write(bytes(buffer))
    return max(cursor.rowcount, 0)
