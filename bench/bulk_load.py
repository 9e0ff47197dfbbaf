"""Bulk initial load throughput: ``run_bulk_load`` rows/s against the raw COPY pipe of the same rows.

Against a running local stack (default: the developer stack of ``cdc-pipeline local up``):

1. creates a fresh database on the source and the target clusters and fills the source with
   ``pgbench -i -s SCALE`` (scale 10 = 1,000,000 ``pgbench_accounts`` rows), ``pgbench_history``
   set to ``REPLICA IDENTITY FULL`` like the demo;
2. the ceiling: the raw pipe ``COPY (SELECT *, 0::bigint, 0::bigint FROM ONLY t) TO STDOUT (FORMAT
   binary)`` on the source streamed by psycopg into ``COPY raw.t FROM STDIN (FORMAT binary)`` on the
   target, into tables of the same shape and primary keys plus the two version columns the bulk
   load writes too; once with one stream and once with ``--jobs`` streams (``pgbench_accounts``
   split in ctid ranges, the small tables on their own), tables truncated in between;
3. the product: ``run_bulk_load`` (``pipeline.control.bulkload.run``) of a configuration with
   ``initial_load: bulk`` and ``bulk_load.jobs = --jobs`` into the same target database (the
   connector is not registered: ``register`` does nothing, the slot is dropped afterwards);
4. prints rows, seconds and rows/s of each, the bulk load as a share of the raw pipe at the same
   parallelism, this process's CPU seconds per phase (the loader and the pipe run in-process; the
   servers' CPU is not counted), and the machine's load average before and after;
5. drops the databases and the slot (``--keep`` keeps them).

    .venv/bin/python bench/bulk_load.py                      # scale 10, 4 jobs
    .venv/bin/python bench/bulk_load.py --scale 2 --jobs 2 --state-dir .local-stack-test

Exit status: 0 when every target table has the source's row count, 1 when not, 2 when the stack
is unreachable. The goal of issue 17 (bulk >= 50% of the raw pipe) is printed, not asserted.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from pipeline.control.bulkload.catalog import read_source_table
from pipeline.control.bulkload.model import Chunk, CopyTask, ExportedSnapshot
from pipeline.control.bulkload.rows import copy_chunk_rows
from pipeline.control.bulkload.run import run_bulk_load
from pipeline.core.events import TableId
from pipeline.core.settings.loading import load_settings
from pipeline.localstack import LocalStackSettings, settings_for
from pipeline.localstack.services import pg_bindir
from pipeline.transform.transformer import build_transformer
from sinks.factory import make_sink

REPO = Path(__file__).resolve().parents[1]
TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
RAW_DDL = [
    "CREATE SCHEMA raw",
    "CREATE TABLE raw.pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84),"
    " __cdc_commit_lsn bigint, __cdc_lsn bigint)",
    "CREATE TABLE raw.pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88),"
    " __cdc_commit_lsn bigint, __cdc_lsn bigint)",
    "CREATE TABLE raw.pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84),"
    " __cdc_commit_lsn bigint, __cdc_lsn bigint)",
    "CREATE TABLE raw.pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22),"
    " __cdc_commit_lsn bigint, __cdc_lsn bigint, __cdc_row_id text PRIMARY KEY)",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--scale", type=int, default=10, help="pgbench scale (100,000 accounts each; default 10)")
    p.add_argument("--jobs", type=int, default=4, help="parallel copy sessions of both (default 4)")
    p.add_argument("--state-dir", type=Path, default=None, help="local stack state folder (default .local-stack)")
    p.add_argument(
        "--rows-path", action="store_true", help="also time the rows path (copy_chunk_rows, one job) into PostgreSQL"
    )
    p.add_argument("--raw-only", action="store_true", help="measure the raw pipe only (no bulk load)")
    p.add_argument("--keep", action="store_true", help="keep the databases (debugging)")
    return p.parse_args(argv)


def cpu_s() -> float:
    """User + system CPU seconds of this process (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pipe(src: str, tgt: str, select: sql.Composed, copy_in: sql.Composed) -> None:
    """One raw COPY stream source -> target (binary), one target transaction."""
    with (
        psycopg.connect(src) as s,
        psycopg.connect(tgt) as t,
        s.cursor().copy(select) as out,
        t.cursor().copy(copy_in) as inp,
    ):
        for block in out:
            inp.write(block)


def _streams(stack: LocalStackSettings, db: str, jobs: int) -> list[tuple[sql.Composed, sql.Composed]]:
    """(COPY out, COPY in) per stream: accounts in ``jobs`` ctid ranges (or whole), the rest whole."""
    with psycopg.connect(stack.pg_dsn("source", db)) as conn:
        row = conn.execute(
            "SELECT pg_relation_size('pgbench_accounts') / current_setting('block_size')::int"
        ).fetchone()
    pages = int(row[0]) if row else 0
    out: list[tuple[sql.Composed, sql.Composed]] = []
    for table in TABLES:
        extra = sql.SQL(", 'r:raw:' || ctid::text") if table == "pgbench_history" else sql.SQL("")
        ranges: list[tuple[int, int | None]] = [(0, None)]
        if table == "pgbench_accounts" and jobs > 1:
            step = pages // jobs + 1
            ranges = [(i * step, (i + 1) * step if i < jobs - 1 else None) for i in range(jobs)]
        for first, end in ranges:
            where = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({first},0)"))
            if end is not None:
                where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({end},0)"))
            select = sql.SQL("COPY (SELECT *, 0::bigint, 0::bigint{} FROM ONLY {} WHERE {}) TO STDOUT (FORMAT binary)")
            out.append(
                (
                    select.format(extra, sql.Identifier(table), where),
                    sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(sql.Identifier("raw", table)),
                )
            )
    return out


def timed(work: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of ``work()``."""
    t0, c0 = time.monotonic(), cpu_s()
    result = work()
    return time.monotonic() - t0, cpu_s() - c0, result


def raw_pipe(stack: LocalStackSettings, db: str, jobs: int) -> None:
    """Every stream on a pool of ``jobs`` threads (one stream at a time per thread)."""
    streams = _streams(stack, db, jobs)
    src, tgt = stack.pg_dsn("source", db), stack.pg_dsn("target", db)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not streams:
                    return
                select, copy_in = streams.pop(0)
            try:
                pipe(src, tgt, select, copy_in)
            except BaseException as exc:  # reported after the join
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def counts(dsn: str, schema: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            t: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, t))).fetchone()[0])  # type: ignore[index]
            for t in TABLES
        }


def config(stack: LocalStackSettings, db: str, jobs: int, folder: Path) -> Path:
    doc = {
        "kafka": {"bootstrap_servers": stack.bootstrap_servers},
        "connect": {"url": stack.connect_url},
        "sources": [
            {
                "name": db,
                "host": stack.host,
                "port": stack.source_pg_port,
                "database": db,
                "user": "postgres",
                "password": "postgres",
                "tables": [f"public.{t}" for t in TABLES],
                "initial_load": "bulk",
                "bulk_load": {"jobs": jobs},
            }
        ],
        "pipelines": [
            {
                "name": db,
                "source": db,
                "target": {
                    "url": f"postgresql://postgres@{stack.host}:{stack.target_pg_port}/{db}",
                    "password": "postgres",
                    "schema": "public",
                    "control_schema": "cdc_control",
                },
            }
        ],
        "metrics": {"enabled": False},
    }
    path = folder / "bulk.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def rows_path(stack: LocalStackSettings, db: str, settings: Any) -> int:
    """``copy_chunk_rows`` of the whole ``pgbench_accounts`` into schema ``rowspath`` of the target
    (one chunk, one job, a REPEATABLE READ transaction, the pipeline's sink): the rows path alone."""
    base = settings.pipelines[0]
    pipeline = base.model_copy(update={"target": base.target.model_copy(update={"schema_name": "rowspath"})})
    sink = make_sink(pipeline)
    with psycopg.connect(stack.pg_dsn("source", db)) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        table = read_source_table(conn, TableId("public", "pgbench_accounts")).table
        task = CopyTask(pipeline, table, Chunk(0, 0, None), ExportedSnapshot("bench", 1, ""))
        transformer = build_transformer(pipeline.transforms, pipeline.mask_salt)
        written: int = copy_chunk_rows(task, conn, sink, transformer, lambda n: None)
    sink.close()
    return written


def setup(stack: LocalStackSettings, db: str, scale: int) -> None:
    for role in ("source", "target"):
        with psycopg.connect(stack.pg_dsn(role), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    env = {**os.environ, "PGPASSWORD": "postgres"}
    argv = [str(pg_bindir() / "pgbench"), "-h", stack.host, "-p", str(stack.source_pg_port), "-U", "postgres"]
    subprocess.run([*argv, "-i", "-s", str(scale), "-q", db], env=env, check=True, capture_output=True)
    with psycopg.connect(stack.pg_dsn("source", db), autocommit=True) as conn:
        conn.execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
        conn.execute("VACUUM ANALYZE")
    with psycopg.connect(stack.pg_dsn("target", db), autocommit=True) as conn:
        for statement in RAW_DDL:
            conn.execute(statement)


def cleanup(stack: LocalStackSettings, db: str) -> None:
    with psycopg.connect(stack.pg_dsn("source"), autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (db,)).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    for role in ("source", "target"):
        with psycopg.connect(stack.pg_dsn(role), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = settings_for(args.state_dir if args.state_dir is not None else REPO / ".local-stack")
    try:
        psycopg.connect(stack.pg_dsn("source"), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        print(f"the local stack is not reachable: {exc}", file=sys.stderr)
        return 2

    db = f"bulkbench_{uuid.uuid4().hex[:8]}"
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}; scale {args.scale}, jobs {args.jobs}")
    print(f"load average before: {load_avg()}")
    try:
        setup(stack, db, args.scale)
        source_rows = counts(stack.pg_dsn("source", db), "public")
        total = sum(source_rows.values())
        figures: dict[str, tuple[float, float]] = {}
        for streams in sorted({1, args.jobs}):
            wall, cpu, _ = timed(functools.partial(raw_pipe, stack, db, streams))
            assert counts(stack.pg_dsn("target", db), "raw") == source_rows, "raw pipe lost rows"
            figures[f"raw pipe, {streams} stream(s)"] = (wall, cpu)
            with psycopg.connect(stack.pg_dsn("target", db), autocommit=True) as conn:
                conn.execute("TRUNCATE " + ", ".join(f"raw.{t}" for t in TABLES))
        if args.raw_only:
            print(f"rows: {total:,}")
            for name, (seconds, cpu_seconds) in figures.items():
                print(f"{name:28s} {seconds:7.2f} s  {total / seconds:10,.0f} rows/s  CPU {cpu_seconds:6.2f} s")
            print(f"load average after: {load_avg()}")
            return 0
        settings = load_settings(config(stack, db, args.jobs, Path(tempfile.mkdtemp(prefix="bulk-bench-"))), {})
        wall, cpu, report = timed(
            lambda: run_bulk_load(settings, settings.sources[0], jobs=args.jobs, register=lambda: None)
        )
        figures[f"bulk load, {args.jobs} job(s)"] = (report.copy_seconds, cpu)
        loaded = counts(stack.pg_dsn("target", db), "public")
        print(f"rows: {total:,} ({', '.join(f'{t} {n:,}' for t, n in source_rows.items())})")
        for name, (seconds, cpu_seconds) in figures.items():
            print(f"{name:28s} {seconds:7.2f} s  {total / seconds:10,.0f} rows/s  CPU {cpu_seconds:6.2f} s")
        print(f"bulk load wall time incl. slot, planning and DDL: {wall:.2f} s")
        raw = figures[f"raw pipe, {args.jobs} stream(s)"][0]
        best = min(v[0] for k, v in figures.items() if k.startswith("raw"))
        print(f"bulk / raw pipe at {args.jobs} stream(s): {raw / report.copy_seconds:.0%} (goal >= 50%)")
        print(f"bulk / fastest raw pipe: {best / report.copy_seconds:.0%}")
        for t in report.tables:
            print(f"  {t.table}: {t.rows:,} rows in {t.seconds:.2f} s by the {t.path} path")
        if args.rows_path:
            seconds, cpu_seconds, rows = timed(functools.partial(rows_path, stack, db, settings))
            print(
                f"{'rows path, 1 job':28s} {seconds:7.2f} s  {rows / seconds:10,.0f} rows/s  CPU {cpu_seconds:6.2f} s"
            )
        print(f"load average after: {load_avg()}")
        if loaded != source_rows:
            print(f"target rows {loaded} != source rows {source_rows}", file=sys.stderr)
            return 1
        return 0
    finally:
        if not args.keep:
            cleanup(stack, db)


if __name__ == "__main__":
    sys.exit(main())
