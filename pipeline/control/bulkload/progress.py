"""Progress of a bulk initial load, per (pipeline, target table): the ``cdc_bulk_load_*`` metrics and
what an operator watches - rows, rows/s, percent and ETA - as rich bars on a terminal or plain lines
elsewhere (logs, CI, pipes; colour off under NO_COLOR, as the Console given decides).

:class:`BulkProgress` implements :class:`pipeline.control.bulkload.model.LoadProgress`; the loader
calls it from its job threads, so every method takes one lock. Percent and ETA use the table's
estimated rows (``pg_class.reltuples``): the ratio stays below 1 until the table is done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.core import metrics

RUNNING_MAX_RATIO = 0.99
"""Largest progress ratio before a table is done (reltuples is an estimate)."""


@dataclass
class TableProgress:
    """One (pipeline, target table) of the load: ``estimated`` rows (>= 0), ``rows`` copied so far,
    monotonic ``started`` (first copied rows) and ``seconds`` (set once done)."""

    pipeline: str
    table: str
    estimated: int
    rows: int = 0
    started: float | None = None
    seconds: float | None = None

    @property
    def done(self) -> bool:
        """True once the table was copied."""
        return self.seconds is not None

    def ratio(self) -> float:
        """Rows copied / estimated rows (at most :data:`RUNNING_MAX_RATIO` before done; 1 once done)."""
        if self.done:
            return 1.0
        return min(RUNNING_MAX_RATIO, self.rows / self.estimated) if self.estimated > 0 else 0.0

    def rate(self, now: float) -> float:
        """Rows per second since the first copied rows (0 before)."""
        if self.done and self.seconds:
            return self.rows / self.seconds
        elapsed = now - self.started if self.started is not None else 0.0
        return self.rows / elapsed if elapsed > 0 else 0.0

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the current rate (None when unknown; 0 once done)."""
        if self.done:
            return 0.0
        rate = self.rate(now)
        if rate <= 0 or self.estimated <= 0:
            return None
        return max(0.0, (self.estimated - self.rows) / rate)


def fmt_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plain_line(t: TableProgress, now: float) -> str:
    """``load <pipeline> <table>: 120,000/1,000,000 rows (12%), 95,000 rows/s, ETA 0:09`` (rate and ETA
    from the second report on), or ``load <pipeline> <table>: done, N rows in X.Xs (Y rows/s)``."""
    head = f"load {t.pipeline} {t.table}: "
    if t.done:
        return f"{head}done, {t.rows:,} rows in {t.seconds or 0.0:.1f}s ({t.rate(now):,.0f} rows/s)"
    text = f"{head}{t.rows:,}/{t.estimated:,} rows ({100 * t.ratio():.0f}%)"
    rate = t.rate(now)
    if rate <= 0:  # one report so far: no rate yet
        return text
    eta = t.eta_s(now)
    return text + f", {rate:,.0f} rows/s" + (f", ETA {fmt_duration(eta)}" if eta is not None else "")


@dataclass
class _PipelineRate:
    started: float | None = None
    rows: int = 0
    tables: set[str] = field(default_factory=set)


class BulkProgress:
    """The :class:`LoadProgress` of ``cdc-pipeline load run``: metrics always; with a ``console``,
    rich bars (``console.is_terminal``) or plain lines at most every ``plain_interval_s`` per table
    (and always when a table is done). Use as a context manager around the load.
    """

    def __init__(
        self,
        console: Console | None = None,
        plain_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.plain_interval_s = plain_interval_s
        self.clock = clock
        self.tables: dict[tuple[str, str], TableProgress] = {}
        self._rates: dict[str, _PipelineRate] = {}
        self._lock = threading.Lock()
        self._bars: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._last_plain: dict[tuple[str, str], float] = {}

    def __enter__(self) -> BulkProgress:
        if self.console is not None and self.console.is_terminal:
            self._bars = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.completed:,.0f}/{task.fields[estimated]:,} rows"),
                TextColumn("{task.fields[rate]:,.0f} rows/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    # ------------------------------------------------------------------ LoadProgress

    def planned(self, pipeline: str, table: str, estimated_rows: int) -> None:
        """A table will be copied; about ``estimated_rows`` rows (>= 0)."""
        with self._lock:
            key = (pipeline, table)
            self.tables[key] = TableProgress(pipeline, table, max(0, estimated_rows))
            self._rates.setdefault(pipeline, _PipelineRate()).tables.add(table)
            metrics.BULK_LOAD_TABLE_ROWS.labels(pipeline, table).set(max(0, estimated_rows))
            metrics.BULK_LOAD_PROGRESS.labels(pipeline, table).set(0)
            metrics.BULK_LOAD_ROWS.labels(pipeline, table)
            metrics.BULK_LOAD_RATE.labels(pipeline).set(0)
            if self._bars is not None:
                self._tasks[key] = self._bars.add_task(
                    f"{pipeline} {table}", total=max(1, estimated_rows), estimated=estimated_rows, rate=0.0
                )

    def copied(self, pipeline: str, table: str, rows: int) -> None:
        """``rows`` more rows of the table were copied (a delta)."""
        with self._lock:
            now = self.clock()
            t = self._table(pipeline, table)
            if t.started is None:
                t.started = now
            t.rows += rows
            rate = self._rates[pipeline]
            if rate.started is None:
                rate.started = now
            rate.rows += rows
            metrics.BULK_LOAD_ROWS.labels(pipeline, table).inc(rows)
            metrics.BULK_LOAD_PROGRESS.labels(pipeline, table).set(t.ratio())
            elapsed = now - rate.started
            if elapsed > 0:
                metrics.BULK_LOAD_RATE.labels(pipeline).set(rate.rows / elapsed)
            self._show(t, now, force=False)

    def table_done(self, pipeline: str, table: str, rows: int, seconds: float) -> None:
        """The table is copied: ``rows`` in all, ``seconds`` of copy time."""
        with self._lock:
            now = self.clock()
            t = self._table(pipeline, table)
            t.rows, t.seconds = rows, seconds
            metrics.BULK_LOAD_PROGRESS.labels(pipeline, table).set(1)
            rate = self._rates[pipeline]
            if rate.started is not None and now > rate.started:
                metrics.BULK_LOAD_RATE.labels(pipeline).set(rate.rows / (now - rate.started))
            self._show(t, now, force=True)

    # ------------------------------------------------------------------ display

    def _table(self, pipeline: str, table: str) -> TableProgress:
        key = (pipeline, table)
        if key not in self.tables:  # a loader that did not announce the table: show it without a total
            self.tables[key] = TableProgress(pipeline, table, 0)
            self._rates.setdefault(pipeline, _PipelineRate()).tables.add(table)
            if self._bars is not None:
                self._tasks[key] = self._bars.add_task(f"{pipeline} {table}", total=None, estimated=0, rate=0.0)
        return self.tables[key]

    def _show(self, t: TableProgress, now: float, force: bool) -> None:
        key = (t.pipeline, t.table)
        if self._bars is not None:
            total = max(t.estimated, t.rows, 1)
            self._bars.update(
                self._tasks[key],
                completed=t.rows if not t.done else total,
                total=total,
                estimated=t.rows if t.done else t.estimated,
                rate=t.rate(now),
            )
            return
        if self.console is None:
            return
        last = self._last_plain.get(key)
        if force or last is None or now - last >= self.plain_interval_s:
            self._last_plain[key] = now
            self.console.print(plain_line(t, now), markup=False, highlight=False)
