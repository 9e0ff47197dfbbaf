"""The cutover's write pause under pgbench: the scenario of the issue 21 acceptance test
(tests/e2e/cutover_harness.py), run once, with its figures printed.

Against a running local stack: a fresh database on both clusters (old primary = the SOURCE
cluster, new primary = the TARGET cluster, pre-created by ``pg_dump --schema-only``), the forward
and reverse pipelines in ``target.versions: table`` mode as ``cdc-pipeline run`` processes, a clean
``cdc-pipeline verify`` before the load, then ``pgbench -R RATE -c CLIENTS`` as the application
role on the old primary while ``cdc-pipeline cutover run --reverse --json`` runs (gate held
``--stable-s`` seconds, heartbeats every second), then pgbench on the new primary for ``--after``
seconds and the wait until the reverse pipeline has brought the old primary up to date.

The write pause is the report's own figure: from the fence (just before ``ALTER ROLE``) until
phase ``done`` is durable. Printed with the phase times, pgbench's counts and the machine load
(``uptime``). No assertion on the figures.

    .venv/bin/python bench/cutover_write_pause.py                           # 500 tx/s, 4 clients
    .venv/bin/python bench/cutover_write_pause.py --rate 1000 --state-dir .local-stack-test

Exit status: 0 when the cutover succeeded and both sides hold the same data at the end, 1
otherwise, 2 when the stack is unreachable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.localstack import LocalStackSettings, settings_for  # noqa: E402
from tests.e2e.cutover_harness import Names, Scenario, run_cutover_under_load, tokens  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=500, help="pgbench rate, tx/s (default 500)")
    p.add_argument("--clients", type=int, default=4, help="pgbench clients (default 4)")
    p.add_argument("--lead", type=float, default=10, help="seconds of load before the cutover starts (default 10)")
    p.add_argument("--after", type=int, default=20, help="seconds of pgbench on the new primary (default 20)")
    p.add_argument("--stable-s", type=float, default=5, help="cutover.stable_s of the gate (default 5)")
    p.add_argument("--attempts", type=int, default=3, help="cutover runs when the gate refuses (default 3)")
    p.add_argument("--state-dir", type=Path, default=None, help="local stack state folder (default .local-stack)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, config, command output)")
    return p.parse_args(argv)


def phase_times(report: Any) -> dict[str, Any]:
    """The per-phase seconds of the cutover report (its ``durations``): the first mapping under a
    key naming phases, timings or durations whose values are numbers."""
    stack = [report]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            for key, value in node.items():
                if _timings(key, value):
                    return dict(value)
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return {}


def _timings(key: Any, value: Any) -> bool:
    named = any(w in str(key) for w in ("phase", "timing", "duration"))
    return named and isinstance(value, dict) and bool(value) and all(isinstance(v, int | float) for v in value.values())


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def reachable(stack: LocalStackSettings) -> bool:
    try:
        with psycopg.connect(
            f"postgresql://postgres:postgres@{stack.host}:{stack.source_pg_port}/postgres", connect_timeout=5
        ):
            return True
    except psycopg.OperationalError as exc:
        print(f"the local stack is not reachable: {exc}", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = settings_for(args.state_dir if args.state_dir is not None else REPO / ".local-stack")
    if not reachable(stack):
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cutover-bench-"))
    scenario = Scenario(stack, Names(next(tokens())), workdir, log=lambda line: print(line, file=sys.stderr))
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"load before: {uptime()}")
    try:
        scenario.setup(stable_s=args.stable_s)
        outcome = run_cutover_under_load(
            scenario, rate=args.rate, clients=args.clients, lead_s=args.lead, after_s=args.after, attempts=args.attempts
        )
    except AssertionError as exc:
        print(f"the scenario failed: {exc}\nwork folder: {workdir}", file=sys.stderr)
        return 1
    finally:
        load_after = uptime()
        scenario.cleanup()
    print(f"load after: {load_after}")
    print("commands:")
    for command in scenario.commands:
        print(f"  {command}")
    print(f"cutover run exit: {outcome.cutover_rc}")
    print(f"write pause: {outcome.write_pause_s} s")
    print(f"phase times: {json.dumps(phase_times(outcome.report))}")
    print(f"pgbench processed: {outcome.processed_old} on the old primary, {outcome.processed_new} on the new")
    print(f"reverse caught up {outcome.catch_up_s:.1f} s after pgbench on the new primary ended")
    print(f"seconds: {json.dumps({k: round(v, 1) for k, v in outcome.seconds.items()})}")
    if args.keep or outcome.cutover_rc != 0:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if outcome.cutover_rc != 0:
        print(f"report: {json.dumps(outcome.report)[:4000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
