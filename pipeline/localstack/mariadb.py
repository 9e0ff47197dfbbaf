"""The local stack's MariaDB target: Debian's ``mariadb-server`` run as a plain process.

First start: ``mariadb-install-db --no-defaults --datadir <root>/data`` (system tables, root
authenticated by password, empty, over the socket only), then ``mariadbd --no-defaults`` on a
loopback port and a private socket, and a bootstrap over that socket that creates the
development user ``cdc``/``cdc`` (all privileges, reachable over TCP). As root, the server runs
as the ``mysql`` OS user (``--user=mysql``). MariaDB Server docs: "mariadb-install-db",
"mariadbd Options", "CREATE USER".
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pymysql

from pipeline.localstack import procs
from pipeline.localstack.config import MARIADB_PASSWORD, MARIADB_USER, LocalStackSettings
from pipeline.localstack.jars import ToolMissingError
from pipeline.localstack.services import Health


def mariadb_binaries() -> tuple[str, str]:
    """Paths of ``mariadbd`` and ``mariadb-install-db``; raises ToolMissingError (with the
    install command) when Debian's ``mariadb-server`` is not installed."""
    server = shutil.which("mariadbd") or ("/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None)
    install = shutil.which("mariadb-install-db")
    if server is None or install is None:
        raise ToolMissingError("mariadbd not found: install MariaDB (apt-get install -y mariadb-server)")
    return server, install


class MariaDBServer:
    """A MariaDB server of the local stack (the second target) on a loopback port.

    ``root`` is where data, socket, PID file and error log live (under the same data root as
    the PostgreSQL clusters, reachable by the ``mysql`` OS user).
    """

    name = "mariadb"

    def __init__(self, settings: LocalStackSettings, root: Path) -> None:
        self._settings = settings
        self.port = settings.mariadb_port
        self.root = root / "mariadb"
        self.data = self.root / "data"

    @property
    def endpoint(self) -> str:
        """SQLAlchemy URL with the development user (password masked)."""
        return f"mariadb+pymysql://{MARIADB_USER}:***@{self._settings.host}:{self.port}/"

    @property
    def socket(self) -> Path:
        """The server's Unix socket (bootstrap only)."""
        return self.root / "mysqld.sock"

    @property
    def log_file(self) -> Path:
        """Error log (``--log-error``)."""
        return self.root / "error.log"

    @property
    def _pid_file(self) -> Path:
        return self.root / "mariadbd.pid"

    def _chown(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("mysql")
            for path in paths:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _install(self) -> None:
        _, install = mariadb_binaries()
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown(self.root)
        argv = [
            install,
            "--no-defaults",
            f"--datadir={self.data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if os.geteuid() == 0:
            argv.append("--user=mysql")
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=self.root)
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{proc.stdout}{proc.stderr}")

    def start(self) -> None:
        """Install the system tables on first use, then launch ``mariadbd`` (does not wait)."""
        if self.running_pid() is not None:
            return
        server, _ = mariadb_binaries()
        if not (self.data / "mysql").exists():
            self._install()
        argv = [
            server,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            f"--bind-address={self._settings.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.root / 'mariadbd.server.pid'}",
            f"--log-error={self.log_file}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=128M",
            "--innodb-flush-log-at-trx-commit=2",
            "--character-set-server=utf8mb4",
            "--max-connections=200",
        ]
        if os.geteuid() == 0:
            argv.append("--user=mysql")
        procs.spawn(argv, self._pid_file, self.root / "stdout.log")

    def running_pid(self) -> int | None:
        """PID of our server process, or None."""
        return procs.running_pid(self._pid_file, str(self.data))

    def stop(self) -> bool:
        """SIGTERM (clean shutdown), SIGKILL after 60 s; True when it was running."""
        return procs.stop(self._pid_file, str(self.data), timeout_s=60)

    def _bootstrap(self) -> None:
        """Create the development user over the socket (idempotent)."""
        conn = pymysql.connect(unix_socket=str(self.socket), user="root", password="", connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (MARIADB_USER, MARIADB_PASSWORD))
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'%%' WITH GRANT OPTION", (MARIADB_USER,))
        finally:
            conn.close()

    def connect(self, database: str | None = None) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        """A PyMySQL connection over TCP as the development user (autocommit)."""
        return pymysql.connect(
            host=self._settings.host,
            port=self.port,
            user=MARIADB_USER,
            password=MARIADB_PASSWORD,
            database=database,
            connect_timeout=3,
            autocommit=True,
        )

    def health(self) -> Health:
        """Running when our ``mariadbd`` lives; ready when the development user can query."""
        if self.running_pid() is None:
            return Health(False, False, "stopped")
        try:
            conn = self.connect()
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == 1045 and self.socket.exists():  # access denied: not bootstrapped
                try:
                    self._bootstrap()
                except pymysql.MySQLError as boot:
                    return Health(True, False, f"bootstrap failed: {boot}")
                return Health(True, False, "user created")
            return Health(True, False, f"not accepting connections: {exc}")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
        finally:
            conn.close()
        return Health(True, True, f"version {row[0] if row else '?'}")
