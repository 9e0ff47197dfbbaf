"""Worker counters exist at 0 from the start (issue 22, defect 4): a counter born at its first
increment is invisible to increase(); the worker pre-creates its series for the label values it
knows (retry kinds, dead-letter error classes), and the composition root does so for each
worker it builds."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from pipeline import app
from pipeline.core import metrics

REPO = Path(__file__).resolve().parents[2]


def _samples() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_precreated_counters_are_exported_at_zero() -> None:
    pipeline = "precreate_test_pipeline"
    assert f'pipeline="{pipeline}"' not in _samples()
    metrics.precreate_worker_series(pipeline, ("PoisonMessageError", "BatchRejectedError"))
    text = _samples()
    for series in (
        f'cdc_messages_consumed_total{{pipeline="{pipeline}"}} 0.0',
        f'cdc_batches_total{{pipeline="{pipeline}"}} 0.0',
        f'cdc_dlq_messages_total{{error_class="PoisonMessageError",pipeline="{pipeline}"}} 0.0',
        f'cdc_dlq_messages_total{{error_class="BatchRejectedError",pipeline="{pipeline}"}} 0.0',
    ):
        assert series in text, series
    for kind in metrics.WORKER_RETRY_KINDS:
        assert f'cdc_retries_total{{kind="{kind}",pipeline="{pipeline}"}} 0.0' in text, kind


def test_retry_kinds_are_the_runners() -> None:
    runner = (REPO / "pipeline" / "dataplane" / "runner.py").read_text()
    used = set(re.findall(r'self\._retry\(\s*"(\w+)"', runner))
    assert used == set(metrics.WORKER_RETRY_KINDS)


def test_the_composition_root_precreates_every_workers_series() -> None:
    assert set(app.DEAD_LETTER_CLASSES) == {"PoisonMessageError", "RejectedEventError", "BatchRejectedError"}
    source = (REPO / "pipeline" / "app.py").read_text()
    build = source[source.index("def build_worker(") : source.index("def run_worker(")]
    assert "metrics.precreate_worker_series(pipeline.name, DEAD_LETTER_CLASSES)" in build
