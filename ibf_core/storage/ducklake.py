"""The DuckLake backend (``IBF_WAREHOUSE=ducklake``): the same tables, under the same names, as DuckLake tables.

The catalog (``IBF_DUCKLAKE_CATALOG``) is a SQLite file (the default: ``<state>/ducklake/catalog.sqlite``), a DuckDB
file (one process at a time) or a Postgres database (``postgres:dbname=lake host=... user=...``: several machines);
data files live under ``IBF_DUCKLAKE_DATA_PATH`` (a folder, or an S3-compatible ``s3://bucket/prefix/`` with the
``AWS_*`` credentials of the settings). The extensions are the PyPI wheels built for the pinned DuckDB, loaded
by path: nothing is downloaded.

Every table gets two hidden columns: ``_partition`` (the symbol, the month of ``news_articles``, an alerts batch)
and ``_row`` (the row's place in its partition when written, so a partition reads back in the order it was
written). Queries never see them: :meth:`DuckLakeWarehouse.query` reads through views of the declared columns.

A write is one DuckLake transaction: ``DELETE`` the partitions (or the slice) being replaced, ``INSERT`` the new
rows, ``COMMIT``. DuckLake refuses a commit that conflicts with one committed meanwhile (two writers of one table
conflict even on disjoint symbols; a SQLite catalog also answers "database is locked"): the transaction is rolled
back and ``build`` runs again from fresh reads, until ``COMMIT_RETRY_S``. Writers on one machine also take the
partitions' file locks, so they queue instead of retrying. Readers see the newest committed snapshot: never half a
write, and no reader blocks a writer.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ibf_core.storage import atomic, space
from ibf_core.storage.interface import (
    QueryRefused,
    TableStore,
    Transaction,
    WarehouseError,
    WriteResult,
    check_partition_name,
    check_slice,
    date_bounds,
    empty_frame,
    refuse_writes,
    to_arrow,
    views_needed,
    with_datetime_dates,
)
from ibf_core.storage.registry import registered_catalog
from ibf_core.storage.tables import Catalog, TableSpec

T = TypeVar("T")
log = logging.getLogger(__name__)

COMMIT_RETRY_S = 120.0
PARTITION, ROW = "_partition", "_row"
_ALIAS = "lake"
_CONFLICT = re.compile(r"conflict|database is locked|could not serialize|deadlock", re.IGNORECASE)
_PG_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def extension_path(name: str) -> Path:
    """The extension file of the PyPI wheel ``duckdb-extension-<name>`` for the running DuckDB."""
    package = f"duckdb_extension_{name}"
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise WarehouseError(f"the DuckDB extension {name} is not installed (pip install {package.replace('_', '-')}=={duckdb.__version__})")
    folder = Path(next(iter(found.submodule_search_locations)))
    path = folder / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        raise WarehouseError(f"{path} is missing: {package} does not match duckdb {duckdb.__version__}")
    return path


def redact_catalog(catalog: str) -> str:
    """The catalog string without a password (``password=***``)."""
    return _PG_PASSWORD.sub(r"\1***", catalog)


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _order_by(spec: TableSpec) -> str:
    """Partitions in name order; per-symbol tables by key inside, others in the order each was written."""
    return _quoted([PARTITION, *(spec.key if spec.per_symbol else (ROW,))])


def _projected(spec: TableSpec, table: pa.Table, columns: Sequence[str] | None = None) -> pa.Table:
    """``table`` as the declared schema (or its ``columns``)."""
    schema = spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns])
    return table.select(schema.names).cast(schema)


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and bool(_CONFLICT.search(str(exc)))


def _retry_locked(action: Callable[[], T]) -> T:
    """``action()``, repeated while it fails on a lock or commit conflict, until ``COMMIT_RETRY_S``."""
    deadline = time.monotonic() + COMMIT_RETRY_S
    while True:
        try:
            return action()
        except duckdb.Error as exc:
            if not _is_conflict(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + 0.1 * random.random())


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class S3Credentials:
    """What an ``s3://`` data path needs (from the settings' ``AWS_*`` values)."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"S3Credentials(region={self.region!r}, endpoint_url={self.endpoint_url!r})"


