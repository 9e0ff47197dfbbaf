"""Scheduled verification: the control plane verifies each pipeline every ``verify.schedule_interval_s``
and stores the result in the target, where the cutover-readiness monitor (and the cutover gate)
read it. One active control replica, so one verification at a time per pipeline."""

from __future__ import annotations

from typing import ClassVar

from pipeline.control.polling import PollingMonitor
from pipeline.control.verify.model import VerifySettings, export_verify_metrics
from pipeline.control.verify.run import pipeline_target, store_result, verify_pipeline
from pipeline.core.logs import get_logger
from pipeline.core.settings.models import PipelineSettings
from pipeline.core.settings.root import Settings

log = get_logger(__name__)


class ScheduledVerification(PollingMonitor):
    """Runs :func:`pipeline.control.verify.run.verify_pipeline` for ``pipeline`` every
    ``interval_s`` seconds (the first run one interval after the start, not at once: a replica
    that just took over should not load the source immediately), exports ``cdc_verify_*`` and
    stores the result. A failed run (source or target unreachable) is logged and counted by the
    poll loop; the next one comes on schedule."""

    kind: ClassVar[str] = "verify"

    def __init__(
        self, settings: Settings, pipeline: PipelineSettings, interval_s: float, config: VerifySettings
    ) -> None:
        super().__init__(pipeline.name, interval_s)
        self.settings = settings
        self.pipeline = pipeline
        self.config = config
        self._first = True

    def poll_once(self) -> None:
        """Verify and store (skipped on the run's first poll). Raises what verification raises."""
        if self._first:
            self._first = False
            self.healthy = True
            return
        with pipeline_target(self.pipeline, "scheduled-verify") as target:
            result = verify_pipeline(self.settings, self.pipeline, config=self.config, target=target)
            export_verify_metrics(result)
            store_result(target, result)
        log.info("scheduled verification", pipeline=self.pipeline.name, ok=result.ok)
        self.healthy = True

    def close(self) -> None:
        """A new run (after the lease is regained) again waits one interval first."""
        self._first = True
