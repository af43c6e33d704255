"""Never a silent death: ``ibf train`` and ``ibf backfill`` run their work in a child process that this one watches.

A run executes in-process (``execute_in_process``), so when the kernel's OOM killer (or ``kill -9``, or a
segfault) ends that process nothing of it can report anything. Only its parent learns how it ended. So the console
script re-executes the same command line in a child (``python -c`` + :func:`child_main`) that inherits stdin,
stdout and stderr: its output, exit code and Ctrl-C behaviour are those of the unsupervised command. This process
forwards SIGINT and SIGTERM to it (the child runs in its own session, so a terminal's Ctrl-C reaches it once,
through here; Ctrl-Z stops and ``fg`` continues both) and waits. When the child ends by a signal, the runs it
started (tag ``ibf/pid`` = the child's pid, with its start token) that are not finished are marked FAILED with the
cause, their pool slots freed and an ``alerts`` row written (:func:`ibf_dagster.recovery.mark_dead`), and the
command prints one line::

    error: run <run_id> (trained_models) died: killed by signal 9 (out of memory?)

and exits with 128 + the signal. On Linux the child dies with this process (``PR_SET_PDEATHSIG``, SIGKILL): a
``kill -9`` of ``ibf`` takes its work along as it did before, and the next ``ibf`` command or the
``run_recovery`` sensor frees the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import subprocess
import sys

from ibf_core import processes
from ibf_core.settings import get_settings
from ibf_dagster.instance import get_instance

# Heavy imports (dagster) stay inside the functions that need them: importing this module loads none of them.

FORWARDED = (signal.SIGINT, signal.SIGTERM)
# The child's interpreter runs this; its argv: <supervisor pid> <entry point> <the ibf arguments>.
_CHILD = "from ibf_dagster.supervise import child_main; child_main()"
_PR_SET_PDEATHSIG = 1


def death_cause(signum: int) -> str:
    """``killed by signal 9 (out of memory?)``, ``killed by signal 11 (SIGSEGV)``."""
    if signum == signal.SIGKILL:
        return f"killed by signal {signum} (out of memory?)"  # the OOM killer sends SIGKILL, and so does kill -9
    try:
        return f"killed by signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"killed by signal {signum}"


def run_in_child(command: str, args: list[str], entry: str) -> tuple[int, str | None]:
    """Run ``ibf <args>`` in a child and wait: (its exit code, None), or, when it died by a signal,
    (128 + signal, the one-line error naming its unfinished run and the cause). ``entry`` (``module:function``,
    called without arguments) runs the command line in the child, unsupervised."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pending: list[int] = []
    children: list[subprocess.Popen] = []

    def forward(signum: int, _frame) -> None:
        if children:
            _send(children[0], signum)
        else:
            pending.append(signum)  # the child does not exist yet: sent once it does

    def pause(_signum: int, _frame) -> None:
        """Ctrl-Z: stop the child, then this process as the shell expects; on ``fg`` the child continues too."""
        if children:
            _send(children[0], signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT
        signal.signal(signal.SIGTSTP, pause)
        if children:
            _send(children[0], signal.SIGCONT)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, pause)
    try:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(os.getpid()), entry, *args], start_new_session=True)
        token = processes.start_token(child.pid)  # read now: the run's ibf/process_start tag, to tell it from a reused pid
        children.append(child)
        while pending:
            _send(child, pending.pop(0))
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code >= 0:
        return code, None
    return 128 - code, _report_death(command, child.pid, token, -code)


def _send(child: subprocess.Popen, signum: int) -> None:
    """Signal the child unless it has been reaped (until then its pid cannot name another process)."""
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def _report_death(command: str, pid: int, token: str | None, signum: int) -> str:
    """Mark the child's unfinished runs FAILED with the cause, free their slots, alert; the error line's text."""
    cause = death_cause(signum)
    if sys.stderr.isatty():  # the child may have died mid progress bar, its cursor hidden
        sys.stderr.write("\x1b[?25h\n")
        sys.stderr.flush()
    try:
        deaths = fail_runs_of(pid, token, cause)
    except Exception as exc:  # the instance is unreachable: say so in the same line, the next ibf frees the run
        return f"ibf {command} died: {cause}; its run could not be marked FAILED ({type(exc).__name__}: {exc})"
    if not deaths:
        return f"ibf {command} (pid {pid}) died: {cause}"
    return " and ".join(f"run {d.run_id} ({d.assets})" for d in deaths) + f" died: {cause}"


def fail_runs_of(pid: int, token: str | None, cause: str) -> list:
    """The unfinished runs process ``pid`` (start token ``token``) of this host started: marked FAILED with
    ``cause``, pool slots freed, an ``alerts`` row each. Returns their :class:`~ibf_dagster.recovery.RunDeath`."""
    from ibf_dagster.recovery import death_alerts, mark_dead, unfinished_runs_of

    settings = get_settings()
    instance = get_instance(settings)
    runs = unfinished_runs_of(instance, processes.ProcessRef(processes.this_host(), pid, token))
    deaths = [mark_dead(instance, run, pid, cause)[0] for run in runs]
    death_alerts(settings, log=_warn_unless_alert)(deaths)
    return deaths


def _warn_unless_alert(line: str) -> None:
    """The alert's own ``ALERT ...`` line repeats the error line: left out; a failure to record it is not."""
    if not line.startswith("ALERT "):
        sys.stderr.write(f"warning: {line}\n")


def child_main() -> None:
    """The child's entry: die with the supervisor, then call the entry point, which runs the ``ibf`` command line
    unsupervised."""
    supervisor, entry = int(sys.argv[1]), sys.argv[2]
    sys.argv = ["ibf", *sys.argv[3:]]
    _die_with(supervisor)
    module, _, function = entry.partition(":")
    try:
        getattr(importlib.import_module(module), function)()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    _exit_now(code)


def _exit_code(code: object) -> int:
    """``SystemExit.code`` as the interpreter turns it into an exit status (a text is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _exit_now(code: int) -> None:
    """End without the interpreter's teardown: after a 500-symbol daily cycle, freeing every object of torch,
    LightGBM, pandas and Dagster one by one took 2.7 s. The command's work is committed by now (every warehouse
    write and run record is, when its call returns); only the output is flushed here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _die_with(supervisor: int) -> None:
    """Linux: SIGKILL this process when its parent dies; exit at once if it has died already."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != supervisor:
        raise SystemExit(1)
