"""Services: ``ui`` (dagster dev), ``serve`` (the REST API), ``stack up/prepare/down`` (the production topology as
local processes) and ``api-key new``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ibf_core.processes import ProcessRef, current, is_running, this_host
from ibf_dagster.cli._common import _settings, err, out
from ibf_dagster.instance import check_postgres, get_instance, prepare_dagster_home
from ibf_dagster.stack.run import stack

# Heavy imports wait until a command runs: `ibf --help` must not load dagster, fastapi or the stack's process helpers.

# `ibf ui`: after Ctrl-C/SIGTERM, dagster dev gets this long to shut down on SIGINT, then SIGTERM, then SIGKILL.
UI_STOP_GRACE_S = (4.0, 2.0)


def ui(port: Annotated[int, typer.Option(help="Port of the Dagster UI")] = 3000) -> None:
    """Start the Dagster UI and daemon (dagster dev) on 127.0.0.1 with the instance under IBF_HOME."""
    from ibf_dagster.runner import start_runs

    settings = _settings()
    instance = get_instance(settings)
    start_runs(instance, settings)  # runs a crashed dagster dev left STARTED, with their pool slots
    workspace = Path(__file__).resolve().parents[2] / "workspace.yaml"
    dagster = str(Path(sys.executable).with_name("dagster"))
    # Its own process group: Ctrl-C reaches ibf, which stops the whole group (webserver, daemon, code server, run
    # workers) and escalates, since dagster dev may take minutes to act on a SIGTERM.
    proc = subprocess.Popen([dagster, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)], start_new_session=True)
    code = _supervise(proc)
    start_runs(instance, settings)  # runs whose workers went down with it
    raise typer.Exit(code)


def _supervise(proc: subprocess.Popen) -> int:
    """Wait for ``proc``; on SIGINT/SIGTERM stop its process group (SIGINT, then SIGTERM, then SIGKILL)."""
    stop: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stop.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None and not stop:
            time.sleep(0.2)
        if proc.poll() is None:
            err.print("stopping dagster dev ...", highlight=False)
            _stop_group(proc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + stop[0] if stop else proc.returncode


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop ``proc``'s process group: SIGINT (dagster dev's clean shutdown), then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, UI_STOP_GRACE_S[0]), (signal.SIGTERM, UI_STOP_GRACE_S[1]), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        # dagster dev is gone; its children may not be: anything left in the group gets the same signal
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the REST API")] = 8000,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help="Worker processes (default IBF_API_WORKERS)")] = None,
) -> None:
    """Serve the REST API (forecasts, models, retraining, metrics; OpenAPI at /docs) with uvicorn."""
    from ibf_serve.app import serve as run_serve

    run_serve(_settings(), host=host, port=port, workers=workers)


def stack_up(
    api_workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes of the API")] = 1,
    throwaway_postgres: Annotated[bool, typer.Option(help="Run PostgreSQL in a temp folder removed by `ibf stack down` "
                                                     "(default: IBF_HOME/stack/postgres, kept)")] = False,
) -> None:
    """Start every service of the topology on loopback ports and keep them running until Ctrl-C or `ibf stack down`."""
    settings = _settings()
    pid_file = settings.home_dir / "stack" / "stack.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    if pid_file.exists():  # "pid start-token": a stale file of a killed stack (or a reused pid) is no stack
        pid, _, token = pid_file.read_text().strip().partition(" ")
        if pid.isdigit() and is_running(ProcessRef(this_host(), int(pid), token or None)):
            raise typer.BadParameter(f"a stack runs already for {settings.home_dir} (pid {pid}): ibf stack down first")
    me = current()
    with stack(settings, api_workers=api_workers, announce=lambda line: err.print(line, highlight=False, markup=False),
               throwaway_postgres=throwaway_postgres):
        pid_file.write_text(f"{me.pid} {me.start or ''}\n")
        err.print("stack up; Ctrl-C or `ibf stack down` stops it", highlight=False)
        try:
            while True:
                time.sleep(3600)
        finally:
            pid_file.unlink(missing_ok=True)


def stack_prepare() -> None:
    """Write the Dagster instance's dagster.yaml under IBF_HOME (Postgres storage when IBF_DAGSTER_PG_URL is set,
    after a connection check) and print DAGSTER_HOME: what a container runs before dagster-webserver/-daemon."""
    settings = _settings()
    if settings.dagster_pg_url is not None:
        check_postgres(settings)
    out.print(str(prepare_dagster_home(settings)), highlight=False)


def stack_down() -> None:
    """Stop the stack `ibf stack up` runs for this IBF_HOME (every service, then its Postgres)."""
    pid_file = _settings().home_dir / "stack" / "stack.pid"
    if not pid_file.exists():
        raise typer.BadParameter("no stack runs for this IBF_HOME (no stack/stack.pid)")

    pid, _, token = pid_file.read_text().strip().partition(" ")
    if not pid.isdigit() or not is_running(ProcessRef(this_host(), int(pid), token or None)):
        pid_file.unlink(missing_ok=True)
        raise typer.BadParameter("the stack recorded in stack/stack.pid is not running (removed the stale file)")
    pid = int(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if pid_file.exists():
        raise RuntimeError(f"the stack (pid {pid}) did not stop within 120 s")
    err.print("stack down", highlight=False)


def api_key_new() -> None:
    """Print a new API key (shown once) and the digest to put into IBF_API_KEYS or IBF_API_KEYS_FILE."""
    from ibf_serve.auth import new_key

    key, digest = new_key()
    out.print(f"key:    {key}\ndigest: {digest}", highlight=False)
    err.print("Give the key to the client; configure only the digest (IBF_API_KEYS=<digest>). The key is not stored.")
