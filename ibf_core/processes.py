"""Which process is this, and is that one still running?

A pid alone cannot say: after a crash the kernel may give the same pid to an unrelated process. So a process is
named by its host, pid and start token (the boot id and the start time in clock ticks since boot, from ``/proc``);
a process with that pid but another start token is a different process. Where ``/proc`` is missing (macOS) the
start token is unknown and a live pid counts as the same process: never declare a live run dead.

Why a process died is known only to its parent (the exit status); anyone else can ask the kernel log whether the
OOM killer killed it (:func:`oom_killed`, where ``/dev/kmsg`` or ``dmesg`` is readable).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
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


def _boot_time() -> float | None:
    """When this machine booted (epoch seconds), or None."""
    try:
        return next(float(line.split()[1]) for line in (_PROC / "stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None


def started_at(pid: int) -> float | None:
    """Wall-clock start time of a running process (epoch seconds), or None when unknown."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    boot = _boot_time()
    return None if boot is None else boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


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


# "Out of memory: Killed process 4242 (python) total-vm:...", "Memory cgroup out of memory: Killed process 4242 ...",
# "oom-kill:constraint=CONSTRAINT_NONE,...,task=python,pid=4242,uid=1000"
_OOM_KILLS = (re.compile(r"\bKilled process (\d+)\b"), re.compile(r"\boom-kill:.*[,:]pid=(\d+)\b"))
_DMESG_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")


def oom_victims(message: str) -> set[int]:
    """Pids a kernel log message says the OOM killer killed (none for any other message)."""
    return {int(m.group(1)) for pattern in _OOM_KILLS for m in pattern.finditer(message)}


def _kmsg() -> list[tuple[float | None, str]] | None:
    """(seconds since boot, message) of every record in ``/dev/kmsg``; None when unreadable (no privilege)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    records: list[tuple[float | None, str]] = []
    try:
        while True:
            try:
                raw = os.read(fd, 8192)  # one record per read
            except BlockingIOError:  # no more records
                break
            except BrokenPipeError:  # records overwritten while reading: go on with the oldest left
                continue
            except OSError:
                return records or None
            if not raw:
                break
            head, _, message = raw.decode(errors="replace").partition(";")
            fields = head.split(",")
            micros = fields[2] if len(fields) > 2 and fields[2].isdigit() else None
            records.append((int(micros) / 1e6 if micros else None, message.split("\n", 1)[0]))
    finally:
        os.close(fd)
    return records


def _dmesg() -> list[tuple[float | None, str]] | None:
    """The same from ``dmesg`` (where /dev/kmsg cannot be opened but dmesg is allowed)."""
    if shutil.which("dmesg") is None:
        return None
    try:
        done = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    records: list[tuple[float | None, str]] = []
    for line in done.stdout.splitlines():
        match = _DMESG_LINE.match(line)
        records.append((float(match.group(1)), match.group(2)) if match else (None, line))
    return records


def oom_killed(pid: int, since: float | None = None, slack_s: float = 60.0) -> bool | None:
    """Whether the kernel log says the OOM killer killed ``pid`` (at or after ``since``, epoch seconds, when given):
    True or False, None when the log is unreadable. The log names pids of the kernel's namespace: for a process
    of a container with its own pid namespace it says False, which only means "not known"."""
    records = _kmsg()
    if records is None:
        records = _dmesg()
    if records is None:
        return None
    boot = _boot_time()
    for seconds, message in records:
        if since is not None and boot is not None and seconds is not None and boot + seconds < since - slack_s:
            continue  # an older kill of a process that had the same pid
        if pid in oom_victims(message):
            return True
    return False


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


def rss_mib(pid: int | None = None) -> float | None:
    """Resident memory of a process (this one by default) in MiB; None where ``/proc`` cannot tell."""
    try:
        pages = int((_PROC / str(pid or "self") / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def available_memory_mib() -> float | None:
    """Memory this process may still take: the kernel's MemAvailable, lowered by a cgroup limit when one is set."""
    available = None
    try:
        for line in (_PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        try:
            group = _cgroup_dir()
            limit = (group / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2**60:
                continue
            room = (int(limit) - int((group / usage_file).read_text().strip())) / 2**20
            available = room if available is None else min(available, room)
        except (OSError, ValueError):
            continue
    return available


def _cgroup_dir() -> Path:
    """This process's cgroup folder (v2 unified, or v1 memory controller)."""
    for line in (_PROC / "self" / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("", "memory") or "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup") if controllers == "" else Path("/sys/fs/cgroup/memory")
            return base / path.lstrip("/")
    raise OSError("no memory cgroup")
