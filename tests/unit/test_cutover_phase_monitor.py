"""The control plane exports the cutover phase from the durable state (a crashed ``cutover run``
still shows), read here from a real SQLite target's control table."""

from __future__ import annotations

from pathlib import Path

from pipeline.control.cutover.phase_monitor import CutoverPhaseMonitor
from pipeline.control.cutover.state import CutoverState, Phase
from pipeline.core import metrics
from pipeline.core.settings.models import PipelineSettings
from sinks.base import open_cutover
from sinks.factory import make_target


def _gauge(pipeline: str, phase: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("cdc_cutover_phase", {"pipeline": pipeline, "phase": phase})


def test_phase_gauges_follow_the_stored_state(tmp_path: Path) -> None:
    pipe = PipelineSettings(name="pm1", source="app", target={"url": f"sqlite:///{tmp_path / 't.db'}"})
    monitor = CutoverPhaseMonitor(pipe, 1.0)
    monitor.poll_once()
    assert monitor.healthy
    assert _gauge("pm1", "idle") == 1
    assert _gauge("pm1", "fenced") == 0

    state = CutoverState("pm1")
    state.phase = Phase.FENCED
    state.write_pause_s = 2.5
    target = make_target(pipe)
    store = open_cutover(target)
    try:
        store.save_state("pm1", state.phase.value, state.to_dict())
    finally:
        store.close()
        target.close()

    monitor.poll_once()
    assert _gauge("pm1", "fenced") == 1
    assert _gauge("pm1", "idle") == 0
    assert metrics.REGISTRY.get_sample_value("cdc_cutover_write_pause_seconds", {"pipeline": "pm1"}) == 2.5
