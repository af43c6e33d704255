"""``ibf stack up``: the production topology as separate processes on this machine (what the containers of
``docker/compose.yaml`` run): PostgreSQL (the Dagster instance and MLflow's backend), an MLflow tracking server,
the gRPC code location, the webserver, the daemon and the REST API, each on a loopback port, each logging to
``$IBF_HOME/stack/<service>.log``, all stopped (process group, then SIGKILL) when the stack stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibf_core.processes import free_port
from ibf_core.settings import Settings, child_environment
from ibf_core.storage.backup import RESTORED, pg_restore
from ibf_dagster.instance import _with_driver, check_postgres, prepare_dagster_home
from ibf_dagster.stack.postgres import local_postgres
from ibf_dagster.stack.topology import GRPC_WORKSPACE, command

# Heavy imports (httpx) stay inside the functions that need them: importing this module loads none of them.

ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A service of the stack did not come up (its message names it and the end of its log)."""


@dataclass
class Service:
    name: str
    argv: list[str]
    url: str | None
    log: Path
    proc: subprocess.Popen | None = None


@dataclass
class RunningStack:
    """What ``stack()`` started: URLs, the settings a client of this stack uses, the services."""

    folder: Path
    settings: Settings
    env: dict[str, str]
    urls: dict[str, str]
    services: list[Service] = field(default_factory=list)
    postgres: Any = None  # the throw-away LocalPostgres this stack started (None: IBF_DAGSTER_PG_URL names one)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def load_restored(pg: Any, restored: Path, announce: Callable[[str], None]) -> None:
    """Load the databases of a restored backup (``ibf backup restore`` leaves the ``pg_dump`` archives of a running
    stack's cluster in ``stack/postgres/restore/``) into the cluster, once: each archive is removed when loaded."""
    for archive in sorted(restored.glob("*.pgdump")):
        pg_restore(archive, pg.url(archive.stem), "ibf stack's PostgreSQL")
        archive.unlink()
        announce(f"postgres: loaded the restored database {archive.stem}")


def _bin(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else name


def _wait(name: str, ready: Callable[[], bool], service: Service | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet (refused, reset, gRPC unavailable)
            pass
        if service is not None and service.proc is not None and service.proc.poll() is not None:
            raise StackError(f"{name} exited with {service.proc.returncode}: {service.log.read_text(errors='replace')[-1500:]}")
        if time.monotonic() > deadline:
            tail = service.log.read_text(errors="replace")[-1500:] if service is not None else ""
            raise StackError(f"{name} did not become ready within {timeout_s:.0f} s: {tail}")
        time.sleep(0.5)


def _http_ok(url: str) -> Callable[[], bool]:
    import httpx

    return lambda: httpx.get(url, timeout=3).status_code == 200


def _stop(service: Service, grace_s: float = 20) -> None:
    proc = service.proc
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def stack(settings: Settings, api_workers: int = 1, timeout_s: float = 240, announce: Callable[[str], None] = lambda _: None,
          throwaway_postgres: bool = False) -> Iterator[RunningStack]:
    """Start the topology for ``settings`` (a local PostgreSQL unless IBF_DAGSTER_PG_URL names one: its cluster lives
    in ``IBF_HOME/stack/postgres`` and outlives the stack, or with ``throwaway_postgres`` in a temp folder removed
    when the stack stops); stop it all when the block ends, also on failure. The services read their settings from the environment, as every ibf
    process does: ``settings`` should be this process' (environment + config file), not built from overrides."""
    folder = settings.home_dir / "stack"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        # One stack per IBF_HOME, held for its whole life: two at once would share its instance and logs.
        lock = cleanup.enter_context(open(folder / "stack.lock", "a"))
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another ibf stack runs for {settings.home_dir}: ibf stack down stops it") from None
        pg = None
        if settings.dagster_pg_url is None:
            pg = cleanup.enter_context(local_postgres(folder=None if throwaway_postgres else folder / "postgres"))
            dagster_url, mlflow_db = pg.create_database("dagster"), pg.create_database("mlflow")
            load_restored(pg, folder / "postgres" / RESTORED, announce)
            kept = "removed when the stack stops" if throwaway_postgres else "kept when the stack stops"
            announce(f"postgres: {pg.url()} (data in {pg.folder}, {kept})")
        else:
            dagster_url = settings.dagster_pg_url.get_secret_value()
            mlflow_db = None
        ports = {name: free_port() for name in ("code", "webserver", "mlflow", "api")}
        mlflow_uri = f"http://127.0.0.1:{ports['mlflow']}"
        web_url = f"http://127.0.0.1:{ports['webserver']}"
        settings = settings.replace(dagster_pg_url=dagster_url, mlflow_tracking_uri=mlflow_uri, dagster_url=web_url)
        check_postgres(settings)
        prepare_dagster_home(settings)  # dagster.yaml with Postgres storage; exports DAGSTER_HOME and the URL
        workspace = folder / "workspace.yaml"
        workspace.write_text(GRPC_WORKSPACE.format(code_host="127.0.0.1", code_port=ports["code"]))

        env = child_environment({"IBF_HOME": str(settings.home_dir), "DAGSTER_HOME": str(settings.dagster_home),
                                 "IBF_DAGSTER_PG_URL": _with_driver(dagster_url, "psycopg2"),
                                 "IBF_MLFLOW_TRACKING_URI": mlflow_uri, "IBF_DAGSTER_URL": web_url})
        backend = _with_driver(mlflow_db, "psycopg2") if mlflow_db else f"sqlite:///{settings.home_dir / 'mlflow.db'}"
        values = {"bind": "127.0.0.1", "code_port": str(ports["code"]), "ui_port": str(ports["webserver"]),
                  "workspace": str(workspace), "mlflow_port": str(ports["mlflow"]), "mlflow_backend": backend,
                  "mlflow_artifacts": str(settings.mlflow_artifacts_dir), "api_port": str(ports["api"]),
                  "api_workers": str(api_workers)}
        running = RunningStack(folder, settings, env, {"webserver": web_url, "mlflow": mlflow_uri,
                                                        "api": f"http://127.0.0.1:{ports['api']}", "postgres": dagster_url},
                               postgres=pg)

        def start(name: str, url: str | None) -> Service:
            argv = command(name, **values)
            argv[0] = _bin(argv[0])
            service = Service(name, argv, url, folder / f"{name}.log")
            log = open(service.log, "ab")  # noqa: SIM115 - the child holds it; closed with the process
            service.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            running.services.append(service)
            cleanup.callback(_stop, service)
            return service

        mlflow = start("mlflow", mlflow_uri)
        _wait("mlflow", _http_ok(f"{mlflow_uri}/health"), mlflow, timeout_s)
        code = start("code", None)
        grpc_check = [_bin("dagster"), "api", "grpc-health-check", "-p", str(ports["code"]), "-h", "127.0.0.1"]
        _wait("code", lambda: subprocess.run(grpc_check, env=env, capture_output=True, timeout=30).returncode == 0, code, timeout_s)
        web = start("webserver", web_url)
        _wait("webserver", _http_ok(f"{web_url}/server_info"), web, timeout_s)
        daemon = start("daemon", None)
        api = start("api", running.urls["api"])
        _wait("api", _http_ok(f"{running.urls['api']}/health"), api, timeout_s)
        if daemon.proc.poll() is not None:
            raise StackError(f"daemon exited with {daemon.proc.returncode}: {daemon.log.read_text(errors='replace')[-1500:]}")
        announce("\n".join(f"{name}: {url}" for name, url in running.urls.items() if name != "postgres"))
        yield running

