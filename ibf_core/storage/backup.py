"""Backups of IBF_HOME: ``create`` a consistent snapshot with a manifest of SHA-256 checksums, ``verify`` it,
``restore`` it atomically (a failure midway leaves the previous state), ``prune`` old ones.

What a backup holds (``<backup>/home/`` mirrors IBF_HOME; ``<backup>/postgres/`` holds ``pg_dump`` archives):

* the Parquet lake: its files are hard-linked under the warehouse's commit lock (``IBF_HOME/.locks/_commit.lock``,
  which every batch holds while it swaps its files in), so the backup holds every write whole or not at all; lake files are
  never changed in place (a write swaps in a new file), so a link is an immutable copy, copied out after the lock;
* DuckLake (local catalog and data folder): the catalog through SQLite's backup API (one committed snapshot),
  then the data files (immutable; files of later commits are unreferenced extras);
* every SQLite database (MLflow's ``mlflow.db``, the Dagster instance's run, event-log and schedule storage)
  through the backup API, never a file copy that a concurrent write could tear; a Postgres instance
  (``IBF_DAGSTER_PG_URL``, ``ibf stack``'s running cluster) as a ``pg_dump`` archive;
* every other file (MLflow artifacts, ``dagster.yaml``, compute logs) as it is.

Left out: what is rebuilt on demand or belongs to running processes (``cache/``, ``tmp/``, ``serve/``, logs and
locks of ``stack/``, ``warehouse.duckdb``'s views, temp files). Paths recorded in SQLite stores (MLflow artifact
locations, DuckLake's data path) are rewritten when a backup is restored into another IBF_HOME.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ibf_core.settings import Settings, child_environment
from ibf_core.storage import atomic

FORMAT = 1
MANIFEST = "manifest.json"
HOME = "home"  # the backup's copy of IBF_HOME
POSTGRES = "postgres"  # pg_dump archives
PREFIX = "ibf-backup-"  # scheduled backups: <IBF_BACKUP_DIR>/ibf-backup-<UTC time>
# Never backed up: rebuilt on demand, or owned by running processes.
SKIPPED_TOP = {"cache", "tmp", "serve", "warehouse.duckdb", "warehouse.duckdb.wal", ".warehouse-views.json"}
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
STACK_PG = Path("stack") / "postgres"  # ibf stack's own cluster (ibf_dagster.stack.postgres)
RESTORED = "restore"  # STACK_PG/restore/<database>.pgdump: loaded by the next `ibf stack up`
_CHUNK = 1 << 20
_RENAME_EXCHANGE = 2


class BackupError(RuntimeError):
    """A backup cannot be made, is damaged, or cannot be restored (the message names the file or setting)."""


@dataclass(frozen=True)
class BackupResult:
    folder: Path
    files: int
    bytes: int
    seconds: float


# ----- checksums ------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _skipped(rel: Path) -> bool:
    """Files never backed up: see the module docstring."""
    parts = rel.parts
    if parts[0] in SKIPPED_TOP or ".locks" in parts or atomic.temp_target(rel) is not None:
        return True
    if parts[0] == "stack" and rel.parts[:2] != STACK_PG.parts:  # logs, pid and lock files of a stack
        return True
    name = rel.name
    return name.endswith((".lock", "-wal", "-shm", "-journal")) or name == "postmaster.pid"


def _is_sqlite(path: Path) -> bool:
    if not path.name.endswith(SQLITE_SUFFIXES):
        return False
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def _copy_sqlite(source: Path, target: Path) -> None:
    """One committed state of a live SQLite database (the backup API, which takes the database's read lock).

    Writers must be other processes (every ibf writer is): SQLite's locks are POSIX locks, which a process does not
    see among its own, so a commit in flight in this process would look like a crashed one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


# ----- the snapshot ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _lake_snapshot(home: Path) -> Iterator[Path | None]:
    """Hard links of every lake file taken under the lake's commit lock, in a folder removed afterwards."""
    lake = home / "lake"
    if not lake.is_dir():
        yield None
        return
    snapshot = home / "tmp" / f"backup-{os.getpid()}-{time.time_ns()}"
    try:
        with atomic.lock(home, atomic.COMMIT_LOCK):
            for path in sorted(lake.rglob("*")):
                rel = path.relative_to(home)
                if path.is_file() and not _skipped(rel):
                    target = snapshot / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(path, target)
                    except FileNotFoundError:  # a quarantine or temp file removed meanwhile
                        continue
                    except OSError as exc:  # another file system (a linked-in lake): copy under the lock
                        if exc.errno != errno.EXDEV:
                            raise
                        shutil.copyfile(path, target)
        yield snapshot
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _pg_environment(url: str) -> dict[str, str]:
    """libpq's variables for ``url``: the password never appears on a command line."""
    parts = urlparse(url.replace("postgresql+psycopg2://", "postgresql://"))
    values = {"PGHOST": parts.hostname or "127.0.0.1", "PGPORT": str(parts.port or 5432),
              "PGUSER": unquote(parts.username or "postgres"), "PGDATABASE": parts.path.lstrip("/") or "postgres"}
    if parts.password:
        values["PGPASSWORD"] = unquote(parts.password)
    return child_environment(values)


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client tools to back up or restore a Postgres database")
    return str(found)


def _pg_dump(url: str, target: Path, label: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([_pg_tool("pg_dump"), "-Fc", "--no-owner", "-f", str(target)], env=_pg_environment(url),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{label}: pg_dump failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")


def running_stack_postgres(home: Path) -> int | None:
    """The port of ``ibf stack``'s own PostgreSQL under ``home`` while it runs (``postmaster.pid``), else None."""
    pid_file = home / STACK_PG / "data" / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        os.kill(int(lines[0]), 0)
        return int(lines[3])
    except (OSError, ValueError, IndexError):
        return None


def _postgres_sources(settings: Settings) -> dict[str, str]:
    """Databases dumped (archive name -> URL): the instance's ``IBF_DAGSTER_PG_URL``, the running stack's."""
    sources = {}
    if settings.dagster_pg_url is not None:
        sources["dagster"] = settings.dagster_pg_url.get_secret_value()
    port = running_stack_postgres(settings.home_dir)
    if port is not None:
        sources.update({f"stack-{db}": f"postgresql://postgres@127.0.0.1:{port}/{db}" for db in ("dagster", "mlflow")})
    return sources


def _check_ducklake(settings: Settings) -> None:
    """Only a DuckLake kept under IBF_HOME is backed up here; a remote one has its own backups."""
    if settings.warehouse != "ducklake":
        return
    if settings.ducklake_catalog is not None:
        raise BackupError("IBF_DUCKLAKE_CATALOG names a catalog outside IBF_HOME: back it up with its own tools "
                          "(ibf backs up the default sqlite catalog under IBF_HOME/ducklake)")
    if settings.ducklake_data_path is not None:
        raise BackupError("IBF_DUCKLAKE_DATA_PATH is set: back up that data path with its own tools (ibf backs up "
                          "the default IBF_HOME/ducklake/data)")


def _fill(settings: Settings, staging: Path) -> None:
    """Write the backup's files into ``staging``, then its manifest."""
    home = settings.home_dir
    _check_ducklake(settings)
    dumps = _postgres_sources(settings)
    stack_dumped = any(name.startswith("stack-") for name in dumps)
    with _lake_snapshot(home) as snapshot:
        if snapshot is not None:
            for path in sorted(snapshot.rglob("*")):
                if path.is_file():
                    _copy_file(path, staging / HOME / path.relative_to(snapshot))
        # DuckLake's catalog before its data files are listed: every file the copied catalog names is copied too.
        catalog = home / "ducklake" / "catalog.sqlite"
        if catalog.exists():
            _copy_sqlite(catalog, staging / HOME / catalog.relative_to(home))
        rest = sorted(p for p in home.rglob("*") if p.is_file() and p != catalog)
        for path in sorted(p for p in home.rglob("*") if p.is_dir()):  # empty folders too (PostgreSQL needs its own)
            rel = path.relative_to(home)
            if rel.parts[0] != "lake" and not _skipped(rel) and not (stack_dumped and rel.parts[:2] == STACK_PG.parts):
                (staging / HOME / rel).mkdir(parents=True, exist_ok=True)
        for path in rest:
            rel = path.relative_to(home)
            if rel.parts[0] == "lake" or _skipped(rel) or (stack_dumped and rel.parts[:2] == STACK_PG.parts):
                continue
            try:
                if _is_sqlite(path):
                    _copy_sqlite(path, staging / HOME / rel)
                else:
                    _copy_file(path, staging / HOME / rel)
            except FileNotFoundError:  # removed meanwhile (a purged compute log)
                continue
    for name, url in dumps.items():
        _pg_dump(url, staging / POSTGRES / f"{name}.pgdump", "IBF_DAGSTER_PG_URL" if name == "dagster" else "ibf stack's PostgreSQL")
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        files[path.relative_to(staging).as_posix()] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    folders = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_dir())
    manifest = {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "source_home": str(home), "warehouse": settings.warehouse, "files": files, "folders": folders}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def create(settings: Settings, folder: Path) -> BackupResult:
    """Back up the state under ``settings.home_dir`` into the new folder ``folder`` (whole or not at all)."""
    started = time.monotonic()
    folder = Path(folder).expanduser().resolve()
    home = settings.home_dir
    if folder.exists():
        raise BackupError(f"{folder} exists: a backup goes into a new folder")
    if folder.is_relative_to(home):
        raise BackupError(f"{folder} is inside IBF_HOME ({home}): put backups elsewhere")
    if not home.is_dir():
        raise BackupError(f"IBF_HOME {home} does not exist: nothing to back up")
    if not atomic.publish_folder(folder, lambda staging: _fill(settings, staging)):
        raise BackupError(f"{folder} was created meanwhile by another process")
    manifest = read_manifest(folder)
    size = sum(f["bytes"] for f in manifest["files"].values())
    return BackupResult(folder, len(manifest["files"]), size, time.monotonic() - started)


# ----- verify -----------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{path} is missing: not an ibf backup") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BackupError(f"{path}: not an ibf backup manifest of format {FORMAT}")
    return manifest


def verify(folder: Path) -> dict:
    """The manifest of a backup whose every file is present with its checksum and nothing else is there;
    otherwise :class:`BackupError` naming the first file that differs."""
    folder = Path(folder).expanduser().resolve()
    manifest = read_manifest(folder)
    listed = manifest["files"]
    for rel, entry in sorted(listed.items()):
        path = folder / rel
        if not path.is_file():
            raise BackupError(f"{path} is missing from the backup")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise BackupError(f"{path} does not match its SHA-256 checksum in {MANIFEST}: the backup is damaged")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST and rel not in listed:
            raise BackupError(f"{path} is not listed in {MANIFEST}: the backup was changed")
    return manifest


# ----- restore ----------------------------------------------------------------------------------------
def _rewrite_paths(database: Path, old: str, new: str) -> None:
    """Replace the old IBF_HOME prefix in every text column of a restored SQLite store (MLflow's artifact
    locations, DuckLake's data path), so a backup restored into another IBF_HOME points at its own files."""
    con = sqlite3.connect(database)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            for column in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if "CHAR" in column[2].upper() or "TEXT" in column[2].upper() or column[2] == "":
                    con.execute(f'UPDATE "{table}" SET "{column[1]}" = replace("{column[1]}", ?, ?) '
                                f'WHERE instr("{column[1]}", ?) > 0', [old, new, old])
        con.commit()
    finally:
        con.close()


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``): a crash leaves one or the other."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def pg_restore(archive: Path, url: str, label: str) -> None:
    done = subprocess.run([_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
                           "-d", _pg_environment(url)["PGDATABASE"], str(archive)], env=_pg_environment(url),
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise BackupError(f"{label}: pg_restore of {archive} failed: {lines[-1] if lines else done.returncode}")


def _stack_lock_held(home: Path) -> bool:
    """Whether an ``ibf stack`` holds its lock on ``home`` (ibf_dagster.stack.run holds it for its whole life)."""
    path = home / "stack" / "stack.lock"
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _own_cluster(staging: Path) -> None:
    """A restored stopped cluster of ``ibf stack``: PostgreSQL wants its data folder 0700 and owned by the user it
    runs as (``postgres`` when ibf runs as root)."""
    data = staging / STACK_PG / "data"
    if not data.is_dir():
        return
    data.chmod(0o700)
    if os.geteuid() == 0:
        for path in [staging / STACK_PG, *(staging / STACK_PG).rglob("*")]:
            shutil.chown(path, "postgres", "postgres")


def check_idle(settings: Settings, is_locked: Callable[[Path], str | None]) -> None:
    """Refuse to restore under a running platform: ``ibf stack`` up, or ``is_locked`` names a holder of the
    warehouse (a writer committing, a DuckDB session on ``warehouse.duckdb``)."""
    home = settings.home_dir
    if running_stack_postgres(home) is not None or _stack_lock_held(home):
        raise BackupError(f"ibf stack runs for {home}: ibf stack down first, then restore")
    holder = is_locked(home)
    if holder:
        raise BackupError(f"{holder}: stop the platform's processes (ui, daemon, runs, sessions) first, then restore")


def lake_holder(home: Path) -> str | None:
    """Who holds the lake's commit lock right now (a writer swapping files in), or None."""
    if not (home / "lake").is_dir():
        return None
    try:
        with atomic.lock(home, atomic.COMMIT_LOCK, timeout=5):
            return None
    except TimeoutError:
        return f"a warehouse writer holds {home / '.locks' / (atomic.COMMIT_LOCK + '.lock')}"


def restore(folder: Path, settings: Settings, is_locked: Callable[[Path], str | None] = lake_holder,
            after_unpack: Callable[[Path], None] = lambda staging: None) -> dict:
    """Replace the state under IBF_HOME by the verified backup ``folder``; returns its manifest.

    The backup is unpacked into a sibling of IBF_HOME and swapped in by one rename: until then IBF_HOME is
    untouched, so a failure (or a crash) midway leaves the previous state. ``after_unpack`` runs on the unpacked
    folder before the swap (the CLI defines the warehouse's views there)."""
    folder = Path(folder).expanduser().resolve()
    manifest = verify(folder)
    home = settings.home_dir
    check_idle(settings, is_locked)
    home.parent.mkdir(parents=True, exist_ok=True)
    for leftover in home.parent.glob(f".{home.name}.restore-*"):  # a crashed restore's staging folder
        shutil.rmtree(leftover, ignore_errors=True)
    staging = home.parent / f".{home.name}.restore-{os.getpid()}-{time.time_ns()}"
    try:
        source = folder / HOME
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            _copy_file(path, staging / path.relative_to(source))
        staging.mkdir(exist_ok=True)
        for rel in manifest.get("folders", []):
            if rel.startswith(HOME + "/"):
                (staging / rel.removeprefix(HOME + "/")).mkdir(parents=True, exist_ok=True)
        old_home = manifest.get("source_home")
        if old_home and old_home != str(home):
            for rel in ("mlflow.db", "ducklake/catalog.sqlite"):
                if (staging / rel).exists():
                    _rewrite_paths(staging / rel, old_home, str(home))
        archives = sorted((folder / POSTGRES).glob("stack-*.pgdump"))
        if archives:  # loaded into a fresh cluster by the next `ibf stack up`
            for archive in archives:
                _copy_file(archive, staging / STACK_PG / RESTORED / archive.name.removeprefix("stack-"))
        _own_cluster(staging)
        after_unpack(staging)
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        dagster_dump = folder / POSTGRES / "dagster.pgdump"
        if dagster_dump.exists():
            if settings.dagster_pg_url is None:
                raise BackupError(f"{dagster_dump}: the backup holds a Postgres instance: set IBF_DAGSTER_PG_URL to restore it")
            pg_restore(dagster_dump, settings.dagster_pg_url.get_secret_value(), "IBF_DAGSTER_PG_URL")
        if home.exists():
            try:
                _exchange(staging, home)  # staging now holds the previous state
            except OSError as exc:
                raise BackupError(f"{exc}; nothing was restored: IBF_HOME must be a folder (not a mount point) on a file "
                                  "system that swaps folders atomically (ext4, xfs, btrfs, tmpfs)") from None
        else:
            os.rename(staging, home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# ----- retention --------------------------------------------------------------------------------------
def timestamped_folder(root: Path, now: dt.datetime | None = None) -> Path:
    now = now or dt.datetime.now(dt.timezone.utc)
    return Path(root).expanduser().resolve() / f"{PREFIX}{now.strftime('%Y%m%dT%H%M%SZ')}"


def prune(root: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` backups ``ibf-backup-*`` under ``root``; returns those removed."""
    backups = sorted(p for p in Path(root).glob(f"{PREFIX}*") if (p / MANIFEST).is_file())
    removed = backups[: max(len(backups) - keep, 0)]
    for path in removed:
        shutil.rmtree(path)
    return removed