class DuckLakeWarehouse(TableStore):
    """DuckLake tables of the registered catalog; see the module docstring."""

    backend = "ducklake"

    def __init__(
        self, home: Path | str, catalog: str | None = None, data_path: str | None = None, s3: S3Credentials | None = None,
        keep_hours: float = 0.0,
    ):
        self.home = Path(home).expanduser().resolve()
        self.root = self.home / "ducklake"
        self.state_dir = self.root
        self._default_catalog = catalog is None
        self.catalog = catalog or f"sqlite:{self.root / 'catalog.sqlite'}"
        self.data_path = data_path or str(self.root / "data")
        if not self.data_path.endswith("/"):
            self.data_path += "/"
        self.s3 = s3 or S3Credentials()
        self._lock = threading.Lock()
        self._connections: dict[bool, duckdb.DuckDBPyConnection] = {}
        self._pid = os.getpid()
        self._ensured: set[tuple[str, tuple[str, ...]]] = set()
        self.keep_hours = keep_hours
        self._next_expiry = 0.0  # time.monotonic() of the next check for snapshots to expire

    # ----- connections ----------------------------------------------------------------------------
    @property
    def is_remote_data(self) -> bool:
        return "://" in self.data_path

    def describe(self) -> str:
        return f"DuckLake catalog {redact_catalog(self.catalog)} (data {self.data_path})"

    def _extensions(self) -> list[str]:
        kind = self.catalog.split(":", 1)[0]
        extra = {"sqlite": ["sqlite_scanner"], "postgres": ["postgres_scanner"]}.get(kind, [])
        return ["ducklake", *extra, *(["httpfs"] if self.is_remote_data else [])]

    def _check_location(self, read_only: bool) -> None:
        """A catalog or data folder that cannot exist is named before anything is attached (readers create
        nothing)."""
        if read_only:
            return
        kind, _, rest = self.catalog.partition(":")
        if kind in ("sqlite", "duckdb") or kind == self.catalog:
            file = Path(rest if kind in ("sqlite", "duckdb") else self.catalog)
            if self._default_catalog:
                file.parent.mkdir(parents=True, exist_ok=True)
            elif not file.parent.is_dir():
                raise WarehouseError(
                    f"IBF_DUCKLAKE_CATALOG: the catalog {file} cannot be created: its folder {file.parent} does not exist"
                )

    def _check_data_folder(self) -> None:
        """The local data folder, created once the catalog opened (a wrong catalog leaves no folder behind)."""
        folder = Path(self.data_path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WarehouseError(f"IBF_DUCKLAKE_DATA_PATH: {folder} cannot be created ({exc.strerror})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise WarehouseError(f"IBF_DUCKLAKE_DATA_PATH: {folder} is not writable")

    def _s3_secret(self) -> str | None:
        """A DuckDB S3 secret from the settings' ``AWS_*`` values (never logged)."""
        key, secret = self.s3.access_key_id, self.s3.secret_access_key
        if not key or not secret:
            return None
        parts = [f"TYPE s3, KEY_ID {_sql_string(key)}, SECRET {_sql_string(secret)}"]
        if self.s3.region:
            parts.append(f"REGION {_sql_string(self.s3.region)}")
        endpoint = self.s3.endpoint_url
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            parts.append(f"ENDPOINT {_sql_string(host or scheme)}, URL_STYLE 'path'")
            parts.append(f"USE_SSL {'false' if scheme == 'http' else 'true'}")
        return f"CREATE SECRET ibf_s3 ({', '.join(parts)})"

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        self._check_location(read_only)
        con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        try:
            for name in self._extensions():
                con.execute(f"LOAD {_sql_string(str(extension_path(name)))}")
            if self.is_remote_data:
                secret = self._s3_secret()
                if secret:
                    con.execute(secret)
            options = [f"DATA_PATH {_sql_string(self.data_path)}"] + (["READ_ONLY"] if read_only else [])
            try:
                self._attach(con, options)
            except duckdb.Error as exc:
                raise WarehouseError(
                    f"IBF_DUCKLAKE_CATALOG: the DuckLake catalog {redact_catalog(self.catalog)} cannot be opened: "
                    f"{redact_catalog(_first_line(exc))}"
                ) from None
            if self.is_remote_data:
                self._check_remote(con)
            elif not read_only:
                self._check_data_folder()
            if read_only:
                self._lock_down(con)
        except BaseException:
            con.close()
            raise
        return con

    def _attach(self, con: duckdb.DuckDBPyConnection, options: list[str]) -> None:
        """ATTACH the catalog; a SQLite catalog another writer holds for a moment ("database is locked") is
        tried again, like a commit conflict, until ``COMMIT_RETRY_S``."""
        _retry_locked(lambda: con.execute(f"ATTACH {_sql_string('ducklake:' + self.catalog)} AS {_ALIAS} ({', '.join(options)})"))

    def _read(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``work`` on a read cursor; a SQLite catalog that a committing writer holds ("database is locked" when
        the reader asks for the newest snapshot) is read again on a new cursor, until ``COMMIT_RETRY_S``."""

        def once() -> T:
            with self._connection(read_only=True) as cur:
                return work(cur)

        return _retry_locked(once)

    def _check_remote(self, con: duckdb.DuckDBPyConnection) -> None:
        """List the S3 prefix once: no access, a wrong endpoint or a missing bucket is named at start-up."""
        try:
            con.execute(f"SELECT count(*) FROM glob({_sql_string(self.data_path + '*')})").fetchall()
        except duckdb.Error as exc:
            raise WarehouseError(f"IBF_DUCKLAKE_DATA_PATH: {self.data_path} cannot be listed: {_first_line(exc)}") from None

    def _lock_down(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read connections: files only under the data path, no extension, no undoing that."""
        spill = self.root / "tmp"
        allowed = ", ".join(_sql_string(p) for p in (self.data_path, str(spill) + os.sep))
        con.execute(f"SET allowed_directories = [{allowed}]")
        con.execute(f"SET temp_directory = {_sql_string(str(spill))}")
        if not self.is_remote_data:
            con.execute("SET enable_external_access = false")
        for setting in ("SET allow_community_extensions = false", "SET enable_progress_bar = false", "SET lock_configuration = true"):
            con.execute(setting)

    def _connection(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """A cursor of the process's read-only (or read-write) attachment; a forked child opens its own."""
        with self._lock:
            if self._pid != os.getpid():
                self._connections, self._pid, self._ensured = {}, os.getpid(), set()
            base = self._connections.get(read_only)
            if base is None:
                base = self._connections[read_only] = self._open(read_only)
            return base.cursor()

    def check(self) -> None:
        """Open the catalog and the data path once (what start-up does): errors name the setting."""
        self._connection(read_only=False).close()

    def exists(self) -> bool:
        """The catalog opens read-only (a reader never creates it)."""
        try:
            self._connection(read_only=True).close()
        except WarehouseError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            for con in self._connections.values():
                con.close()
            self._connections = {}

    # ----- tables ---------------------------------------------------------------------------------
    @staticmethod
    def _columns_sql(spec: TableSpec) -> str:
        declared = ", ".join(f'"{c.name}" {c.sql_type}' for c in spec.columns)
        return f'{declared}, "{PARTITION}" VARCHAR, "{ROW}" BIGINT'

    @space.full_disk_named
    def ensure_catalog(self, catalog: Catalog) -> None:
        """Each table (with its hidden columns), and any declared column an older table lacks."""
        wanted = [s for s in catalog.tables if (s.name, tuple(s.column_names)) not in self._ensured]
        if not wanted:
            return

        def create(cur: duckdb.DuckDBPyConnection) -> None:
            for spec in wanted:
                cur.execute(f"CREATE TABLE IF NOT EXISTS {_ALIAS}.{spec.name} ({self._columns_sql(spec)})")
                have = {r[0] for r in cur.execute(f"DESCRIBE {_ALIAS}.{spec.name}").fetchall()}
                for column in spec.columns:
                    if column.name not in have:
                        cur.execute(f'ALTER TABLE {_ALIAS}.{spec.name} ADD COLUMN "{column.name}" {column.sql_type}')

        self._transact(create)
        self._ensured.update((s.name, tuple(s.column_names)) for s in wanted)

    @staticmethod
    def _existing(cur: duckdb.DuckDBPyConnection) -> set[str]:
        """Tables the catalog holds now; reads of a table not created yet see no rows and create nothing."""
        rows = cur.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [_ALIAS]).fetchall()
        return {r[0] for r in rows}

    def _rows(self, spec: TableSpec, sql: str, params: list, columns: Sequence[str] | None = None) -> pa.Table:
        """``sql`` (reading ``{table}``) on a read cursor; an empty table of the schema when the table is missing."""
        def work(cur: duckdb.DuckDBPyConnection) -> pa.Table:
            if spec.name not in self._existing(cur):
                return _projected(spec, spec.schema.empty_table(), columns)
            return _projected(spec, cur.execute(sql.format(table=f"{_ALIAS}.{spec.name}"), params).fetch_arrow_table(), columns)

        return self._read(work)

    def partitions(self, spec: TableSpec) -> list[str]:
        def work(cur: duckdb.DuckDBPyConnection) -> list:
            if spec.name not in self._existing(cur):
                return []
            return cur.execute(f'SELECT DISTINCT "{PARTITION}" FROM {_ALIAS}.{spec.name} ORDER BY 1').fetchall()

        return [r[0] for r in self._read(work)]

    def table_stamp(self, spec: TableSpec) -> Hashable | None:
        """(the table's id, the newest snapshot that changed it); None before it exists.

        Per table: a daily cycle's later writes (predictions, drift scores, alerts) must not invalidate what the
        service cached from ``market_bars`` and ``features`` (a warm-up of fresh forecasts would be thrown away)."""

        def work(cur: duckdb.DuckDBPyConnection) -> tuple | None:
            found = cur.execute(f"SELECT table_id FROM ducklake_table_info({_sql_string(_ALIAS)}) WHERE table_name = ?", [spec.name]).fetchone()
            if found is None:
                return None
            table = str(found[0])  # a table dropped and created again has a new id, so a new stamp
            # Any change naming its id: inserts and deletes, and also the rows of a small insert that DuckLake keeps in
            # the catalog ("inlined_insert", "inlined_delete": an alert, a 4-symbol session), which a stamp read from
            # tables_inserted_into / tables_deleted_from alone missed.
            changed, oldest = cur.execute(
                "SELECT max(snapshot_id) FILTER (WHERE list_contains(flatten(map_values(changes)), ?)), min(snapshot_id) "
                f"FROM ducklake_snapshots({_sql_string(_ALIAS)})",
                [table],
            ).fetchone()
            if changed is not None:
                return found[0], changed
            # Its last change was expired (expire_snapshots): "before the oldest snapshot kept" still names one state,
            # since the oldest kept only grows and any later change has a snapshot of its own.
            return found[0], "before", oldest

        return self._read(work)

    def read_partitions(
        self, spec: TableSpec, names: Iterable[str] | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table:
        where, params = "", []
        if names is not None:
            wanted = [check_partition_name(spec, n) for n in names]
            where, params = f'WHERE list_contains(?, "{PARTITION}")', [wanted]
        sql = f"SELECT {_quoted(columns or spec.column_names)} FROM {{table}} {where} ORDER BY {_order_by(spec)}"
        return self._rows(spec, sql, params, columns)

    # ----- writes ---------------------------------------------------------------------------------
    def _transact(self, build: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``build`` in one transaction, committed; after a commit conflict, rolled back and run again."""
        deadline, attempt = time.monotonic() + COMMIT_RETRY_S, 0
        while True:
            cur = self._connection(read_only=False)
            try:
                cur.begin()
                value = build(cur)
                cur.commit()
                return value
            except BaseException as exc:
                try:
                    cur.rollback()
                except duckdb.Error:
                    pass
                if not _is_conflict(exc) or time.monotonic() > deadline:
                    raise
                attempt += 1
                log.info("DuckLake commit conflict (attempt %d), retrying: %s", attempt, _first_line(exc))
                time.sleep(min(1.0, 0.02 * 2 ** min(attempt, 6)) * (0.5 + random.random()))
            finally:
                cur.close()

    @space.full_disk_named
    def write(self, partitions: Iterable[tuple[TableSpec, str]], build: Callable[[Transaction], T]) -> T:
        wanted = sorted({(spec.name, name): spec for spec, name in partitions}.items())
        self.ensure_catalog(Catalog(tuple({spec.name: spec for (_, _), spec in wanted}.values())))
        lock_root = self.root / ".locks"
        with atomic.locks([(lock_root / table, name) for (table, name), _ in wanted]):
            value = self._transact(lambda cur: build(_DuckLakeTransaction(cur)))
        self._expire_when_due()
        return value

    # ----- maintenance --------------------------------------------------------------------------------
    def expire_snapshots(self, older_than: dt.datetime) -> tuple[int, int]:
        """Expire the snapshots committed before ``older_than`` (never the newest) and delete the data files no kept
        snapshot uses: (snapshots expired, files deleted). Readers read the newest snapshot, whose files are never
        among them, so only time travel further back than ``older_than`` is lost. The files are deleted at once
        (DuckLake on Postgres schedules them at the expiry, on SQLite at their snapshot's time)."""
        alias = _sql_string(_ALIAS)

        def at(when: dt.datetime) -> str:
            return f"{_sql_string(when.astimezone(dt.timezone.utc).isoformat())}::TIMESTAMPTZ"

        expired = self._transact(lambda cur: cur.execute(f"CALL ducklake_expire_snapshots({alias}, older_than => {at(older_than)})").fetchall())
        now = dt.datetime.now(dt.timezone.utc)
        deleted = self._transact(lambda cur: cur.execute(f"CALL ducklake_cleanup_old_files({alias}, older_than => {at(now)})").fetchall())
        return len(expired), len(deleted)

    def _expire_when_due(self) -> None:
        """After a write, at most hourly per process: expire what is older than ``keep_hours`` (0: never). A failure
        is a warning, not a failed write: the rows are committed, and the next write tries again."""
        if not self.keep_hours or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + min(3600.0, self.keep_hours * 3600)
        older_than = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=self.keep_hours)
        try:
            oldest = self._read(lambda cur: cur.execute(
                f"SELECT min(snapshot_time) FROM ducklake_snapshots({_sql_string(_ALIAS)})").fetchone()[0])
            if oldest is None or oldest >= older_than:
                return
            started = time.perf_counter()
            expired, deleted = self.expire_snapshots(older_than)
        except duckdb.Error as exc:
            log.warning("DuckLake snapshots older than %g h not expired (the next write tries again): %s", self.keep_hours, _first_line(exc))
            return
        log.info("DuckLake: %d snapshots older than %g h expired, %d files deleted in %.2f s",
                 expired, self.keep_hours, deleted, time.perf_counter() - started)

    # ----- reads ----------------------------------------------------------------------------------
    def read(
        self,
        spec: TableSpec,
        symbols: Iterable[str] | None = None,
        start: dt.date | str | None = None,
        end: dt.date | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        wanted = list(columns) if columns else list(spec.column_names)
        unknown = [c for c in wanted if c not in spec.column_names]
        if unknown:
            raise KeyError(f"{spec.name} has no column {unknown[0]!r}")
        conditions, params = [], []
        if symbols is not None:
            conditions.append(f'list_contains(?, "{PARTITION}")')
            params.append(list(symbols))
        if start is not None:
            conditions.append("date >= ?")
            params.append(pd.Timestamp(start).date())
        if end is not None:
            conditions.append("date <= ?")
            params.append(pd.Timestamp(end).date())
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT {_quoted(wanted)} FROM {{table}} {where} ORDER BY {_quoted(spec.key)}"
        table = self._rows(spec, sql, params, wanted)
        if not table.num_rows:
            return empty_frame(spec)[wanted]
        out = table.to_pandas()
        return with_datetime_dates(out)

    def query(
        self,
        sql: str,
        params: Sequence[object] | None = None,
        on_damaged: Callable[[Path, str], None] | None = None,
    ) -> pd.DataFrame:
        """Read-only SQL: views of the declared columns under the tables' names, on a read-only attachment
        (``on_damaged`` has nothing to report here: DuckLake's files are written whole, by commits). A table not
        created yet reads as no rows; nothing is created."""
        refuse_writes(sql)
        catalog = registered_catalog()
        names = views_needed(catalog, sql)

        def work(cur: duckdb.DuckDBPyConnection) -> pd.DataFrame:
            existing = self._existing(cur)
            for spec in catalog.tables:
                if spec.name in names:
                    source = f"{_ALIAS}.{spec.name}" if spec.name in existing else "(SELECT {} WHERE false)".format(
                        ", ".join(f'CAST(NULL AS {c.sql_type}) AS "{c.name}"' for c in spec.columns))
                    cur.execute(f"CREATE OR REPLACE TEMP VIEW {spec.name} AS SELECT {_quoted(spec.column_names)} FROM {source}")
            for view in catalog.views:
                if view.name in names:
                    cur.execute(f"CREATE OR REPLACE TEMP VIEW {view.name} AS {view.sql}")
            try:
                return cur.execute(sql, params or []).df()
            except duckdb.PermissionException as exc:
                raise QueryRefused(f"{_first_line(exc)}: queries here read only the warehouse") from None

        return self._read(work)


class _DuckLakeTransaction(Transaction):
    """Statements on the write cursor inside one DuckLake transaction."""

    def __init__(self, cur: duckdb.DuckDBPyConnection):
        self.cur = cur

    def read(self, spec: TableSpec, name: str, columns: Sequence[str] | None = None) -> pa.Table | None:
        found = self.read_many(spec, [name]).get(name)
        return None if found is None else _projected(spec, found, columns)

    def read_many(self, spec: TableSpec, names: Sequence[str]) -> dict[str, pa.Table]:
        """One query for all the partitions (a query costs tens of milliseconds on a DuckLake catalog)."""
        wanted = [check_partition_name(spec, n) for n in names]
        table = self.cur.execute(
            f'SELECT {_quoted([PARTITION, *spec.column_names])} FROM {_ALIAS}.{spec.name} '
            f'WHERE list_contains(?, "{PARTITION}") ORDER BY {_order_by(spec)}',
            [wanted],
        ).fetch_arrow_table()
        parts = table.column(PARTITION)
        return {name: _projected(spec, table.filter(pc.equal(parts, name))) for name in pc.unique(parts).to_pylist()}

    def _insert(self, spec: TableSpec, table: pa.Table, partition: pa.Array, row: pa.Array) -> None:
        rows = table.cast(spec.schema).append_column(PARTITION, partition).append_column(ROW, row)
        self.cur.register("ibf_rows", rows)
        try:
            self.cur.execute(f"INSERT INTO {_ALIAS}.{spec.name} BY NAME SELECT * FROM ibf_rows")
        finally:
            self.cur.unregister("ibf_rows")

    def put(self, spec: TableSpec, name: str, table: pa.Table) -> None:
        self.delete(spec, name)
        n = table.num_rows
        if n:
            self._insert(spec, table, pa.array([name] * n, pa.string()), pa.array(range(n), pa.int64()))

    def delete(self, spec: TableSpec, name: str) -> None:
        check_partition_name(spec, name)
        self.cur.execute(f'DELETE FROM {_ALIAS}.{spec.name} WHERE "{PARTITION}" = ?', [name])

    def replace_slice(
        self, spec: TableSpec, frame: pd.DataFrame, symbols: Sequence[str], start: dt.date | str, end: dt.date | str
    ) -> WriteResult:
        """``DELETE`` the slice, ``INSERT`` the frame: the transaction makes the two one change."""
        lo, hi = date_bounds(start, end)
        check_slice(spec, frame, symbols, lo, hi)
        names = sorted(set(symbols))
        new_table = to_arrow(spec, frame)
        where = f'list_contains(?, "{PARTITION}") AND date BETWEEN ? AND ?'
        params = [names, lo.date(), hi.date()]
        replaced = self.cur.execute(f"SELECT count(*) FROM {_ALIAS}.{spec.name} WHERE {where}", params).fetchone()[0]
        if replaced:
            self.cur.execute(f"DELETE FROM {_ALIAS}.{spec.name} WHERE {where}", params)
        if new_table.num_rows:
            symbols_col = new_table.column("symbol").combine_chunks()
            self._insert(spec, new_table, symbols_col, pa.array(range(new_table.num_rows), pa.int64()))
        return WriteResult(spec.name, tuple(names), lo.date(), hi.date(), len(frame), int(replaced))
