"""``cdc-pipeline monitor``: the slot-lag and connector monitors with ``/metrics``,
``/healthz`` and ``/readyz``, alone (no consumer), until SIGTERM/SIGINT.

For deployments that watch the sources from one place (e.g. while the workers are scaled to
zero, or when the workers run with ``monitor.enabled: false``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Annotated, Any

import typer

from pipeline.cli.common import ConfigOption, fail, load_or_exit
from pipeline.control.monitor import build_monitors
from pipeline.core.health import HealthServer
from pipeline.core.logs import get_logger
from pipeline.core.settings.root import Settings

log = get_logger("pipeline.cli.monitor")

SourcesOption = Annotated[
    list[str] | None,
    typer.Option("--source", "-s", help="Monitor only this source (repeatable); all sources by default."),
]


def monitor(config: ConfigOption = None, source: SourcesOption = None) -> None:
    """Run the replication-slot, heartbeat, publication and connector monitors and serve
    /metrics, /healthz and /readyz on metrics.host:metrics.port until SIGTERM/SIGINT (exit 0)."""
    settings = load_or_exit(config)
    if not settings.sources:
        fail(["sources: none defined (nothing to monitor)"])
    if not settings.monitor.enabled:
        fail(["monitor.enabled is false (set it to true to run the monitor)"])
    known = {s.name for s in settings.sources}
    unknown = [n for n in source or [] if n not in known]
    if unknown:
        fail([f"--source: unknown source {n!r} (defined: {', '.join(sorted(known))})" for n in unknown])
    raise typer.Exit(run_monitor(settings, source or None))


def run_monitor(settings: Settings, sources: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    """Start the monitors (and the HTTP endpoints when ``metrics.enabled``), wait for ``stop``
    (set by SIGTERM/SIGINT when called from the main thread), stop everything; returns 0.

    Raises KeyError for an unknown source name, OSError when the HTTP port cannot be bound.
    """
    stop = stop or threading.Event()
    group = build_monitors(settings, sources=sources)
    health = (
        HealthServer(settings.metrics.host, settings.metrics.port, group.ready) if settings.metrics.enabled else None
    )
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("stop requested", signal=signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        group.start()
        if health is not None:
            health.start()
            log.info("http endpoints", port=health.port, paths=["/metrics", "/healthz", "/readyz"])
        log.info("monitor started", monitors=[f"{m.kind}:{m.name}" for m in group.monitors])
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        group.stop()
        if health is not None:
            health.stop()
    log.info("monitor stopped")
    return 0
