"""The worker's bounded shutdown: once a stop is requested, the process exits within
``shutdown_timeout_s`` even when a sink call never returns; a disarmed watchdog does nothing."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO


def _run(body: str) -> tuple[int, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", body], cwd=REPO, capture_output=True, timeout=60, check=False)
    return proc.returncode, time.monotonic() - t0


def test_an_armed_watchdog_ends_a_stuck_process_at_the_timeout() -> None:
    code, took = _run(
        "import time\nfrom pipeline.app import ShutdownWatchdog\n"
        "ShutdownWatchdog(0.5).arm()\ntime.sleep(50)  # a sink call blocked on a frozen target\n"
    )
    assert code == 0  # an abandoned batch at shutdown is a clean stop: offsets live in the target
    assert took < 20


def test_a_disarmed_watchdog_lets_the_process_finish_its_own_way() -> None:
    code, took = _run(
        "import sys, time\nfrom pipeline.app import ShutdownWatchdog\n"
        "w = ShutdownWatchdog(0.5)\nw.arm()\nw.disarm()\ntime.sleep(1.0)\nsys.exit(7)\n"
    )
    assert code == 7
    assert took >= 1.0
