"""The control plane's view of a cutover: the phase gauges are exported from the durable state
every poll, so a ``cutover run`` that crashed (and left the source fenced) still shows in
Prometheus, where ``CutoverStuck`` can fire; the ``cutover run`` process itself only exports them
while it lives."""

from __future__ import annotations

from typing import ClassVar

from pipeline.control.cutover.run import export_state, load_state
from pipeline.control.polling import PollingMonitor
from pipeline.core.settings.models import PipelineSettings
from sinks.base import open_cutover
from sinks.factory import make_target


class CutoverPhaseMonitor(PollingMonitor):
    """Exports ``cdc_cutover_phase{pipeline,phase}``, ``cdc_cutover_write_pause_seconds`` and
    ``cdc_cutover_phase_duration_seconds`` of ``pipeline`` from the cutover state stored in its
    target's control schema, every ``interval_s`` seconds (``idle`` when none was stored).
    A target without cutover support exports nothing."""

    kind: ClassVar[str] = "cutover-phase"

    def __init__(self, pipeline: PipelineSettings, interval_s: float) -> None:
        super().__init__(pipeline.name, interval_s)
        self.pipeline = pipeline

    def poll_once(self) -> None:
        """Read the stored state and export it. Raises TransientSinkError when the target is unreachable."""
        target = make_target(self.pipeline)
        try:
            try:
                store = open_cutover(target)
            except TypeError:
                self.healthy = True
                return
            try:
                export_state(load_state(store, self.pipeline.name))
            finally:
                store.close()
        finally:
            target.close()
        self.healthy = True
