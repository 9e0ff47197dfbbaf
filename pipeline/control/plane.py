"""The control-plane process (``cdc-pipeline control``): holds or waits for the lease, and while it
holds it runs every loop that must run once per source or pipeline: slot, heartbeat, publication and
connector monitors with connector auto-restart, the snapshot coordinator, the cutover-readiness
monitor. A replica that loses the lease stops them and exits, so no stale loop or gauge survives it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.control.cutover.phase_monitor import CutoverPhaseMonitor
from pipeline.control.lease import KafkaLease, lease_name
from pipeline.control.monitor.group import build_monitors
from pipeline.control.polling import PollingMonitor
from pipeline.control.snapshot.wiring import build_coordinator
from pipeline.control.verify.model import VerifySettings
from pipeline.control.verify.readiness import CutoverMonitor
from pipeline.control.verify.scheduled import ScheduledVerification
from pipeline.core.logs import get_logger
from pipeline.core.settings.root import Settings

log = get_logger(__name__)

EXIT_LEASE_LOST = 3
"""Exit code of a replica that lost the lease (its supervisor restarts it as a standby)."""

READY_POLL_AGE_S = 15.0
"""A replica whose lease poll has not returned for this long (seconds) reports not ready."""


@dataclass
class Loops:
    """The loops of one active term: started together, stopped together (bounded)."""

    monitors: list[PollingMonitor] = field(default_factory=list)

    def start(self) -> None:
        """Start every loop (each polls at once, then on its interval)."""
        for loop in self.monitors:
            loop.start()

    def stop(self, timeout_s: float) -> None:
        """Stop every loop, waiting at most ``timeout_s`` seconds in total."""
        per_loop = timeout_s / max(1, len(self.monitors))
        for loop in self.monitors:
            loop.stop(per_loop)


def build_loops(settings: Settings, sources: Sequence[str]) -> Loops:
    """The control loops for ``sources`` (names): their monitors (connector auto-restart on),
    one snapshot coordinator per source, the cutover-readiness monitor of each pipeline and, with
    ``verify.schedule_interval_s``, its scheduled verification. Not started. Raises KeyError for an unknown source."""
    group = build_monitors(settings, sources=sources, restart_connectors=True)
    loops: list[PollingMonitor] = list(group.monitors)
    verify = VerifySettings.from_config(settings.verify)
    for name in sources:
        source = settings.source(name)
        loops.append(build_coordinator(settings, source))
        for pipeline in settings.pipelines:
            if pipeline.source != name:
                continue
            loops.append(CutoverMonitor(settings, pipeline))
            loops.append(CutoverPhaseMonitor(pipeline, settings.cutover.interval_s))
            if settings.verify.schedule_interval_s is not None:
                loops.append(ScheduledVerification(settings, pipeline, settings.verify.schedule_interval_s, verify))
    return Loops(loops)


class ControlPlane:
    """One replica of the control plane for ``sources`` (all the config's sources by default).

    ``run(stop)`` joins the lease group and serves it until ``stop`` is set (returns 0) or the
    lease is lost (returns :data:`EXIT_LEASE_LOST`). Loops are built when the lease is acquired,
    so a standby opens no database or Connect connection. Raises KafkaException when the lease
    group cannot be joined.
    """

    def __init__(
        self,
        settings: Settings,
        sources: Sequence[str] | None = None,
        *,
        lease: str | None = None,
        loops: Callable[[Settings, Sequence[str]], Loops] = build_loops,
        stop_timeout_s: float = 20.0,
    ) -> None:
        self.settings = settings
        self.sources = list(sources) if sources is not None else [s.name for s in settings.sources]
        self._build = loops
        self._stop_timeout_s = stop_timeout_s
        self._loops: Loops | None = None
        self._lost = False
        self._stopping = False
        self._last_poll: float | None = None
        self.lease = KafkaLease(
            settings.kafka.client_config(),
            lease or lease_name(self.sources),
            on_acquired=self._acquired,
            on_lost=self._lease_lost,
        )

    @property
    def active(self) -> bool:
        """True while this replica holds the lease."""
        return self.lease.active

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``/readyz``: ready as an active replica or as a standby, as long as the lease group is
        served (a poll returned within :data:`READY_POLL_AGE_S`); not ready before joining."""
        age = None if self._last_poll is None else time.monotonic() - self._last_poll
        ok = age is not None and age < READY_POLL_AGE_S
        detail: dict[str, object] = {
            "lease": self.lease.name,
            "replica": self.lease.replica,
            "active": self.lease.active,
        }
        return ok, detail

    def run(self, stop: threading.Event) -> int:
        """Serve the lease until ``stop`` or the loss of the lease; see the class doc."""
        self.lease.join()
        log.info("control plane started", lease=self.lease.name, replica=self.lease.replica, sources=self.sources)
        try:
            while not stop.is_set() and not self._lost:
                self.lease.poll(0.5)
                self._last_poll = time.monotonic()
        finally:
            self._stopping = True  # the revocation that closing the lease causes is no loss
            self._stop_loops()
            self.lease.close()
        log.info("control plane stopped", lease=self.lease.name, lost=self._lost)
        return EXIT_LEASE_LOST if self._lost else 0

    def _acquired(self) -> None:
        self._loops = self._build(self.settings, self.sources)
        self._loops.start()
        log.info("control loops started", loops=[f"{m.kind}:{m.name}" for m in self._loops.monitors])

    def _lease_lost(self) -> None:
        if not self._stopping:
            self._lost = True
        self._stop_loops()

    def _stop_loops(self) -> None:
        if self._loops is not None:
            self._loops.stop(self._stop_timeout_s)
            self._loops = None
