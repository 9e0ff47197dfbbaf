"""The control plane's composition and lease bookkeeping, without Kafka: which loops an active
replica runs, that they start on acquiring the lease and stop on losing it, and the exit codes."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from pipeline.control import plane as plane_module
from pipeline.control.lease import lease_name
from pipeline.control.plane import EXIT_LEASE_LOST, ControlPlane, Loops, build_loops
from pipeline.control.polling import PollingMonitor
from pipeline.core.settings.root import Settings


def _settings(**verify: float) -> Settings:
    source = {"name": "app", "host": "127.0.0.1", "port": 1, "database": "d", "user": "u", "tables": ["public.t"]}
    pipes = [
        {"name": "p1", "source": "app", "target": {"url": "sqlite:////tmp/p1.db"}},
        {"name": "p2", "source": "app", "target": {"url": "sqlite:////tmp/p2.db"}},
    ]
    return Settings(sources=[source], pipelines=pipes, verify=verify, metrics={"enabled": False})


def test_active_loops_per_source_and_pipeline() -> None:
    loops = build_loops(_settings(), ["app"])
    kinds = sorted(m.kind for m in loops.monitors)
    # slot monitor and connector monitor, one snapshot coordinator, a cutover readiness monitor and a
    # cutover phase monitor per pipeline
    assert kinds == sorted(["slot", "connect", "snapshot"] + ["cutover", "cutover-phase"] * 2), kinds
    with_schedule = build_loops(_settings(schedule_interval_s=3600), ["app"])
    scheduled = [m for m in with_schedule.monitors if m.kind == "verify"]
    assert sorted(m.name for m in scheduled) == ["p1", "p2"]
    assert all(m.interval_s == 3600 for m in scheduled)


def test_lease_name_is_shared_by_planes_of_the_same_sources() -> None:
    assert lease_name(["b", "a"]) == lease_name(["a", "b"]) == "a.b"
    assert lease_name(["a"]) != lease_name(["a", "b"])
    assert lease_name(["we ird/name"]) == "we_ird_name"


class _Loop(PollingMonitor):
    kind = "fake"

    def poll_once(self) -> None:
        self.healthy = True


class _FakeLease:
    """Stands in for KafkaLease: ``poll`` plays a scripted sequence of acquire/lose events."""

    def __init__(self, script: Sequence[str], on_acquired, on_lost) -> None:  # type: ignore[no-untyped-def]
        self.script = list(script)
        self.on_acquired, self.on_lost = on_acquired, on_lost
        self.name, self.replica, self.active, self.closed = "app", "r1", False, False

    def join(self) -> None:
        return None

    def poll(self, timeout_s: float = 0.5) -> None:
        step = self.script.pop(0) if self.script else "idle"
        if step == "acquire":
            self.active = True
            self.on_acquired()
        elif step == "lose":
            self.active = False
            self.on_lost()

    def close(self) -> None:
        self.closed = True
        if self.active:  # a clean close revokes first, as librdkafka does
            self.active = False
            self.on_lost()


def _plane(monkeypatch: pytest.MonkeyPatch, script: Sequence[str], built: list[Loops]) -> ControlPlane:
    monkeypatch.setattr(
        plane_module, "KafkaLease", lambda _conf, _name, on_acquired, on_lost: _FakeLease(script, on_acquired, on_lost)
    )

    def loops(_s: Settings, _sources: Sequence[str]) -> Loops:
        made = Loops([_Loop("one", 60), _Loop("two", 60)])
        built.append(made)
        return made

    return ControlPlane(_settings(), loops=loops, stop_timeout_s=2)


def test_loops_run_only_while_the_lease_is_held_and_losing_it_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Loops] = []
    plane = _plane(monkeypatch, ["idle", "acquire", "idle", "lose"], built)
    assert plane.run(threading.Event()) == EXIT_LEASE_LOST
    assert len(built) == 1
    assert all(not m.running for m in built[0].monitors)
    assert all(m.polls >= 1 for m in built[0].monitors)  # they did run while the lease was held


def test_a_standby_builds_nothing_and_a_requested_stop_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Loops] = []
    stop = threading.Event()
    plane = _plane(monkeypatch, ["idle", "idle"], built)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    assert plane.run(stop) == 0
    assert built == []  # a standby opens no database or Connect connection


def test_a_stop_while_active_is_no_lease_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Loops] = []
    stop = threading.Event()
    plane = _plane(monkeypatch, ["acquire"], built)
    threading.Timer(0.3, stop.set).start()
    assert plane.run(stop) == 0
    assert plane.lease.closed  # type: ignore[attr-defined]
    assert all(not m.running for m in built[0].monitors)
