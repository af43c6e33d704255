"""The DuckDB warehouse: Parquet files per (table, symbol) written atomically, exposed as DuckDB views.

Why not tables inside the DuckDB file: DuckDB admits one writing process *or* many readers. If runs wrote into
``warehouse.duckdb`` an analyst's open session would block them and their writes would break ``ibf sql``.
Here writers only ever replace Parquet files (write a temp file, then ``os.replace``: a crash leaves the old
file, never a hole); ``warehouse.duckdb`` holds nothing but views over those files, so any number of readers
open it read-only while runs write. Per-symbol file locks make two concurrent writers safe as well.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from ibf_core.storage.tables import TABLES, TableSpec

_SCHEMA_FILE = "_schema.parquet"
_LOCK_WAIT_S = 120.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")


class WarehouseError(RuntimeError):
    """The warehouse could not be read or written."""


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


# A writer refreshing views holds the file for milliseconds; readers and writers wait for each other briefly.
_retry_on_lock = retry(
    retry=retry_if_exception(_is_lock_conflict),
    wait=wait_exponential(multiplier=0.05, max=1.0),
    stop=stop_after_delay(30),
    reraise=True,
)


def stage_parquet(table: pa.Table, target: Path) -> Path:
    """Write ``table`` durably (fsync) to a hidden temp file beside ``target``; the caller ``os.replace``s it in."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


class _ConcurrentSwap(Exception):
    """A read failed while a writer swapped files under it; the read is safe to repeat."""


_retry_after_swap = retry(
    retry=retry_if_exception(lambda e: isinstance(e, _ConcurrentSwap)),
    wait=wait_exponential(multiplier=0.02, max=0.5),
    stop=stop_after_delay(30),
    reraise=True,
)


@dataclass(frozen=True)
class WriteResult:
    table: str
    symbols: tuple[str, ...]
    start: dt.date
    end: dt.date
    rows_written: int
    rows_replaced: int


def _date_bounds(start: dt.date | str, end: dt.date | str) -> tuple[pd.Timestamp, pd.Timestamp]:
    return pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()


