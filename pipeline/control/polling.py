"""The poll loop every control-plane loop runs on (slot and connector monitors, snapshot coordinator,
cutover monitor): one daemon thread per monitor that polls at once and then every interval, survives
anything a poll raises, and can be stopped and started again when the control plane's lease is lost
and regained.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

from pipeline.core import metrics
from pipeline.core.logs import get_logger

log = get_logger("pipeline.control.polling")


@dataclass(frozen=True, slots=True)
class _Run:
    """One started run: its own stop flag and thread (a stopped thread cannot be restarted)."""

    stop: threading.Event
    thread: threading.Thread


class PollingMonitor:
    """Base of the control loops: :meth:`poll_once` on a daemon thread, at once and then every
    ``interval_s`` seconds, until :meth:`stop`.

    ``poll_once`` may raise; the loop logs the exception, counts it in
    ``cdc_monitor_poll_errors_total{check="poll"}`` and carries on: nothing escapes the thread.
    :meth:`close` releases resources and runs on the thread when it ends (or in :meth:`stop`
    when never started); a closed monitor must be able to poll again (connections reopen lazily).

    Restart rule: :meth:`start` after :meth:`stop` begins a new run with a new thread and stop
    flag. When the previous thread is still finishing a poll (``stop`` timed out), the new thread
    first waits for it to end, so two polls of one monitor never overlap and the old run's
    :meth:`close` happens before the new run's first poll. Raises ValueError when ``interval_s``
    is not positive.
    """

    kind: ClassVar[str] = "monitor"

    def __init__(self, name: str, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.name = name
        self.interval_s = interval_s
        self._run: _Run | None = None
        self._run_lock = threading.Lock()
        self.polls = 0
        self.healthy = False
        self.last_error: str | None = None

    def poll_once(self) -> None:
        """One poll; sets :attr:`healthy`. Subclasses implement it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; idempotent, and the monitor may be started again afterwards."""

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` while the thread is alive."""
        run = self._run
        return run is not None and not run.stop.is_set() and run.thread.is_alive()

    def start(self) -> None:
        """Start a polling thread (a no-op while a run is active; see the class doc after a stop)."""
        with self._run_lock:
            previous = self._run
            if previous is not None and not previous.stop.is_set():
                return
            stop = threading.Event()
            thread = threading.Thread(
                target=self._loop,
                args=(stop, previous.thread if previous is not None else None),
                name=f"monitor-{self.kind}-{self.name}",
                daemon=True,
            )
            self._run = _Run(stop, thread)
            thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop after the poll in flight, without waiting (signal-safe)."""
        run = self._run
        if run is not None:
            run.stop.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait up to ``timeout_s`` seconds for it (a poll in flight
        finishes first; database statements are bounded by ``statement_timeout``). Closes the
        monitor directly when it was never started."""
        run = self._run
        if run is None:
            self.close()
            return
        run.stop.set()
        run.thread.join(timeout_s)
        if run.thread.is_alive():
            log.warning("monitor thread still busy at stop", monitor=self.kind, name=self.name)

    def _loop(self, stop: threading.Event, previous: threading.Thread | None) -> None:
        try:
            if previous is not None:
                previous.join()
            while not stop.is_set():
                self._guarded_poll()
                if stop.wait(self.interval_s):
                    break
        finally:
            self.close()

    def _guarded_poll(self) -> None:
        try:
            self.poll_once()
        except Exception as exc:  # the thread must survive anything a poll throws
            self.healthy = False
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, self.name, "poll").inc()
            log.exception("monitor poll failed", monitor=self.kind, name=self.name)
        finally:
            self.polls += 1
