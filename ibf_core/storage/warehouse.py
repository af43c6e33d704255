"""The DuckDB warehouse: Parquet files per (table, symbol) written atomically, exposed as DuckDB views.

Why not tables inside the DuckDB file: DuckDB admits one writing process *or* many readers. If runs wrote into
``warehouse.duckdb`` an analyst's open session would block them and their writes would break ``ibf sql``.
Here writers only ever replace Parquet files (``ibf_core.storage.atomic``: stage a temp file, fsync, swap it in
with ``os.replace``; a crash leaves the old file, never a hole); ``warehouse.duckdb`` holds nothing but views
over those files, so any number of readers open it read-only while runs write. Per-symbol file locks make two
concurrent writers safe as well.

Views carry their version (a hash of their SQL) as a DuckDB comment ``ibf:<version>``; ensuring writes only the
views whose version differs, so a changed definition reaches existing warehouses. Even a read-only open of
``warehouse.duckdb`` conflicts with a read-write session (the DuckDB CLI's default), so the versions ibf last saw
are kept beside it (``.warehouse-views.json``, with the file's inode, size and mtime): while the file is unchanged
and the versions are current, a writer never opens it. When it must, and another process holds the file, it fails
within seconds naming that process.

Reads never open ``warehouse.duckdb`` either: :meth:`Warehouse.query` defines the views it needs on an in-memory
DuckDB, and every read connection is locked down (SELECT statements only; no file outside the lake; no
extension, ATTACH or configuration change), so no query can damage the lake. A damaged (e.g. truncated) Parquet
file is named in the error of a read; the next write of that symbol's slice quarantines it under
``lake/_quarantine/`` and writes the slice.

Which tables and views exist is the registered catalog's business (``ibf_core.catalog``); storage imports none of
the modules declaring them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from ibf_core.storage import atomic, space
from ibf_core.storage.parquet_files import damage, read_whole
from ibf_core.storage.interface import (
    WHOLE_TABLE,
    DamagedFile,
    DiskFullError,
    QueryRefused,
    TableStore,
    Transaction,
    WarehouseError,
    WarehouseLocked,
    WriteResult,
    check_partition_name,
    check_slice,
    date_bounds,
    empty_frame,
    refuse_writes,
    symbol_rows,
    to_arrow,
    views_needed,
    with_datetime_dates,
)
from ibf_core.storage.registry import registered_catalog
from ibf_core.storage.tables import SCHEMA_FILE, Catalog, TableSpec, ViewSpec, data_files

T = TypeVar("T")
__all__ = ["DamagedFile", "DiskFullError", "QueryRefused", "Warehouse", "WarehouseError", "WarehouseLocked", "WriteResult"]
_VERSION_TAG = "ibf:"
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")
# ibf itself holds warehouse.duckdb for milliseconds (defining views); anything longer is someone's session.
LOCK_WAIT_S = 3.0
VIEWS_FILE = ".warehouse-views.json"
QUARANTINE = "_quarantine"
# Every read connection: nothing outside the allowed folders, no extension, and no way to undo these settings.
_LOCKDOWN = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET enable_progress_bar = false",
    "SET lock_configuration = true",
)

log = logging.getLogger(__name__)


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


_retry_on_lock = retry(
    retry=retry_if_exception(_is_lock_conflict),
    wait=wait_exponential(multiplier=0.05, max=0.5),
    stop=stop_after_delay(LOCK_WAIT_S),
    reraise=True,
)


def _command_line(pid: int) -> str | None:
    """The command line of a local process (``/proc``), to name who holds the warehouse."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    text = " ".join(part for part in raw.decode(errors="replace").split("\0") if part)
    return text[:117] + "..." if len(text) > 120 else text or None


def _holder(exc: BaseException) -> str:
    """``PID 4242 (duckdb .ibf/warehouse.duckdb)`` from DuckDB's lock error (it names the PID and the program)."""
    match = _LOCK_HOLDER.search(str(exc))
    if match is None:
        return "another process"
    pid = int(match["pid"])
    return f"PID {pid} ({_command_line(pid) or match['program']})"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _ConcurrentSwap(Exception):
    """A read failed while a writer swapped files under it; the read is safe to repeat."""


