"""The JDBC-sink comparison cannot rot: ``bench/compare_jdbc_sink.py --smoke`` against the test stack.

Asserts that the script exits 0, prints the per-system figures (events/s of the Debezium JDBC
sink at its default and tuned ``batch.size`` and of the pipeline), finds every target equal to
the expected state, and runs the replay scenario with the pipeline's target still equal
afterwards. No speed assertion: the figures are for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.localstack import LocalStack

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "compare_jdbc_sink.py"


@pytest.mark.timeout(400)
def test_compare_jdbc_sink_smoke(local_stack: LocalStack) -> None:
    s = local_stack.settings
    args = ["--smoke", "--state-dir", str(s.state), "--kafka-port", str(s.kafka_port)]
    args += ["--target-port", str(s.target_pg_port)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=360, cwd=REPO, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for system in (r"jdbc sink batch\.size=500 \(default\)", r"jdbc sink batch\.size=5000", "pipeline"):
        assert re.search(rf"^  {system}\s+events/s median [\d,]+ ", proc.stdout, re.MULTILINE), output
    assert "target matches 1/1" in proc.stdout, output
    assert re.search(r"^replay pipeline\s*: .*target matches: yes$", proc.stdout, re.MULTILINE), output
    assert re.search(r"^replay jdbc sink: done in ", proc.stdout, re.MULTILINE), output
