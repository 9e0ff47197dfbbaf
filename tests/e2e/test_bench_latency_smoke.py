"""The latency benchmark cannot rot: ``bench/e2e_latency.py --smoke`` against the test stack.

A real Debezium connector, two workers of one consumer group and pgbench at a tiny rate: asserts exit 0, that the
commit-to-apply quantiles and the catch-up time after a pause were printed, and that the probe
and account tables are equal on both sides. No latency assertion.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.localstack import LocalStack

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "e2e_latency.py"


@pytest.mark.timeout(400)
def test_e2e_latency_smoke(local_stack: LocalStack) -> None:
    s = local_stack.settings
    args = ["--smoke", "--state-dir", str(s.state), "--kafka-port", str(s.kafka_port)]
    args += ["--target-port", str(s.target_pg_port), "--metrics-port", "0", "--workers", "2"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=360, cwd=REPO, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(
        r"^rate +100 tx/s: achieved [\d,]+ tx/s, [\d,]+ probes; commit-to-apply p50 [\d,]+ ms",
        proc.stdout,
        re.MULTILINE,
    ), output
    caught_up = r"(caught up [\d.]+ s after the resume|all applied [\d.]+ s after the load ended)"
    assert re.search(rf"^pause: workers frozen 5 s .*{caught_up}", proc.stdout, re.MULTILINE), output
    assert "target matches: yes" in proc.stdout, output