_retry_after_swap = retry(
    retry=retry_if_exception(lambda e: isinstance(e, _ConcurrentSwap)),
    wait=wait_exponential(multiplier=0.02, max=0.5),
    stop=stop_after_delay(30),
    reraise=True,
)


def _view_statements(view: ViewSpec) -> list[str]:
    """Define the view, then stamp its version (``CREATE OR REPLACE`` drops the comment, so always both)."""
    return [
        f"CREATE OR REPLACE VIEW {view.name} AS {view.sql}",
        f"COMMENT ON VIEW {view.name} IS '{_VERSION_TAG}{view.version}'",
    ]


class Warehouse(TableStore):
    """The Parquet lake (``IBF_WAREHOUSE=lake``): one file per partition under ``home/lake/<table>/``; SQL through
    ``warehouse.duckdb``'s views (or :meth:`query`)."""

    backend = "lake"

    def __init__(self, home: Path | str):
        self.home = Path(home).expanduser().resolve()
        self.db_path = self.home / "warehouse.duckdb"
        self.lake_dir = self.state_dir = self.home / "lake"
        self.views_file = self.home / VIEWS_FILE
        self.quarantine_dir = self.lake_dir / QUARANTINE

    # ----- layout -------------------------------------------------------------------------------
    def table_dir(self, spec: TableSpec) -> Path:
        return self.lake_dir / spec.name

    def partition_file(self, spec: TableSpec, name: str) -> Path:
        return self.table_dir(spec) / f"{check_partition_name(spec, name)}.parquet"

    def _symbol_file(self, spec: TableSpec, symbol: str) -> Path:
        if not spec.per_symbol:
            raise WarehouseError(f"{spec.name}: files are {spec.files}, not one per symbol")
        return self.partition_file(spec, symbol)

    def lock(self, folder: Path, name: str) -> atomic.FileLock:
        """An inter-process lock for read-modify-write of files under ``folder`` (see ``atomic.lock``)."""
        return atomic.lock(folder, name)

    def describe(self) -> str:
        return f"Parquet lake {self.lake_dir} (views in {self.db_path})"

    # ----- tables and views ---------------------------------------------------------------------
    def table_view(self, spec: TableSpec) -> ViewSpec:
        """The view over every Parquet file of the table's folder (its version changes when the folder does)."""
        pattern = str(self.table_dir(spec) / "*.parquet").replace("'", "''")
        return ViewSpec(spec.name, f"SELECT * FROM read_parquet('{pattern}', union_by_name = true)")

    def _ensure_folder(self, spec: TableSpec) -> None:
        """The table folder with its empty schema file, so the view reads no rows rather than failing; a schema file
        of an older declaration (a column added since) is rewritten, so reads see the new column as NULL in old files."""
        schema_file = self.table_dir(spec) / SCHEMA_FILE
        if not schema_file.exists() or pq.read_schema(schema_file).names != spec.column_names:
            atomic.write_parquet(schema_file, spec.schema.empty_table())

    def exists(self) -> bool:
        return self.db_path.exists()

    def partitions(self, spec: TableSpec) -> list[str]:
        return [p.stem for p in data_files(self.table_dir(spec))]

    def table_stamp(self, spec: TableSpec) -> int | None:
        """The table folder's modification time: every swap (``os.replace`` into it) changes it."""
        try:
            return self.table_dir(spec).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def read_partitions(
        self, spec: TableSpec, names: Iterable[str] | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table:
        wanted = self.partitions(spec) if names is None else list(names)
        tables = [t for t in (self._read_file(spec, self.partition_file(spec, n), columns) for n in wanted) if t is not None]
        if not tables:
            schema = spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _read_file(self, spec: TableSpec, path: Path, columns: Sequence[str] | None = None) -> pa.Table | None:
        """A partition file's rows (None: no file); a damaged one raises :class:`DamagedFile` naming it."""
        try:
            return pq.read_table(path, columns=list(columns) if columns else None, schema=spec.schema)
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError):
            reason = damage(path)
            if reason is None:
                raise
            raise self._damage_error([(path, reason)]) from None

    @space.full_disk_named
    def ensure_catalog(self, catalog: Catalog) -> None:
        """Folders, schema files and views of every table of ``catalog``, then its views."""
        for spec in catalog.tables:
            self._ensure_folder(spec)
        self.ensure_views([*(self.table_view(s) for s in catalog.tables), *catalog.views])

    def ensure_views(self, views: Sequence[ViewSpec]) -> None:
        """(Re)define the views whose stored version differs. While ``warehouse.duckdb`` is unchanged since ibf last
        saw it and its versions are current, the file is not even opened, so no session on it blocks this."""
        known = self._known_versions()
        if known is not None and all(known.get(v.name) == v.version for v in views):
            return
        stored = self.view_versions()
        stale = [v for v in views if stored.get(v.name) != v.version]
        if stale:
            self._execute_write([sql for v in stale for sql in _view_statements(v)])
            stored = {**stored, **{v.name: v.version for v in stale}}
        self._remember_versions(stored)

    def _db_stamp(self) -> list[int] | None:
        try:
            stat = self.db_path.stat()
        except FileNotFoundError:
            return None
        return [stat.st_ino, stat.st_size, stat.st_mtime_ns]

    def _known_versions(self) -> dict[str, str | None] | None:
        """The view versions ibf last read or wrote, if ``warehouse.duckdb`` has not changed since (else None)."""
        try:
            recorded = json.loads(self.views_file.read_text())
        except (OSError, ValueError):
            return None
        stamp = self._db_stamp()
        if stamp is None or not isinstance(recorded, dict) or recorded.get("db") != stamp:
            return None
        views = recorded.get("views")
        return views if isinstance(views, dict) else None

    def _remember_versions(self, versions: dict[str, str | None]) -> None:
        stamp = self._db_stamp()
        if stamp is not None:
            atomic.write_json(self.views_file, {"db": stamp, "views": versions}, sort_keys=True)

    def view_versions(self) -> dict[str, str | None]:
        """Version of each view defined in ``warehouse.duckdb`` (None for a view without an ibf version)."""
        if not self.db_path.exists():
            return {}
        try:
            rows = self._view_rows()
        except duckdb.IOException as exc:
            if _is_lock_conflict(exc):
                raise self._locked(exc) from exc
            raise
        return {name: c[len(_VERSION_TAG):] if c and c.startswith(_VERSION_TAG) else None for name, c in rows}

    @_retry_on_lock
    def _view_rows(self) -> list[tuple[str, str | None]]:
        with duckdb.connect(str(self.db_path), read_only=True) as con:
            return con.execute("SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall()

    def _locked(self, exc: BaseException) -> WarehouseLocked:
        return WarehouseLocked(
            f"{self.db_path} is held by {_holder(exc)}, and ibf must (re)define its views there (a table appeared, "
            "its folder moved or its definition changed): close that session (open the warehouse read-only, "
            "`duckdb -readonly`, or use `ibf sql`), then re-run"
        )

    def _execute_write(self, statements: Sequence[str]) -> None:
        """The only write to ``warehouse.duckdb``: (re)defining views in one transaction, held for milliseconds."""
        try:
            self._write_views(statements)
        except duckdb.IOException as exc:
            if _is_lock_conflict(exc):
                raise self._locked(exc) from exc
            raise

    @_retry_on_lock
    def _write_views(self, statements: Sequence[str]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(self.db_path)) as con:
            con.begin()
            for sql in statements:
                con.execute(sql)
            con.commit()

    # ----- writes -------------------------------------------------------------------------------
    def _stored(self, spec: TableSpec, target: Path, lo: pd.Timestamp, hi: pd.Timestamp) -> tuple[pa.Table | None, str | None]:
        """The rows stored in ``target`` (None: no file), and where a damaged ``target`` was quarantined.

        A damaged file (truncated, not Parquet) is copied to ``lake/_quarantine/<table>/`` and counts as empty: the
        slice being written replaces it, and the rows it may have held outside the slice are kept there.
        """
        if not target.exists():
            return None, None
        try:
            return read_whole(target, spec.schema), None
        except (pa.ArrowException, OSError):
            reason = damage(target)
            if reason is None:
                raise
        data = target.read_bytes()
        kept = self.quarantine_dir / spec.name / f"{target.stem}.{hashlib.sha256(data).hexdigest()[:12]}{target.suffix}"
        if not kept.exists():
            atomic.write_bytes(kept, data)
        log.warning(
            "%s is damaged (%s): quarantined as %s and replaced by the slice %s..%s being written; rows it held "
            "outside that slice are only in the quarantined copy",
            target, reason, kept, lo.date(), hi.date(),
        )
        return None, str(kept)

    @staticmethod
    def _merge(old: pa.Table | None, new: pa.Table, lo: pd.Timestamp, hi: pd.Timestamp) -> tuple[pa.Table, int]:
        """``old``'s rows outside [lo, hi] plus ``new``, by date; and how many stored rows were in [lo, hi]."""
        if old is None:
            return new, 0
        lo_d, hi_d = pa.scalar(lo.date(), pa.date32()), pa.scalar(hi.date(), pa.date32())
        in_slice = pc.and_(pc.greater_equal(old["date"], lo_d), pc.less_equal(old["date"], hi_d))
        replaced = pc.sum(in_slice).as_py() or 0
        kept = old.filter(pc.invert(in_slice))
        if not kept.num_rows:
            return new, replaced
        merged = pa.concat_tables([kept, new])
        return merged.take(pc.sort_indices(merged, [("date", "ascending")])), replaced

    @space.full_disk_named
    def write(self, partitions: Iterable[tuple[TableSpec, str]], build: Callable[[Transaction], T]) -> T:
        """Under the partitions' file locks, one :class:`atomic.AtomicBatch`: every file ``build`` writes is staged
        before the first is swapped in, so a failure while building changes nothing. Leftover temp files of the
        partitions' dead writers are removed under their locks. A full disk raises :class:`DiskFullError`, nothing changed."""
        wanted = sorted({(spec.name, name): spec for spec, name in partitions}.items())
        by_table: dict[str, tuple[TableSpec, list[str]]] = {}
        for (table, name), spec in wanted:
            by_table.setdefault(table, (spec, []))[1].append(name)
        for spec, _ in by_table.values():
            self.ensure_table(spec)
        with atomic.locks([(self.table_dir(spec), n) for spec, names in by_table.values() for n in names]):
            for spec, names in by_table.values():
                held = ["*.parquet"] if WHOLE_TABLE in names else [f"{n}.parquet" for n in names]
                atomic.remove_stale_temps(self.table_dir(spec), held=held)
            with atomic.AtomicBatch(commit_lock=atomic.lock(self.home, atomic.COMMIT_LOCK)) as batch:  # see backup
                return build(_LakeTransaction(self, batch))

    # ----- reads --------------------------------------------------------------------------------
    def _lake_version(self) -> tuple[int, ...]:
        """Modification times of the table folders: a swapped-in file changes its folder's mtime."""
        if not self.lake_dir.exists():
            return ()
        return tuple(p.stat().st_mtime_ns for p in sorted(self.lake_dir.iterdir()) if p.is_dir())

    def _read_consistently(self, run):
        """Run a read; if it fails while a writer swapped files (DuckDB reads a file's footer and data in
        separate opens), repeat it. A failure with no concurrent swap is raised as it is."""
        before = self._lake_version()
        try:
            return run()
        except duckdb.Error as exc:
            if self._lake_version() != before:
                raise _ConcurrentSwap() from exc
            raise

    def _read_connection(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB that reads the lake and nothing else: no file outside it, no extension, no way to
        change that. It can still write inside the lake (``COPY ... TO``), hence :func:`_refuse_writes` too."""
        spill = self.home / "tmp" / "duckdb"  # where a query larger than memory may spill
        con = duckdb.connect(":memory:")
        try:
            allowed = ", ".join(_sql_string(str(p) + os.sep) for p in (self.lake_dir, spill))
            con.execute(f"SET allowed_directories = [{allowed}]")
            con.execute(f"SET temp_directory = {_sql_string(str(spill))}")
            for setting in _LOCKDOWN:
                con.execute(setting)
        except BaseException:
            con.close()
            raise
        return con

    def _damaged(self, files: Iterable[Path]) -> list[tuple[Path, str]]:
        found = []
        for path in files:
            reason = damage(path)
            if reason is not None:
                found.append((path, reason))
        return found

    def _damage_error(self, damaged: list[tuple[Path, str]]) -> DamagedFile:
        path, reason = damaged[0]
        table = path.parent.name
        fix = f"backfill {path.stem} ({table}) to replace it" if table in self._per_symbol_tables() else "re-run the asset that writes it"
        more = f" (and {len(damaged) - 1} more damaged file(s))" if len(damaged) > 1 else ""
        return DamagedFile(f"{path} is damaged: {reason}; {fix}{more}")

    @staticmethod
    def _per_symbol_tables() -> set[str]:
        return {t.name for t in registered_catalog().tables if t.per_symbol}

    def symbols(self, spec: TableSpec) -> list[str]:
        return [p.stem for p in data_files(self.table_dir(spec))]

    def read(
        self,
        spec: TableSpec,
        symbols: Iterable[str] | None = None,
        start: dt.date | str | None = None,
        end: dt.date | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Rows of a table (optionally a symbol x date slice, only ``columns``), sorted by key; ``date`` as
        datetime64. Only the requested symbols' files are opened; a damaged one raises :class:`DamagedFile` naming it."""
        stored = self.symbols(spec)  # listed once: listing per wanted symbol made a 500-symbol read quadratic (27 s)
        known = set(stored)
        wanted = stored if symbols is None else [s for s in symbols if s in known]
        files = [str(self._symbol_file(spec, s)) for s in wanted]
        if not files:
            return empty_frame(spec)[list(columns)] if columns else empty_frame(spec)
        schema_file = self.table_dir(spec) / SCHEMA_FILE
        if schema_file.exists():  # first, so a column declared after older files were written reads as NULL there
            files.insert(0, str(schema_file))
        conditions, params = [], []
        if start is not None:
            conditions.append("date >= ?")
            params.append(pd.Timestamp(start).date())
        if end is not None:
            conditions.append("date <= ?")
            params.append(pd.Timestamp(end).date())
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        order = ", ".join(spec.key)
        chosen = ", ".join(_quoted_name(spec, c) for c in columns) if columns else "*"
        plain = f"SELECT {chosen} FROM read_parquet(?) {where} ORDER BY {order}"
        by_name = plain.replace("read_parquet(?)", "read_parquet(?, union_by_name = true)", 1)

        @_retry_after_swap
        def run() -> pd.DataFrame:
            def once() -> pd.DataFrame:
                with self._read_connection() as con:
                    # Files written since the last column was declared match the schema file: read them as one
                    # schema (union_by_name reads every footer first, ~1.3 s of 500 files); by name only when one
                    # predates a declared column.
                    try:
                        return con.execute(plain, [files, *params]).df()
                    except duckdb.InvalidInputException as exc:
                        if "schema mismatch" not in str(exc):
                            raise
                        return con.execute(by_name, [files, *params]).df()

            return self._read_consistently(once)

        try:
            out = run()
        except duckdb.Error:
            damaged = self._damaged(Path(f) for f in files)
            if damaged:
                raise self._damage_error(damaged) from None
            raise
        return with_datetime_dates(out)

    def query(
        self,
        sql: str,
        params: Sequence[object] | None = None,
        on_damaged: Callable[[Path, str], None] | None = None,
    ) -> pd.DataFrame:
        """Run read-only SQL over the warehouse's views; it cannot change anything, and never opens
        ``warehouse.duckdb`` (so no session on that file blocks it).

        Only SELECT statements run (:class:`QueryRefused` otherwise), files outside the lake cannot be read. A
        damaged Parquet file raises :class:`DamagedFile` naming it; with ``on_damaged`` it is left out of the
        views instead, and ``on_damaged(path, reason)`` says so.
        """
        refuse_writes(sql)
        catalog = registered_catalog()
        names = views_needed(catalog, sql)
        left_out: set[Path] = set()
        while True:
            try:
                return self._query_once(catalog, names, left_out, sql, params)
            except duckdb.PermissionException as exc:
                raise QueryRefused(f"{str(exc).splitlines()[0]}: queries here read only the lake ({self.lake_dir})") from None
            except duckdb.Error:
                folders = [self.table_dir(t) for t in catalog.tables if t.name in names]
                damaged = [d for d in self._damaged(p for f in folders for p in sorted(f.glob("*.parquet"))) if d[0] not in left_out]
                if not damaged:
                    raise
                if on_damaged is None:
                    raise self._damage_error(damaged) from None
                for path, reason in damaged:
                    on_damaged(path, reason)
                    left_out.add(path)

    def _memory_view_sql(self, spec: TableSpec, left_out: set[Path]) -> str:
        """What the table's view reads on a query connection: its files (less any left out), or no rows."""
        files = sorted(self.table_dir(spec).glob("*.parquet"))
        kept = [f for f in files if f not in left_out]
        if not kept:
            columns = ", ".join(f'CAST(NULL AS {c.sql_type}) AS "{c.name}"' for c in spec.columns)
            return f"SELECT {columns} WHERE false"
        if len(kept) == len(files):
            return self.table_view(spec).sql
        listed = ", ".join(_sql_string(str(f)) for f in kept)
        return f"SELECT * FROM read_parquet([{listed}], union_by_name = true)"

    @_retry_after_swap
    def _query_once(
        self, catalog: Catalog, names: set[str], left_out: set[Path], sql: str, params: Sequence[object] | None
    ) -> pd.DataFrame:
        def once() -> pd.DataFrame:
            with self._read_connection() as con:
                for spec in catalog.tables:
                    if spec.name in names:
                        con.execute(f"CREATE VIEW {spec.name} AS {self._memory_view_sql(spec, left_out)}")
                for view in catalog.views:
                    if view.name in names:
                        con.execute(f"CREATE VIEW {view.name} AS {view.sql}")
                return con.execute(sql, params or []).df()

        return self._read_consistently(once)


class _LakeTransaction(Transaction):
    """Files staged in one batch; the caller's locks are held."""

    def __init__(self, store: Warehouse, batch: atomic.AtomicBatch):
        self.store, self.batch = store, batch

    def read(self, spec: TableSpec, name: str, columns: Sequence[str] | None = None) -> pa.Table | None:
        return self.store._read_file(spec, self.store.partition_file(spec, name), columns)

    def put(self, spec: TableSpec, name: str, table: pa.Table) -> None:
        self.batch.stage_parquet(self.store.partition_file(spec, name), table.cast(spec.schema))

    def delete(self, spec: TableSpec, name: str) -> None:
        self.batch.delete(self.store.partition_file(spec, name))

    def replace_slice(
        self, spec: TableSpec, frame: pd.DataFrame, symbols: Sequence[str], start: dt.date | str, end: dt.date | str
    ) -> WriteResult:
        """Each symbol's file merged (rows outside the slice kept) and staged; byte-identical for the same inputs."""
        store = self.store
        lo, hi = date_bounds(start, end)
        check_slice(spec, frame, symbols, lo, hi)
        new_table = to_arrow(spec, frame)
        rows = symbol_rows(new_table)
        names = sorted(set(symbols))
        outcomes: dict[str, tuple[int, str | None]] = {}

        def merged(symbol: str, target: Path) -> pa.Table:
            a, b = rows.get(symbol, (0, 0))
            old, kept = store._stored(spec, target, lo, hi)
            table, n = store._merge(old, new_table.slice(a, b - a), lo, hi)
            outcomes[symbol] = (n, kept)
            return table

        # Read, merge and write each symbol's file on a few threads (Arrow and zstd release the GIL).
        targets = [(s, store._symbol_file(spec, s)) for s in names]
        self.batch.stage_parquet_many((t, functools.partial(merged, s, t)) for s, t in targets)
        replaced = sum(n for n, _ in outcomes.values())
        quarantined = [outcomes[s][1] for s in names if outcomes[s][1]]
        return WriteResult(spec.name, tuple(names), lo.date(), hi.date(), len(frame), replaced, tuple(quarantined))


def _quoted_name(spec: TableSpec, column: str) -> str:
    """A declared column of ``spec``, quoted for SQL; any other name is an error naming it."""
    if column not in spec.column_names:
        raise KeyError(f"{spec.name} has no column {column!r}")
    return '"' + column + '"'
