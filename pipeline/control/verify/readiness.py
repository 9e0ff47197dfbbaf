"""Cutover readiness: ``cdc_cutover_ready`` is 1 only while the heartbeat lag has stayed below
``cutover.max_lag_s`` for ``cutover.stable_s`` AND the last verification of every table of the
pipeline (stored in the target's ``verify_results``) was clean."""

from __future__ import annotations

import time
from typing import ClassVar

from pipeline.control.monitor.heartbeat import heartbeat_target_table
from pipeline.control.polling import PollingMonitor
from pipeline.control.verify.model import export_stored, verification_clean
from pipeline.control.verify.plan import pipeline_tables
from pipeline.control.verify.run import pipeline_target
from pipeline.control.verify.source import connect_source
from pipeline.core import metrics
from pipeline.core.settings.models import CutoverConfig, PipelineSettings
from pipeline.core.settings.root import Settings


class CutoverReadiness:
    """Pure state of ``cdc_cutover_ready``: ready while the lag has stayed at or below
    ``max_lag_s`` for at least ``hold_s`` seconds and the last verification was clean.

    :meth:`observe` takes a monotonic ``now`` (seconds); an unknown lag (None) or one above the
    threshold restarts the hold. Raises ValueError for a negative threshold or hold.
    """

    def __init__(self, max_lag_s: float, hold_s: float) -> None:
        if max_lag_s < 0 or hold_s < 0:
            raise ValueError("max_lag_s and hold_s must not be negative")
        self.max_lag_s = max_lag_s
        self.hold_s = hold_s
        self._below_since: float | None = None

    @property
    def below_since(self) -> float | None:
        """When the lag went (and stayed) below the threshold, or None."""
        return self._below_since

    def observe(self, now: float, lag_s: float | None, verified_clean: bool) -> bool:
        """Record one observation; returns whether the pipeline is ready for cutover now."""
        if lag_s is None or lag_s > self.max_lag_s:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        held = self._below_since is not None and now - self._below_since >= self.hold_s
        return held and verified_clean


class CutoverMonitor(PollingMonitor):
    """Exports ``cdc_cutover_ready{pipeline}``, ``cdc_cutover_lag_ok{pipeline}`` (the lag below
    ``cutover.max_lag_s`` now, before the hold time) and the stored ``cdc_verify_*`` results of one
    pipeline, every ``cutover.interval_s``: lag = source ``now()`` minus the heartbeat ``ts``
    applied in the target (as :mod:`pipeline.control.monitor` measures it); verification from the
    target's ``verify_results`` (any backend)."""

    kind: ClassVar[str] = "cutover"

    def __init__(self, settings: Settings, pipeline: PipelineSettings, config: CutoverConfig | None = None) -> None:
        self.config = config or settings.cutover
        super().__init__(pipeline.name, self.config.interval_s)
        self.settings = settings
        self.pipeline = pipeline
        self.source = settings.source(pipeline.source)
        self.readiness = CutoverReadiness(self.config.max_lag_s, self.config.stable_s)
        self.tables = pipeline_tables(settings, pipeline)
        self.ready = False

    def poll_once(self) -> None:
        """Measure lag, read stored results, export the gauges. Raises psycopg.Error (source),
        TransientSinkError (target)."""
        lag: float | None = None
        with connect_source(self.source, "cutover", 30) as sconn:
            row = sconn.execute("SELECT now() AS now").fetchone()
            source_now = row["now"] if row is not None else None
        with pipeline_target(self.pipeline, "cutover") as target:
            seen = target.read_heartbeat(heartbeat_target_table(self.source, self.pipeline), self.source.name)
            verification = target.verification(30)
            try:
                stored = verification.load_results(self.pipeline.name)
            finally:
                verification.close()
        if seen is not None and source_now is not None:
            lag = max(0.0, (source_now - seen).total_seconds())
        export_stored(self.pipeline.name, stored)
        lag_ok = lag is not None and lag < self.config.max_lag_s
        metrics.CUTOVER_LAG_GATE.labels(self.pipeline.name).set(1 if lag_ok else 0)
        self.ready = self.readiness.observe(time.monotonic(), lag, verification_clean(stored, self.tables))
        metrics.CUTOVER_READY.labels(self.pipeline.name).set(1 if self.ready else 0)
        self.healthy = True
