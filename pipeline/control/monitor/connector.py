"""Kafka Connect connector and task states, and the automatic restart of failed ones. Restarting a
connector is a once-per-source action, so it belongs to the control plane: it is decided only inside
the process that runs :class:`ConnectorStateMonitor` (the active ``cdc-pipeline control`` replica, or a
standalone ``cdc-pipeline monitor``), from that process's own backoff state, never from shared memory.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

from connectors.connect_client import (
    ConnectClient,
    ConnectError,
    ConnectorNotFoundError,
    ConnectorStatus,
    RetryPolicy,
)
from pipeline.control.monitor.export import clear_connector_status, export_connector_status, forget_tasks
from pipeline.control.polling import PollingMonitor
from pipeline.core import metrics
from pipeline.core.logs import get_logger
from pipeline.core.retry import exponential_cap
from pipeline.core.settings.models import SourceSettings

log = get_logger("pipeline.control.monitor.connector")


class RestartBackoff:
    """Exponential backoff between automatic restarts of one connector's FAILED tasks.

    The first restart is allowed at once; restart ``n`` (1-based) is followed by a pause of
    ``min(max_s, initial_s * 2**(n-1))`` seconds. After the connector has been healthy for
    ``reset_after_s`` seconds the sequence starts over. Times are monotonic seconds.
    """

    def __init__(self, initial_s: float = 30.0, max_s: float = 1800.0, reset_after_s: float = 600.0) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self.reset_after_s = reset_after_s
        self.attempts = 0
        self._next_at = -math.inf
        self._healthy_since: float | None = None

    def ready(self, now: float) -> bool:
        """True when a restart is allowed at ``now``."""
        return now >= self._next_at

    def seconds_left(self, now: float) -> float:
        """Seconds until the next restart is allowed (0 when it is)."""
        return max(0.0, self._next_at - now)

    def record_restart(self, now: float) -> float:
        """Count a restart made at ``now``; returns the pause (seconds) before the next one."""
        self.attempts += 1
        delay = exponential_cap(self.initial_s, self.max_s, self.attempts - 1)
        self._next_at = now + delay
        self._healthy_since = None
        return delay

    def record_healthy(self, now: float) -> None:
        """The connector is healthy at ``now``; resets the sequence once healthy long enough."""
        if self._healthy_since is None:
            self._healthy_since = now
        if now - self._healthy_since >= self.reset_after_s:
            self.attempts = 0
            self._next_at = -math.inf


def monitor_retry_policy(interval_s: float) -> RetryPolicy:
    """Connect REST retries short enough for a poll loop: 2 attempts within min(5, interval) seconds."""
    return RetryPolicy(max_attempts=2, initial_backoff_s=0.2, max_backoff_s=1.0, max_elapsed_s=min(5.0, interval_s))


class ConnectStatusClient(Protocol):
    """The part of :class:`connectors.connect_client.ConnectClient` the connector monitor uses."""

    def status(self, name: str) -> ConnectorStatus:
        """Connector and task states; raises ConnectorNotFoundError / ConnectError."""
        ...

    def restart(self, name: str, *, include_tasks: bool = True, only_failed: bool = True) -> ConnectorStatus | None:
        """Restart the connector's failed instance and tasks."""
        ...


