"""Which process is this, and is that one still running?

A pid alone cannot say: after a crash the kernel may give the same pid to an unrelated process. So a process is
named by its host, pid and start token (the boot id and the start time in clock ticks since boot, from ``/proc``);
a process with that pid but another start token is a different process. Where ``/proc`` is missing (macOS) the
start token is unknown and a live pid counts as the same process: never declare a live run dead.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessRef:
    """A process on a host; ``start`` is its start token (None when the platform cannot tell)."""

    host: str
    pid: int
    start: str | None = None


def this_host() -> str:
    return socket.gethostname()


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _boot_id() -> str:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def start_token(pid: int) -> str | None:
    """``<boot id>:<start ticks>`` of a running process, or None (no such process, or no ``/proc``)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return f"{_boot_id()}:{fields[19]}"  # field 22 of stat: starttime, in clock ticks since boot


def started_at(pid: int) -> float | None:
    """Wall-clock start time of a running process (epoch seconds), or None when unknown."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        boot = next(
            float(line.split()[1]) for line in (_PROC / "stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def current() -> ProcessRef:
    pid = os.getpid()
    return ProcessRef(this_host(), pid, start_token(pid))


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X")  # a zombie has finished; only its parent has not reaped it yet
    if _PROC.is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def is_running(ref: ProcessRef) -> bool | None:
    """Whether the process ``ref`` still runs: True, False, or None for a process of another host (unknowable)."""
    if ref.host != this_host():
        return None
    if not _pid_exists(ref.pid):
        return False
    if ref.start is None:
        return True
    token = start_token(ref.pid)
    return token is None or token == ref.start


def ran_since(pid: int, when: float, slack_s: float = 2.0) -> bool:
    """Whether a running process ``pid`` is the one that existed at ``when`` (it started no later than that)."""
    if not _pid_exists(pid):
        return False
    started = started_at(pid)
    return started is None or started <= when + slack_s


def command_line(pid: int, limit: int = 120) -> str | None:
    """The command line of a local process, shortened to ``limit`` characters (None when unreadable)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    text = " ".join(part for part in raw.decode(errors="replace").split("\0") if part)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (for a server a test, benchmark or ``ibf stack`` starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
