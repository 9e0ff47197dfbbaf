"""The monitors of one process, built from settings and started and stopped together. The group can be
started again after a stop, so the control plane can run it only while it holds its lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from connectors.connect_client import ConnectClient
from pipeline.control.monitor.connector import (
    ConnectorStateMonitor,
    ConnectStatusClient,
    ReopeningConnectClient,
    monitor_retry_policy,
)
from pipeline.control.monitor.heartbeat import heartbeat_probes
from pipeline.control.monitor.slot import LiveIncludeList, SlotMonitor
from pipeline.control.polling import PollingMonitor
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings


class MonitorGroup:
    """The monitors of one process, started and stopped together; a context manager.

    :meth:`start` and :meth:`stop` may alternate any number of times (lease gained, lease lost):
    each start runs every monitor on a new thread (see :class:`~pipeline.control.polling.PollingMonitor`).
    Both are idempotent and thread-safe.
    """

    def __init__(self, monitors: Sequence[PollingMonitor] = ()) -> None:
        self.monitors = list(monitors)
        self._lock = threading.Lock()
        self._running = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def slot_monitors(self) -> list[SlotMonitor]:
        """The slot monitors, one per source."""
        return [m for m in self.monitors if isinstance(m, SlotMonitor)]

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._running

    def start(self) -> None:
        """Start every monitor's thread (first poll at once); a no-op while running."""
        with self._lock:
            if self._running:
                return
            for monitor in self.monitors:
                monitor.start()
            self._running = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every monitor and close its connections, waiting up to ``timeout_s`` seconds in
        all for the polls in flight (a poll still busy then finishes, and closes, on its own
        thread, before a later :meth:`start` polls again). Safe when never started."""
        with self._lock:
            for monitor in self.monitors:
                monitor.request_stop()
            deadline = time.monotonic() + timeout_s
            for monitor in self.monitors:
                monitor.stop(max(0.0, deadline - time.monotonic()))
            self._running = False

    def ready(self) -> tuple[bool, dict[str, object]]:
        """For ``/readyz``: ready when every monitor has polled and its last poll succeeded."""
        detail = {
            f"{m.kind}:{m.name}": ("ok" if m.healthy else (m.last_error or "not polled yet")) for m in self.monitors
        }
        ok = bool(self.monitors) and all(m.polls > 0 and m.healthy for m in self.monitors)
        return ok, {"monitors": detail}


def build_monitors(
    settings: Settings,
    *,
    sources: Sequence[str] | None = None,
    connect_client: ConnectStatusClient | None = None,
    connectors: bool = True,
    restart_connectors: bool = False,
) -> MonitorGroup:
    """The monitors for ``sources`` (names; all sources when None), not yet started.

    One :class:`SlotMonitor` per source (with a heartbeat probe per pipeline of that source,
    read through its Target) and, when ``connectors``, one :class:`ConnectorStateMonitor` for
    their connectors (``connect_client`` defaults to a :class:`ReopeningConnectClient` of
    ``settings.connect``, closed with the group); each slot monitor then also reads its
    connector's live ``table.include.list`` for the publication check. Failed connectors are restarted only when the
    caller is the control plane and says so (``restart_connectors``) *and*
    ``monitor.connector_auto_restart`` is on; otherwise states are only reported. An empty group
    when ``monitor.enabled`` is false. Raises KeyError for an unknown source name.
    """
    cfg = settings.monitor
    if not cfg.enabled:
        return MonitorGroup()
    chosen = [settings.source(n) for n in sources] if sources is not None else list(settings.sources)
    monitors: list[PollingMonitor] = [
        SlotMonitor(
            src,
            interval_s=cfg.interval_s,
            wal_rate_window_s=cfg.wal_rate_window_s,
            heartbeats=heartbeat_probes(settings, src),
            live_include=_live_include(settings, src) if connectors else None,
        )
        for src in chosen
    ]
    if connectors and chosen:
        monitors.append(
            _connector_monitor(
                settings, chosen, connect_client, restart=restart_connectors and cfg.connector_auto_restart
            )
        )
    return MonitorGroup(monitors)


def _live_include(settings: Settings, source: SourceSettings) -> LiveIncludeList:
    """The reader of ``source``'s live ``table.include.list`` for its publication check."""
    interval_s = settings.monitor.interval_s
    return LiveIncludeList(
        lambda: ConnectClient(settings.connect, retry=monitor_retry_policy(interval_s)),
        source.resolved_connector_name,
    )


def _connector_monitor(
    settings: Settings, chosen: list[SourceSettings], client: ConnectStatusClient | None, *, restart: bool
) -> ConnectorStateMonitor:
    interval_s = settings.monitor.interval_s
    closer: Callable[[], None] | None = None
    if client is None:
        own = ReopeningConnectClient(lambda: ConnectClient(settings.connect, retry=monitor_retry_policy(interval_s)))
        client, closer = own, own.close
    return ConnectorStateMonitor(chosen, client, interval_s=interval_s, auto_restart=restart, close_client=closer)
