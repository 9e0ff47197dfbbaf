"""Progress of long commands (verify, snapshot waits, the demo): a rich bar on a terminal, plain
lines otherwise (logs, CI, pipes), so output stays readable wherever it goes.

Colour follows the NO_COLOR convention (https://no-color.org: any non-empty value disables it);
rich's Console honours it too, this module makes it explicit. Plain lines are rate limited
(``plain_interval_s``) and always printed for the last update.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import IO, Self

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


def no_color() -> bool:
    """True when NO_COLOR is set to a non-empty value."""
    return bool(os.environ.get("NO_COLOR"))


def make_console(file: IO[str] | None = None, force_terminal: bool | None = None) -> Console:
    """A rich Console on ``file`` (default stdout) without highlighting, colourless under NO_COLOR.

    ``force_terminal`` True renders bars even when ``file`` is not a terminal (tests).
    """
    return Console(
        file=file or sys.stdout, force_terminal=force_terminal, no_color=no_color(), highlight=False, soft_wrap=True
    )


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressView:
    """One progress line: ``completed`` of ``total`` ``unit`` plus a free ``detail`` text.

    On a terminal (``console.is_terminal``) a rich bar with percentage, elapsed and remaining
    time; otherwise plain lines ``<title>: 3/10 chunks (30%) <detail>, ETA 0:12`` at most every
    ``plain_interval_s`` seconds. Use as a context manager; :meth:`update` may be called often.
    """

    def __init__(self, title: str, unit: str, console: Console | None = None, plain_interval_s: float = 5.0) -> None:
        self.title = title
        self.unit = unit
        self.console = console or make_console()
        self.plain_interval_s = plain_interval_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_plain: float | None = None
        self._pending: str | None = None
        self._started = time.monotonic()

    @property
    def is_bar(self) -> bool:
        """True when a bar is drawn (a terminal), False for plain lines."""
        return self.console.is_terminal

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        if self.is_bar:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.completed:,.0f}/{task.fields[total_text]} " + self.unit),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=None, detail="", total_text="?")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self._pending is not None:
            self.console.print(self._pending, markup=False, highlight=False)

    def update(self, completed: float, total: float | None, detail: str = "") -> None:
        """Show ``completed`` of ``total`` (None: unknown) with ``detail``."""
        if self._progress is not None and self._task is not None:
            total_text = f"{total:,.0f}" if total is not None else "?"
            self._progress.update(self._task, completed=completed, total=total, detail=detail, total_text=total_text)
            return
        line = self.plain_line(completed, total, detail)
        now = time.monotonic()
        if self._last_plain is None or now - self._last_plain >= self.plain_interval_s:
            self.console.print(line, markup=False, highlight=False)
            self._last_plain, self._pending = now, None
        else:
            self._pending = line

    def plain_line(self, completed: float, total: float | None, detail: str) -> str:
        """The plain-text form of an update (with an ETA from the average rate so far)."""
        text = f"{self.title}: {completed:,.0f}"
        if total is not None and total > 0:
            text += f"/{total:,.0f} {self.unit} ({min(100.0, 100.0 * completed / total):.0f}%)"
        else:
            text += f" {self.unit}"
        if detail:
            text += f" {detail}"
        elapsed = time.monotonic() - self._started
        if total is not None and 0 < completed < total and elapsed > 0:
            text += f", ETA {_fmt_duration((total - completed) / (completed / elapsed))}"
        return text