class Warehouse:
    """Read and write symbol x date tables under ``home``; SQL through ``warehouse.duckdb``."""

    def __init__(self, home: Path | str):
        self.home = Path(home).expanduser().resolve()
        self.db_path = self.home / "warehouse.duckdb"
        self.lake_dir = self.home / "lake"

    # ----- layout -------------------------------------------------------------------------------
    def table_dir(self, spec: TableSpec) -> Path:
        return self.lake_dir / spec.name

    def _symbol_file(self, spec: TableSpec, symbol: str) -> Path:
        if not _SAFE_NAME.match(symbol):
            raise WarehouseError(f"{spec.name}: symbol {symbol!r} cannot be stored")
        return self.table_dir(spec) / f"{symbol}.parquet"

    def _lock(self, spec: TableSpec, symbol: str) -> FileLock:
        return self.lock(self.table_dir(spec), symbol)

    def ensure_table(self, spec: TableSpec) -> None:
        """Create the table folder, its empty schema file and its view (only when missing or moved)."""
        self.ensure_view(spec.name, self.table_dir(spec), spec.schema)

    def ensure_all_tables(self) -> None:
        """Views for every table ibf writes, so SQL on a table not yet materialized returns no rows, not an error."""
        from ibf_core.alerts import ensure_alerts_table
        from ibf_core.news.store import ensure_news_tables
        from ibf_core.features.table import features_spec

        for spec in (*TABLES.values(), features_spec()):
            self.ensure_table(spec)
        ensure_news_tables(self)
        ensure_alerts_table(self)
        if not self._view_matches("forecast_outcomes", "AS hit_95"):  # defined once; a read-only session never blocks it
            from ibf_core.monitoring import FORECAST_OUTCOMES_SQL

            self._execute_write(FORECAST_OUTCOMES_SQL)

    @_retry_on_lock
    def _view_matches(self, name: str, folder: str) -> bool:
        if not self.db_path.exists():
            return False
        with duckdb.connect(str(self.db_path), read_only=True) as con:
            rows = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()
        return bool(rows) and folder in rows[0][0]

    @_retry_on_lock
    def _execute_write(self, sql: str) -> None:
        """The only write to ``warehouse.duckdb``: (re)defining a view, held for milliseconds."""
        self.home.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(self.db_path)) as con:
            con.execute(sql)

    # ----- writes -------------------------------------------------------------------------------
    @staticmethod
    def _stage(table: pa.Table, target: Path) -> Path:
        return stage_parquet(table, target)

    def ensure_view(self, name: str, folder: Path, schema: pa.Schema) -> None:
        """A DuckDB view ``name`` over ``folder/*.parquet`` for tables not keyed by symbol x date (e.g. raw news)."""
        folder.mkdir(parents=True, exist_ok=True)
        schema_file = folder / _SCHEMA_FILE
        if not schema_file.exists():
            os.replace(stage_parquet(schema.empty_table(), schema_file), schema_file)
        pattern = str(folder / "*.parquet").replace("'", "''")
        sql = f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{pattern}', union_by_name = true)"
        if not self._view_matches(name, str(folder)):
            self._execute_write(sql)

    def lock(self, folder: Path, name: str) -> FileLock:
        """An inter-process lock for read-modify-write of one file under ``folder``."""
        lock_dir = folder / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"{name}.lock"), timeout=_LOCK_WAIT_S)

    def _to_arrow(self, spec: TableSpec, frame: pd.DataFrame) -> pa.Table:
        """The whole frame as one Arrow table of the declared schema, sorted by key."""
        missing = [c.name for c in spec.columns if c.name not in frame.columns and not c.optional]
        if missing:
            raise WarehouseError(f"{spec.name}: frame lacks column(s) {', '.join(missing)}")
        absent = {c.name: None for c in spec.columns if c.name not in frame.columns}
        data = frame.assign(**absent)[spec.column_names].sort_values(list(spec.key), kind="stable")
        data = data.assign(date=pd.to_datetime(data["date"]).to_numpy().astype("datetime64[D]"))
        return pa.Table.from_pandas(data, schema=spec.schema, preserve_index=False)

    def replace_slice(
        self,
        spec: TableSpec,
        frame: pd.DataFrame,
        symbols: Sequence[str],
        start: dt.date | str,
        end: dt.date | str,
    ) -> WriteResult:
        """Make the rows of ``symbols`` x ``[start, end]`` exactly ``frame``'s rows; other rows are kept.

        Idempotent: the same inputs give byte-identical files. Each symbol's file is replaced atomically; all
        new files are prepared before the first is swapped in, so a failure while preparing changes nothing.
        """
        import pyarrow.compute as pc

        lo, hi = _date_bounds(start, end)
        dates = pd.to_datetime(frame["date"])
        outside = ~frame["symbol"].isin(list(symbols)) | ~dates.between(lo, hi)
        if outside.any():
            bad = frame.loc[outside].iloc[0]
            raise WarehouseError(
                f"{spec.name}: row {bad['symbol']} {pd.Timestamp(bad['date']).date()} lies outside the slice being written"
            )
        if frame.assign(date=dates).duplicated(list(spec.key)).any():
            raise WarehouseError(f"{spec.name}: duplicate {spec.key} rows in the frame being written")
        new_table = self._to_arrow(spec, frame)
        # rows are sorted by symbol: each symbol's new rows are one contiguous slice of new_table
        symbol_col = new_table.column("symbol").to_numpy(zero_copy_only=False)
        bounds = {}
        if len(symbol_col):
            change = np.flatnonzero(symbol_col[1:] != symbol_col[:-1]) + 1
            starts = np.concatenate([[0], change])
            stops = np.concatenate([change, [len(symbol_col)]])
            bounds = {symbol_col[a]: (a, b) for a, b in zip(starts, stops)}
        lo_d, hi_d = pa.scalar(lo.date(), pa.date32()), pa.scalar(hi.date(), pa.date32())
        self.ensure_table(spec)
        locks = [self._lock(spec, s) for s in sorted(set(symbols))]
        for lock in locks:  # sorted order: two writers never deadlock
            lock.acquire()
        try:
            staged: list[tuple[Path, Path]] = []
            replaced = 0
            try:
                for symbol in sorted(set(symbols)):
                    target = self._symbol_file(spec, symbol)
                    a, b = bounds.get(symbol, (0, 0))
                    merged = new_table.slice(a, b - a)
                    if target.exists():
                        old = pq.read_table(target, schema=spec.schema)
                        in_slice = pc.and_(pc.greater_equal(old["date"], lo_d), pc.less_equal(old["date"], hi_d))
                        replaced += pc.sum(in_slice).as_py() or 0
                        kept = old.filter(pc.invert(in_slice))
                        if kept.num_rows:
                            merged = pa.concat_tables([kept, merged])
                            merged = merged.take(pc.sort_indices(merged, [("date", "ascending")]))
                    staged.append((self._stage(merged, target), target))
            except BaseException:
                for tmp, _ in staged:
                    tmp.unlink(missing_ok=True)
                raise
            for tmp, target in staged:
                os.replace(tmp, target)
        finally:
            for lock in reversed(locks):
                lock.release()
        return WriteResult(spec.name, tuple(sorted(set(symbols))), lo.date(), hi.date(), len(frame), replaced)

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

    def symbols(self, spec: TableSpec) -> list[str]:
        folder = self.table_dir(spec)
        if not folder.exists():
            return []
        return sorted(p.stem for p in folder.glob("*.parquet") if p.name != _SCHEMA_FILE)

    def read(
        self,
        spec: TableSpec,
        symbols: Iterable[str] | None = None,
        start: dt.date | str | None = None,
        end: dt.date | str | None = None,
    ) -> pd.DataFrame:
        """Rows of a table (optionally a symbol x date slice), sorted by key; ``date`` as datetime64."""
        wanted = self.symbols(spec) if symbols is None else [s for s in symbols if s in set(self.symbols(spec))]
        files = [str(self._symbol_file(spec, s)) for s in wanted]
        if not files:
            return spec.schema.empty_table().to_pandas().assign(date=lambda f: pd.to_datetime(f["date"]))
        conditions, params = [], []
        if start is not None:
            conditions.append("date >= ?")
            params.append(pd.Timestamp(start).date())
        if end is not None:
            conditions.append("date <= ?")
            params.append(pd.Timestamp(end).date())
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        order = ", ".join(spec.key)
        sql = f"SELECT * FROM read_parquet(?, union_by_name = true) {where} ORDER BY {order}"

        @_retry_after_swap
        def run() -> pd.DataFrame:
            def once() -> pd.DataFrame:
                with duckdb.connect(":memory:") as con:
                    return con.execute(sql, [files, *params]).df()

            return self._read_consistently(once)

        out = run()
        out["date"] = pd.to_datetime(out["date"])
        return out

    @_retry_after_swap
    @_retry_on_lock
    def query(self, sql: str, params: Sequence[object] | None = None) -> pd.DataFrame:
        """Run SQL on a read-only connection to ``warehouse.duckdb`` (it cannot change the warehouse)."""
        if not self.db_path.exists():
            self.ensure_all_tables()

        def once() -> pd.DataFrame:
            with duckdb.connect(str(self.db_path), read_only=True) as con:
                return con.execute(sql, params or []).df()

        return self._read_consistently(once)
