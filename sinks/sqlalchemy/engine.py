"""The SQLAlchemy engine of the sink and its stall guard: session settings per dialect (SQLite
``BEGIN IMMEDIATE`` in WAL mode, MariaDB UTC, strict ``sql_mode``, READ COMMITTED) and a timer
that cuts a MariaDB transaction a frozen server would hold forever (see :mod:`sinks.sqlalchemy.sink`)."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from pipeline.core.logs import get_logger
from sinks.sqlalchemy.types import MYSQL, SQLITE

log = get_logger(__name__)

DEFAULT_STALL_TIMEOUT_S = 120.0
_MYSQL_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"


def make_engine(url: URL, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> Engine:
    """An engine for a ``mysql+pymysql``/``mariadb+pymysql`` or ``sqlite`` URL with the session
    settings of the module docstring; ``stall_timeout_s`` (seconds) is the SQLite busy timeout
    and the MariaDB socket read/write timeout. Raises ValueError for another dialect."""
    if url.get_backend_name() == SQLITE:
        engine = sa.create_engine(url, connect_args={"timeout": stall_timeout_s}, poolclass=sa.pool.NullPool)
        busy_ms = max(int(stall_timeout_s * 1000), 1)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (SQLAlchemy "pysqlite" docs)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.get_backend_name() not in (MYSQL, "mariadb"):
        raise ValueError(f"the SQLAlchemy sink supports mysql/mariadb and sqlite URLs, not {url.drivername!r}")
    engine = sa.create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_size=2,
        connect_args={
            "connect_timeout": 10,
            "charset": "utf8mb4",
            "read_timeout": stall_timeout_s,
            "write_timeout": stall_timeout_s,
        },
    )

    @sa.event.listens_for(engine, "connect")
    def _mysql_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SET SESSION time_zone = '+00:00'")
        cur.execute(f"SET SESSION sql_mode = '{_MYSQL_SQL_MODE}'")
        cur.close()

    return engine


class StallGuard:
    """Context of one MariaDB transaction: when it runs longer than ``timeout_s`` (seconds),
    shut the PyMySQL connection's socket down from a timer thread, so the blocked read fails
    with a lost connection (``fired`` tells the caller why). A frozen server's kernel keeps the
    TCP connection open, so only a timeout of our own notices."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._sock: socket.socket | None = None
        self.fired = False

    def arm(self, conn: Connection) -> None:
        """Start the clock on ``conn``'s DBAPI connection (a ``pymysql.Connection``)."""
        sock = getattr(conn.connection.dbapi_connection, "_sock", None)
        if not isinstance(sock, socket.socket):
            return  # not a PyMySQL connection: the socket timeouts still bound every read
        with self._lock:
            self._sock = sock
            self._timer = threading.Timer(self._timeout_s, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        """Stop the clock (the transaction ended, either way)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self._sock = None

    def _fire(self) -> None:
        with self._lock:
            if self._sock is None:
                return
            self.fired = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        log.warning("target stalled: connection dropped", timeout_s=self._timeout_s)
