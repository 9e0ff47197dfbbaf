"""Observability acceptance (issue 5) with a running pipeline: metrics scraped over HTTP and
parsed with prometheus-client's text parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors.connect_client import ConnectClient
from tests.e2e.conftest import E2EPipeline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:  # type: ignore[type-arg]
    for (n, lbls), v in samples.items():
        if n == name and all(dict(lbls).get(k) == want for k, want in labels.items()):
            return float(v)
    return None


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def with_metrics(p: E2EPipeline, port: int, interval_s: float = 1.0) -> Path:
    """A copy of the pipeline's config serving metrics on ``port`` with a fast monitor."""
    doc = yaml.safe_load(p.config_path.read_text())
    doc["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    doc["monitor"] = {"interval_s": interval_s, "wal_rate_window_s": 10, "connector_auto_restart": False}
    path = p.config_path.with_name(f"metrics-{port}.yaml")
    path.write_text(yaml.safe_dump(doc))
    return path


def test_heartbeat_lag_slot_retention_and_consumer_lag(e2e) -> None:  # type: ignore[no-untyped-def]
    p = e2e(["CREATE TABLE public.items (id int PRIMARY KEY, v text)"], ["public.items"])
    port, ctl_port = free_port(), free_port()
    p.config_path = with_metrics(p, port)
    worker = p.start_worker()
    # The monitors run in the control plane (its own process and metrics port).
    control = _start_cli(p, "control", with_metrics(p, ctl_port), "control.log")
    p.workers.append(control)  # stopped with the workers at teardown if the test fails first
    wait_for(lambda: _up(ctl_port), 30, "the control plane's endpoint")
    p.source("INSERT INTO public.items SELECT g, 'x' FROM generate_series(1, 100) g")
    p.wait_converged()
    source, pipeline = p.settings.sources[0].name, p.pipeline_name
    slot = p.settings.sources[0].resolved_slot_name

    # Idle source, pipeline running: heartbeats (every 1 s) keep the measured lag small.
    def heartbeat_small() -> bool:
        age = value(scrape(ctl_port), "cdc_heartbeat_age_seconds", pipeline=pipeline, source=source)
        return age is not None and age < 10

    wait_for(heartbeat_small, 60, "a small heartbeat age")

    # Every partition's lag reaches 0 (the heartbeat topic's gets a message a second, so one
    # sample may read 1 between a heartbeat and its apply: wait, don't sample once).
    def all_lag_zero() -> bool:
        s = scrape(port)
        lags = [v for (n, lbls), v in s.items() if n == "cdc_consumer_lag_messages" and ("pipeline", pipeline) in lbls]
        return bool(lags) and all(v == 0 for v in lags)

    wait_for(all_lag_zero, 60, "consumer lag 0 on every partition")
    assert value(scrape(ctl_port), "cdc_replication_slot_active", source=source, slot=slot) == 1
    assert value(scrape(ctl_port), "cdc_control_active") == 1
    worker_samples = scrape(port)
    assert (
        value(worker_samples, "cdc_events_applied_total", pipeline=pipeline, table="public.items", op="c") or 0
    ) >= 100
    # The data plane exports no control-plane series.
    assert value(worker_samples, "cdc_replication_slot_active", source=source, slot=slot) is None

    # Connector stopped, writes go on: the slot retains WAL and falls behind.
    client = ConnectClient(p.settings.connect)
    connector = p.settings.sources[0].resolved_connector_name
    client.stop(connector)
    client.wait_for(connector, lambda st: st.state == "STOPPED", timeout_s=60)
    retained_before = value(scrape(ctl_port), "cdc_replication_slot_wal_retained_bytes", source=source, slot=slot) or 0
    p.source("INSERT INTO public.items SELECT g, repeat('y', 500) FROM generate_series(1000, 20000) g")

    def grew() -> bool:
        s = scrape(ctl_port)
        behind = value(s, "cdc_replication_slot_bytes_behind", source=source, slot=slot) or 0
        retained = value(s, "cdc_replication_slot_wal_retained_bytes", source=source, slot=slot) or 0
        return behind > 1_000_000 and retained > retained_before + 1_000_000

    wait_for(grew, 60, "WAL retained and bytes behind to grow")
    wait_for(
        lambda: value(scrape(ctl_port), "cdc_replication_slot_active", source=source, slot=slot) == 0,
        30,
        "the slot to be reported inactive",
    )
    client.resume(connector)

    def fell_back() -> bool:
        behind = value(scrape(ctl_port), "cdc_replication_slot_bytes_behind", source=source, slot=slot)
        return behind is not None and behind < 1_000_000

    wait_for(fell_back, 120, "bytes behind to fall back after the connector resumed")
    p.wait_converged()
    client.close()

    # Pipeline stopped, control replaced by one started with the old `monitor` name: it takes the
    # lease the first one released and sees the heartbeat age grow.
    assert p.stop_worker(worker) == 0
    control.terminate()
    assert control.wait(30) == 0
    mon_port = free_port()
    mon = _start_cli(p, "monitor", with_metrics(p, mon_port), "monitor.log")
    try:
        wait_for(lambda: _up(mon_port), 30, "the monitor's endpoint")

        def heartbeat_grew() -> bool:
            age = value(scrape(mon_port), "cdc_heartbeat_age_seconds", pipeline=pipeline, source=source)
            return age is not None and age > 8

        wait_for(heartbeat_grew, 60, "the heartbeat age to grow while the pipeline is stopped")
    finally:
        mon.terminate()
        mon.wait(30)


def _start_cli(p, command: str, config: Path, log_name: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    log = (p.log_dir / log_name).open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", command, "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
