"""A real PostgreSQL server in a folder of its own on a loopback port: for the Postgres-backed Dagster instance
in tests, benchmarks and ``ibf stack``. PostgreSQL refuses to run as root, so as root it runs as ``postgres``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ibf_core.processes import free_port

# Heavy imports (psycopg2) stay inside the functions that need them: importing this module loads none of them.


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here and none could be installed."""


def _binaries() -> Path:
    for candidate in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]:
        if candidate:
            return Path(candidate).parent
    if os.geteuid() == 0:  # Debian's package, as the project's own setup (no hand installs)
        for cmd in (["apt-get", "install", "-y", "-q", "postgresql"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
            subprocess.run(cmd, capture_output=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
        if found:
            return Path(found[0]).parent
    raise PostgresUnavailable("PostgreSQL is not installed (initdb not found) and apt-get could not install it")


def _as_owner(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool as the ``postgres`` user when we are root (it refuses root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


@dataclass(frozen=True)
class LocalPostgres:
    folder: Path
    port: int
    bin_dir: Path
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create ``name`` (when missing); returns its URL."""
        import psycopg2

        con = psycopg2.connect(self.url(), connect_timeout=10)
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return self.url(name)

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return _as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), *args])

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        done = self.pg_ctl("-o", options, "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = (self.folder / "server.log").read_text()[-2000:] if (self.folder / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}: {done.stderr.strip()} {log}")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop")


@contextlib.contextmanager
def local_postgres(port: int | None = None, folder: Path | None = None) -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster (trust auth, loopback only) for the block, stopped after it, also when the block fails.

    ``folder``: a lasting cluster there (``ibf stack``'s, under IBF_HOME: run history and the MLflow registry
    outlive the stack), created when missing and kept; None: a fresh throw-away cluster, removed after the block."""
    bin_dir = _binaries()
    throwaway = folder is None
    # The socket goes to a short temp folder: a socket path longer than 107 bytes (a deep IBF_HOME) is refused.
    sockets = Path(tempfile.mkdtemp(prefix="ibf-pg-"))  # not under a root-only folder: postgres must reach it
    folder = sockets if throwaway else Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for path in {sockets, folder}:
                shutil.chown(path, "postgres", "postgres")
            if _as_owner(["test", "-w", str(folder)]).returncode != 0:
                raise RuntimeError(f"PostgreSQL runs as the postgres user, who cannot reach {folder} (a parent folder "
                                   "is private to root): make IBF_HOME's parent folders traversable (chmod o+x) or "
                                   "use a throw-away database (ibf stack up --throwaway-postgres)")
        if not (folder / "data" / "PG_VERSION").exists():
            init = _as_owner([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed: {init.stderr.strip()[-1000:]}")
        server = LocalPostgres(folder, port or free_port(), bin_dir, sockets)
        server.start()
        try:
            _wait_ready(server)
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def _wait_ready(server: LocalPostgres, timeout_s: float = 30) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg2.connect(server.url(), connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
