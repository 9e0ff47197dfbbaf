"""Detection of a connector whose slot or stored position is gone (pure), and the recovery's
plan and preconditions; the recovery itself runs on the real stack (tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.connect_client import SourceOffset
from connectors.slots import SlotState, format_lsn, parse_lsn
from pipeline.control.recovery import (
    Problem,
    RecoverOptions,
    Recovery,
    SourceView,
    diagnose,
    offset_lsn,
    snapshot_in_progress,
)
from pipeline.core.settings.models import SourceSettings
from pipeline.core.settings.root import Settings

TRACE = (
    "io.debezium.DebeziumException: The connector is trying to read change stream starting at "
    "PostgresOffsetContext [lsn=LSN{0/1A2B3C}], but this is no longer available on the server. "
    "Reconfigure the connector to use a snapshot mode when needed.\n\tat io.debezium.connector.common.BaseSourceTask"
)
FIX = "cdc-pipeline connectors recover -c FILE --source app"


def source(**overrides: Any) -> SourceSettings:
    data: dict[str, Any] = {
        "name": "app",
        "host": "db.internal",
        "database": "shop",
        "user": "debezium",
        "tables": ["public.orders", "public.lines"],
    }
    data.update(overrides)
    return SourceSettings(**data)


def slot(restart: int = 1000, wal_status: str = "reserved", active: bool = False) -> SlotState:
    return SlotState("cdc_app", "pgoutput", "logical", "shop", active, None, wal_status, restart, restart + 10)


def offsets(lsn_proc: int | None = 2000, **extra: Any) -> list[SourceOffset]:
    offset: dict[str, Any] = {"lsn": 2100, "txId": 7, "ts_usec": 1, **extra}
    if lsn_proc is not None:
        offset["lsn_proc"] = lsn_proc
    return [SourceOffset({"server": "app"}, offset)]


def test_lsn_text_round_trip() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848") or 0) == "16/B374D848"
    assert parse_lsn(None) is None


def test_offset_lsn_prefers_lsn_proc() -> None:
    assert offset_lsn(offsets(2000)) == 2000
    assert offset_lsn(offsets(None)) == 2100
    assert offset_lsn([]) is None
    assert offset_lsn([SourceOffset({}, {})]) is None


def test_snapshot_in_progress_until_the_snapshot_key_goes() -> None:
    assert snapshot_in_progress(offsets(snapshot="INITIAL", snapshot_completed=False))
    assert not snapshot_in_progress(offsets(snapshot="INITIAL", snapshot_completed=True))
    assert not snapshot_in_progress(offsets())


def test_healthy_connector_has_no_diagnosis() -> None:
    view = SourceView(slot(restart=1000), current_lsn=5000)
    assert diagnose(source(), trace=None, view=view, offsets=offsets(2000)) is None
    # a first start: no offset yet and no slot yet
    assert diagnose(source(), trace=None, view=SourceView(None, 5000), offsets=[]) is None


def test_lost_wal() -> None:
    found = diagnose(source(), trace=None, view=SourceView(slot(wal_status="lost"), 5000), offsets=offsets())
    assert found is not None and found.problem is Problem.SLOT_LOST and found.recoverable
    assert found.fix == FIX
    assert found.line() == "position lost (slot lost): slot cdc_app lost its WAL (wal_status 'lost')"


def test_slot_missing_with_a_stored_offset() -> None:
    found = diagnose(source(), trace=None, view=SourceView(None, 0x2_0000_0000), offsets=offsets(0x1_0000_0010))
    assert found is not None and found.problem is Problem.SLOT_MISSING
    assert "slot cdc_app does not exist but Connect holds an offset at 1/10" in found.line()


def test_slot_recreated_after_the_offset() -> None:
    found = diagnose(source(), trace=None, view=SourceView(slot(restart=3000), 5000), offsets=offsets(2000))
    assert found is not None and found.problem is Problem.SLOT_AHEAD
    assert format_lsn(3000) in found.detail and format_lsn(2000) in found.detail


def test_another_server_is_not_recoverable_by_snapshot_alone() -> None:
    found = diagnose(source(), trace=None, view=SourceView(slot(restart=10), 100), offsets=offsets(2000))
    assert found is not None and found.problem is Problem.SERVER_BEHIND
    assert not found.recoverable
    assert found.fix.startswith("reload the target") and found.fix.endswith(FIX)


def test_debeziums_message_alone_is_enough() -> None:
    found = diagnose(source(), trace=TRACE, view=None, offsets=None)
    assert found is not None and found.problem is Problem.UNAVAILABLE
    assert diagnose(source(), trace="java.lang.OutOfMemoryError", view=None, offsets=None) is None


def test_unknown_source_does_not_claim_a_missing_slot() -> None:
    assert diagnose(source(), trace=None, view=None, offsets=offsets()) is None


def _recovery(options: RecoverOptions, **src: Any) -> Recovery:
    settings = Settings.model_validate(
        {
            "sources": [source(**src).model_dump(mode="json", exclude_none=True)],
            "pipelines": [{"name": "p", "source": "app", "target": {"url": "postgresql://u@h/db"}}],
        }
    )
    return Recovery(settings, settings.sources[0], None, options, print)  # type: ignore[arg-type]


def test_plan_of_an_initial_recovery() -> None:
    recovery = _recovery(RecoverOptions())
    assert recovery.problems() == []
    plan = recovery.plan()
    assert plan[0].startswith("stop connector cdc-app (PUT /connectors/cdc-app/stop)")
    assert plan[1] == "delete its Connect offsets (DELETE /connectors/cdc-app/offsets)"
    assert plan[2].startswith("drop replication slot cdc_app if it exists")
    assert plan[3].startswith("source prepare")
    assert "snapshots every table" in plan[4]
    assert plan[-1] == "verify the pipelines of the source (p)"


def test_plan_of_an_incremental_recovery() -> None:
    plan = _recovery(RecoverOptions(snapshot="incremental", tables=("public.lines",), repair=True)).plan()
    assert any("snapshot.mode=no_data" in step for step in plan)
    assert any(step.startswith("incremental snapshot of public.lines") for step in plan)
    assert plan[-1] == "verify and repair the pipelines of the source (p)"


@pytest.mark.parametrize("mode", ["no_data", "initial_only"])
def test_initial_recovery_needs_a_streaming_snapshot_mode(mode: str) -> None:
    (problem,) = _recovery(RecoverOptions(), snapshot_mode=mode).problems()
    assert f"snapshot_mode is {mode}" in problem and "--snapshot incremental" in problem
    assert _recovery(RecoverOptions(snapshot="incremental"), snapshot_mode=mode).problems() == []


def test_initial_recovery_of_a_bulk_source_is_refused() -> None:
    (problem,) = _recovery(RecoverOptions(), initial_load="bulk").problems()
    assert "initial_load is bulk" in problem and "--snapshot incremental" in problem
    assert _recovery(RecoverOptions(snapshot="incremental"), initial_load="bulk").problems() == []


def test_unknown_tables_are_refused() -> None:
    (problem,) = _recovery(RecoverOptions(snapshot="incremental", tables=("public.nope",))).problems()
    assert problem == "not captured by source app: public.nope"
