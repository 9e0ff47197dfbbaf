"""Cases of the SQLAlchemy targets beyond the shared contract (test_target_contract.py): the
MariaDB/SQLite type mapping read back raw, MariaDB's refusal of extra unique indexes, and a
MariaDB server that stops answering mid-transaction (a TCP forwarder that stops forwarding)."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.events import Column, Op, TableId
from sinks.base import BatchRejectedError, TransientSinkError
from tests.integration.targets import GROUP, Backend, ev, open_backend, run_bounded

SRC = "__debezium.source.column.type"


@pytest.fixture(params=["mariadb", "sqlite"])
def sa_backend(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Backend]:
    with open_backend(request.param, request, tmp_path, unique) as b:
        yield b


@pytest.fixture
def mariadb(request: pytest.FixtureRequest, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Backend]:
    with open_backend("mariadb", request, tmp_path, unique) as b:
        yield b


def test_types_round_trip(sa_backend: Backend) -> None:
    source = TableId("public", "typed")
    cols = (
        Column("id", "int64", optional=False),
        Column("n38", "bytes", logical="org.apache.kafka.connect.data.Decimal",
               parameters={"scale": "10", SRC: "NUMERIC", "__debezium.source.column.length": "38",
                           "__debezium.source.column.scale": "10"}),
        Column("nfree", "struct", logical="io.debezium.data.VariableScaleDecimal", parameters={SRC: "NUMERIC"}),
        Column("ts", "int64", logical="io.debezium.time.MicroTimestamp", parameters={SRC: "TIMESTAMP"}),
        Column("tstz", "string", logical="io.debezium.time.ZonedTimestamp", parameters={SRC: "TIMESTAMPTZ"}),
        Column("tmtz", "string", logical="io.debezium.time.ZonedTime", parameters={SRC: "TIMETZ"}),
        Column("u", "string", logical="io.debezium.data.Uuid", parameters={SRC: "UUID"}),
        Column("j", "string", logical="io.debezium.data.Json", parameters={SRC: "JSONB"}),
        Column("ba", "bytes", parameters={SRC: "BYTEA"}),
        Column("ta", "array", parameters={SRC: "_TEXT"}, items=Column("", "string")),
        Column("iv", "int64", logical="io.debezium.time.MicroDuration", parameters={SRC: "INTERVAL"}),
        Column("b", "boolean", parameters={SRC: "BOOL"}),
    )  # fmt: skip
    big = Decimal("3.14159265358979323846264338327950288419716939937510")
    after = {
        "id": 1,
        "n38": Decimal("1234567890123456789012345678.0123456789"),
        "nfree": big,
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        "tstz": dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        "tmtz": dt.time(10, 34, 56, 123456, tzinfo=dt.UTC),
        "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "j": '{"b": {"c": null}}',
        "ba": b"\xde\xad\xbe\xef\x00",
        "ta": ["x", None, "z y"],
        "iv": dt.timedelta(days=3, seconds=5, microseconds=7),
        "b": True,
    }
    sa_backend.apply(sa_backend.target(), ev(Op.CREATE, (1, 1), 1, after, table=source, columns=cols))
    names = tuple(c.name for c in cols)
    (row,) = sa_backend.rows(TableId(sa_backend.schema, "typed"), names)
    got = dict(zip(names, row, strict=True))
    assert Decimal(str(got["n38"])) == after["n38"]
    assert Decimal(str(got["nfree"])) == big  # exact: stored as text where DECIMAL(65,30) would round
    assert str(got["ts"]).startswith("2024-01-02 03:04:05.678901")
    assert str(got["tstz"]).startswith("2024-01-01 21:34:05.678901")  # normalised to UTC
    assert str(got["tmtz"]).startswith("10:34:56.123456")
    assert got["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert got["j"] == '{"b": {"c": null}}'
    assert bytes(got["ba"]) == b"\xde\xad\xbe\xef\x00"
    assert got["ta"] == '["x",null,"z y"]'
    assert got["iv"] == (3 * 86400 + 5) * 1_000_000 + 7
    assert got["b"] in (1, True)


def test_mariadb_table_with_another_unique_index_is_refused(mariadb: Backend) -> None:
    """ON DUPLICATE KEY UPDATE fires on any unique index: the sink refuses such a table."""
    mariadb.execute(f"CREATE DATABASE `{mariadb.schema}`")
    mariadb.execute(
        f"CREATE TABLE `{mariadb.schema}`.items (id INT PRIMARY KEY, name VARCHAR(20), amount DECIMAL(10,2),"
        " __cdc_commit_lsn BIGINT NOT NULL, __cdc_lsn BIGINT NOT NULL, UNIQUE KEY by_name (name))"
    )
    # A plain mysql:// URL to a MariaDB server works too (the server kind is learnt on connect).
    target = mariadb.target(url=mariadb.settings["url"].replace("mariadb+pymysql://", "mysql://"))
    assert target.kind == "mysql"
    with pytest.raises(BatchRejectedError, match="unique index"):
        mariadb.apply(target, ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}), offsets={("t", 0): 1})
    assert target.stored_offsets(GROUP, [("t", 0)]) == {}


class Forwarder:
    """A local TCP forwarder to ``upstream``; :meth:`pause` stops forwarding in both directions
    (bytes are held, connections stay open), as a frozen server or host would behave."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                self._forwarding.wait()
                if self._closed:
                    return
                dst.sendall(data)

    def pause(self) -> None:
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._forwarding.set()


def test_frozen_mariadb_is_cut_at_the_stall_timeout_and_reported_transient(mariadb: Backend) -> None:
    """The server stops answering mid-stream (the forwarder holds every byte): ``apply`` raises
    TransientSinkError within about ``stall_timeout_s`` instead of hanging; once the server
    answers again the same batch applies on a new connection."""
    stall_s = 3.0
    forwarder = Forwarder((mariadb.engine.url.host or "127.0.0.1", int(mariadb.engine.url.port or 3306)))
    try:
        url = mariadb.settings["url"].replace(f":{mariadb.engine.url.port}/", f":{forwarder.port}/")
        target = mariadb.target(url=url, stall_timeout_s=stall_s)
        mariadb.apply(target, ev(Op.CREATE, (1, 1), 1, {"id": 1, "name": "a", "amount": None}))
        update = ev(Op.UPDATE, (2, 2), 1, {"id": 1, "name": "b", "amount": None})
        forwarder.pause()
        finished, error, elapsed = run_bounded(lambda: mariadb.apply(target, update), stall_s + 20)
        if not finished:
            forwarder.close()  # unblocks the hung call
            pytest.fail(f"apply still blocked after {elapsed:.0f}s with stall_timeout_s={stall_s:g}")
        assert isinstance(error, TransientSinkError), error
        assert elapsed < stall_s + 10
        forwarder.resume()
        mariadb.apply(target, update)
        target.close()
    finally:
        forwarder.close()
    assert mariadb.rows() == [(1, "b", None)]
