"""Start and stop detached processes tracked by PID files.

A PID file holds the PID of a process this stack started. Before signalling a PID we check
that its command line still names our state folder, so a reused PID of another program is
never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def spawn(argv: Sequence[str], pid_file: Path, log_file: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` in its own session with stdout/stderr appended to ``log_file``.

    Writes the PID to ``pid_file`` and returns it. Raises FileNotFoundError when the program
    does not exist.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    pid_file.write_text(f"{proc.pid}\n", encoding="ascii")
    return proc.pid


def read_pid(pid_file: Path) -> int | None:
    """The PID stored in ``pid_file`` or None when the file is missing or unreadable."""
    try:
        return int(pid_file.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> str:
    """The command line of ``pid`` with NULs as spaces, or '' when it does not exist."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ours(pid: int, marker: str) -> bool:
    """True when ``pid`` is alive (not a zombie) and its command line contains ``marker``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
    return state != "Z" and marker in cmdline(pid)


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The PID from ``pid_file`` if that process is alive and ours, else None."""
    pid = read_pid(pid_file)
    if pid is not None and is_ours(pid, marker):
        return pid
    return None


def stop(pid_file: Path, marker: str, timeout_s: float = 30.0) -> bool:
    """Stop the process of ``pid_file``: SIGTERM to its process group, SIGKILL after ``timeout_s``.

    Returns True when a process of ours was stopped, False when none was running. The PID
    file is removed either way.
    """
    pid = running_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_ours(pid, marker):
        time.sleep(0.2)
    if is_ours(pid, marker):
        _signal_group(pid, signal.SIGKILL)
        while is_ours(pid, marker):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)