class ReopeningConnectClient:
    """A :class:`ConnectStatusClient` that opens a client from ``factory`` on first use and drops it
    on :meth:`close`, so a monitor stopped (lease lost) and started again gets a fresh HTTP pool
    (an ``httpx.Client`` cannot be used once closed). Thread-safe."""

    def __init__(self, factory: Callable[[], ConnectClient]) -> None:
        self._factory = factory
        self._client: ConnectClient | None = None
        self._lock = threading.Lock()

    def _current(self) -> ConnectClient:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def status(self, name: str) -> ConnectorStatus:
        """See :meth:`connectors.connect_client.ConnectClient.status`."""
        return self._current().status(name)

    def restart(self, name: str, *, include_tasks: bool = True, only_failed: bool = True) -> ConnectorStatus | None:
        """See :meth:`connectors.connect_client.ConnectClient.restart`."""
        return self._current().restart(name, include_tasks=include_tasks, only_failed=only_failed)

    def close(self) -> None:
        """Close the current client, if any; the next call opens a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class ConnectorStateMonitor(PollingMonitor):
    """Exports the connector and task states of ``sources`` read from the Connect REST API, and
    restarts failed ones when ``auto_restart``.

    Exported per poll: ``cdc_connector_state`` and ``cdc_connector_task_state`` (1 for the current
    state; a connector that does not exist is ``ABSENT``; series of tasks that are gone are
    removed); ``cdc_monitor_up{monitor="connect"}`` is 1 when Connect answered for that source.

    Restart rule (``auto_restart``): a connector that is FAILED or has a FAILED task is restarted
    with ``POST /connectors/{name}/restart?includeTasks=true&onlyFailed=true`` (KIP-745), paced
    per connector by a :class:`RestartBackoff` built by ``backoff``: the first restart at once,
    then pauses of 30 s, 60 s, ... up to 30 min with the defaults, the sequence starting over once
    the connector has been healthy for 10 min. PAUSED, STOPPED, UNASSIGNED and RESTARTING
    connectors are never restarted. Each restart adds the number of failed tasks (1 when only
    the connector failed) to ``cdc_connector_task_restarts_total{source, connector}`` and is
    logged with the first line of the (redacted) trace; a refused restart request counts in
    ``cdc_monitor_poll_errors_total{check="restart"}`` and uses up its backoff step too. The
    backoff state lives in this object only: the restart decision is made by the process that
    runs the monitor and survives a stop/start in that process, while a replica that takes the
    control-plane lease over starts with fresh backoffs.

    ``close_client`` is called on every :meth:`close` (e.g. :meth:`ReopeningConnectClient.close`);
    the client must work again afterwards when the monitor is restarted.
    """

    kind: ClassVar[str] = "connect"

    def __init__(
        self,
        sources: Sequence[SourceSettings],
        client: ConnectStatusClient,
        *,
        interval_s: float = 15.0,
        auto_restart: bool = True,
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
        clock: Callable[[], float] = time.monotonic,
        close_client: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("connectors", interval_s)
        self.sources = list(sources)
        self.client = client
        self.auto_restart = auto_restart
        self._backoff_factory = backoff
        self._clock = clock
        self._close_client = close_client
        self.backoffs: dict[str, RestartBackoff] = {}
        self.statuses: dict[str, ConnectorStatus | None] = {}
        self._tasks: dict[str, set[str]] = {}

    def close(self) -> None:
        """Close the REST client (when a closer was given)."""
        if self._close_client is not None:
            self._close_client()

    def poll_once(self) -> None:
        """Read every connector's status, export it, restart failed tasks when enabled."""
        ok = True
        for source in self.sources:
            ok = self._poll_source(source) and ok
        self.healthy = ok

    def _poll_source(self, source: SourceSettings) -> bool:
        name = source.resolved_connector_name
        status: ConnectorStatus | None
        try:
            status = self.client.status(name)
        except ConnectorNotFoundError:
            status = None
        except ConnectError as exc:
            metrics.MONITOR_UP.labels(self.kind, source.name).set(0)
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, source.name, "status").inc()
            clear_connector_status(source.name, name, self._tasks.pop(name, set()))
            self.statuses.pop(name, None)
            self.last_error = str(exc)[:500]
            log.warning("connector status unavailable", source=source.name, connector=name, error=self.last_error)
            return False
        metrics.MONITOR_UP.labels(self.kind, source.name).set(1)
        tasks = export_connector_status(source.name, status, name)
        forget_tasks(source.name, name, self._tasks.get(name, set()) - tasks)
        self._tasks[name] = tasks
        self.statuses[name] = status
        if status is not None and self.auto_restart:
            self._maybe_restart(source, status)
        return True

    def _maybe_restart(self, source: SourceSettings, status: ConnectorStatus) -> None:
        backoff = self.backoffs.setdefault(status.name, self._backoff_factory())
        now = self._clock()
        if status.healthy:
            backoff.record_healthy(now)
            return
        if not status.failed:
            return
        if not backoff.ready(now):
            log.info(
                "connector restart deferred by backoff",
                source=source.name,
                connector=status.name,
                seconds_left=round(backoff.seconds_left(now), 1),
            )
            return
        self._restart(source, status, backoff, now)

    def _restart(self, source: SourceSettings, status: ConnectorStatus, backoff: RestartBackoff, now: float) -> None:
        name = status.name
        failed = [t for t in status.tasks if t.state == "FAILED"]
        try:
            self.client.restart(name, include_tasks=True, only_failed=True)
        except ConnectError as exc:
            delay = backoff.record_restart(now)
            metrics.MONITOR_POLL_ERRORS.labels(self.kind, source.name, "restart").inc()
            log.warning(
                "connector restart failed", source=source.name, connector=name, error=str(exc)[:300], retry_in_s=delay
            )
            return
        delay = backoff.record_restart(now)
        metrics.CONNECTOR_TASK_RESTARTS.labels(source.name, name).inc(max(1, len(failed)))
        traces = [t.trace for t in failed if t.trace] + ([status.trace] if status.trace else [])
        log.warning(
            "connector restarted after failure",
            source=source.name,
            connector=name,
            connector_state=status.state,
            failed_tasks=[t.id for t in failed],
            attempt=backoff.attempts,
            next_restart_not_before_s=delay,
            trace=traces[0].strip().splitlines()[0][:300] if traces else None,
        )
