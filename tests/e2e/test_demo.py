"""The main job (issue 7): the pgbench demo, twice in a row, the second time with the
pipeline stopped and restarted in the middle of the load; both verify clean, the PostgreSQL
pipeline and the MariaDB one (issue 8) alike. The existing rows arrive by the bulk load (issue 17)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pipeline.localstack import LocalStack
from tests.e2e.test_observability import free_port


def run_demo(local_stack: LocalStack, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--log-format", "console", "demo", "--scale", "1", "--duration", "20",
         "--rate", "100", "--clients", "2", "--metrics-port", str(free_port()),
         "--state-dir", str(local_stack.settings.state), *extra],
        capture_output=True, text=True, timeout=900, check=False, env=os.environ.copy(),
    )  # fmt: skip


def test_demo_twice_and_with_a_restart_midway(local_stack: LocalStack) -> None:
    first = run_demo(local_stack)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "verification                CLEAN" in first.stdout
    # The initial load is the bulk load (initial_load: bulk): its figures in the steps and the summary,
    # 100,011 rows into PostgreSQL and the 11 rows of the small tables into MariaDB.
    assert re.search(r"^   bulk load: 100,022 rows in [\d.]+ s \([\d,]+ rows/s\)$", first.stdout, re.MULTILINE)
    assert re.search(r"^bulk load\s+100,022 rows in [\d.]+ s \([\d,]+ rows/s\)$", first.stdout, re.MULTILINE)
    assert re.search(r"^   pgbench_to_target public\.pgbench_accounts: 100,000 rows in", first.stdout, re.MULTILINE)
    assert "pgbench_history" in first.stdout  # the keyless table is verified too
    # The second pipeline, own consumer group on the same topics, into MariaDB: verified clean.
    assert "into MariaDB (pipeline pgbench_to_mariadb" in first.stdout
    maria = first.stdout.split("into MariaDB", 1)[1]
    assert re.search(r"public\.pgbench_history: source \d+ rows, target \d+ rows, \d+ chunks, match", maria), maria

    second = run_demo(local_stack, "--restart-midway")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "stopping the pipeline in the middle of the load" in second.stdout
    assert "verification                CLEAN" in second.stdout
    run_ids = re.findall(r"== demo run (\d+)", first.stdout + second.stdout)
    assert int(run_ids[1]) == int(run_ids[0]) + 1
