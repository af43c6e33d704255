"""The DuckDB warehouse: Parquet files per (table, symbol) written atomically, exposed as DuckDB views.

Why not tables inside the DuckDB file: DuckDB admits one writing process *or* many readers. If runs wrote into
``warehouse.duckdb`` an analyst's open session would block them and their writes would break ``ibf sql``.
Here writers only ever replace Parquet files (``ibf_core.storage.atomic``: stage a temp file, fsync, swap it in
with ``os.replace``; a crash leaves the old file, never a hole); ``warehouse.duckdb`` holds nothing but views
over those files, so any number of readers open it read-only while runs write. Per-symbol file locks make two
concurrent writers safe as well.

Views carry their version (a hash of their SQL) as a DuckDB comment ``ibf:<version>``; ensuring compares on a
read-only connection and writes only the views whose version differs, so a changed definition reaches existing
warehouses and an unchanged one never waits for an analyst's session. Which tables and views exist is the
registered catalog's business (``ibf_core.catalog``); storage imports none of the modules declaring them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from ibf_core.storage import atomic
from ibf_core.storage.registry import registered_catalog
from ibf_core.storage.tables import SCHEMA_FILE, Catalog, TableSpec, ViewSpec, data_files

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")
_VERSION_TAG = "ibf:"


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


def _symbol_rows(table: pa.Table) -> dict[str, tuple[int, int]]:
    """(start, stop) of each symbol's rows in ``table``, which is sorted by symbol (so they are contiguous)."""
    symbol_col = table.column("symbol").to_numpy(zero_copy_only=False)
    if not len(symbol_col):
        return {}
    change = np.flatnonzero(symbol_col[1:] != symbol_col[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(symbol_col)]])
    return {symbol_col[a]: (a, b) for a, b in zip(starts, stops)}


def _view_statements(view: ViewSpec) -> list[str]:
    """Define the view, then stamp its version (``CREATE OR REPLACE`` drops the comment, so always both)."""
    return [
        f"CREATE OR REPLACE VIEW {view.name} AS {view.sql}",
        f"COMMENT ON VIEW {view.name} IS '{_VERSION_TAG}{view.version}'",
    ]


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
        if not spec.per_symbol:
            raise WarehouseError(f"{spec.name}: files are {spec.files}, not one per symbol")
        if not _SAFE_NAME.match(symbol):
            raise WarehouseError(f"{spec.name}: symbol {symbol!r} cannot be stored")
        return self.table_dir(spec) / f"{symbol}.parquet"

    def lock(self, folder: Path, name: str) -> FileLock:
        """An inter-process lock for read-modify-write of files under ``folder`` (see ``atomic.lock``)."""
        return atomic.lock(folder, name)

    @contextlib.contextmanager
    def _locks(self, folder: Path, names: Sequence[str]) -> Iterator[None]:
        """Hold the locks of ``names`` in sorted order, so two writers never deadlock."""
        with contextlib.ExitStack() as stack:
            for name in sorted(names):
                stack.enter_context(self.lock(folder, name))
            yield

    # ----- tables and views ---------------------------------------------------------------------
    def table_view(self, spec: TableSpec) -> ViewSpec:
        """The view over every Parquet file of the table's folder (its version changes when the folder does)."""
        pattern = str(self.table_dir(spec) / "*.parquet").replace("'", "''")
        return ViewSpec(spec.name, f"SELECT * FROM read_parquet('{pattern}', union_by_name = true)")

    def _ensure_folder(self, spec: TableSpec) -> None:
        """The table folder with its empty schema file, so the view reads no rows rather than failing."""
        schema_file = self.table_dir(spec) / SCHEMA_FILE
        if not schema_file.exists():
            atomic.write_parquet(schema_file, spec.schema.empty_table())

    def ensure_table(self, spec: TableSpec) -> None:
        """Create the table folder, its empty schema file and its view (only when missing or changed)."""
        self._ensure_folder(spec)
        self.ensure_views([self.table_view(spec)])

    def ensure_catalog(self, catalog: Catalog) -> None:
        """Folders, schema files and views of every table of ``catalog``, then its views."""
        for spec in catalog.tables:
            self._ensure_folder(spec)
        self.ensure_views([*(self.table_view(s) for s in catalog.tables), *catalog.views])

    def ensure_all_tables(self) -> None:
        """Views for every table ibf writes (the registered catalog), so SQL on a table not yet materialized
        returns no rows, not an error."""
        self.ensure_catalog(registered_catalog())

    def ensure_views(self, views: Sequence[ViewSpec]) -> None:
        """(Re)define the views whose stored version differs. The comparison reads on a read-only connection,
        so when nothing changed nothing is written and an analyst's read-only session never blocks it."""
        stored = self.view_versions()
        stale = [v for v in views if stored.get(v.name) != v.version]
        if stale:
            self._execute_write([sql for v in stale for sql in _view_statements(v)])

    @_retry_on_lock
    def view_versions(self) -> dict[str, str | None]:
        """Version of each view defined in ``warehouse.duckdb`` (None for a view without an ibf version)."""
        if not self.db_path.exists():
            return {}
        with duckdb.connect(str(self.db_path), read_only=True) as con:
            rows = con.execute("SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall()
        return {name: c[len(_VERSION_TAG):] if c and c.startswith(_VERSION_TAG) else None for name, c in rows}

    @_retry_on_lock
    def _execute_write(self, statements: Sequence[str]) -> None:
        """The only write to ``warehouse.duckdb``: (re)defining views in one transaction, held for milliseconds."""
        self.home.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(self.db_path)) as con:
            con.begin()
            for sql in statements:
                con.execute(sql)
            con.commit()

    # ----- writes -------------------------------------------------------------------------------
    def _to_arrow(self, spec: TableSpec, frame: pd.DataFrame) -> pa.Table:
        """The whole frame as one Arrow table of the declared schema, sorted by key."""
        missing = [c.name for c in spec.columns if c.name not in frame.columns and not c.optional]
        if missing:
            raise WarehouseError(f"{spec.name}: frame lacks column(s) {', '.join(missing)}")
        absent = {c.name: None for c in spec.columns if c.name not in frame.columns}
        data = frame.assign(**absent)[spec.column_names].sort_values(list(spec.key), kind="stable")
        data = data.assign(date=pd.to_datetime(data["date"]).to_numpy().astype("datetime64[D]"))
        return pa.Table.from_pandas(data, schema=spec.schema, preserve_index=False)

    def _check_slice(
        self, spec: TableSpec, frame: pd.DataFrame, symbols: Sequence[str], lo: pd.Timestamp, hi: pd.Timestamp
    ) -> None:
        """Every row lies in ``symbols`` x [lo, hi] and no key repeats."""
        dates = pd.to_datetime(frame["date"])
        outside = ~frame["symbol"].isin(list(symbols)) | ~dates.between(lo, hi)
        if outside.any():
            bad = frame.loc[outside].iloc[0]
            when = pd.Timestamp(bad["date"]).date()
            raise WarehouseError(f"{spec.name}: row {bad['symbol']} {when} lies outside the slice being written")
        if frame.assign(date=dates).duplicated(list(spec.key)).any():
            raise WarehouseError(f"{spec.name}: duplicate {spec.key} rows in the frame being written")

    @staticmethod
    def _merge(
        spec: TableSpec, target: Path, new: pa.Table, lo: pd.Timestamp, hi: pd.Timestamp
    ) -> tuple[pa.Table, int]:
        """``target``'s rows outside [lo, hi] plus ``new``, by date; and how many stored rows were in [lo, hi]."""
        import pyarrow.compute as pc

        if not target.exists():
            return new, 0
        old = pq.read_table(target, schema=spec.schema)
        lo_d, hi_d = pa.scalar(lo.date(), pa.date32()), pa.scalar(hi.date(), pa.date32())
        in_slice = pc.and_(pc.greater_equal(old["date"], lo_d), pc.less_equal(old["date"], hi_d))
        replaced = pc.sum(in_slice).as_py() or 0
        kept = old.filter(pc.invert(in_slice))
        if not kept.num_rows:
            return new, replaced
        merged = pa.concat_tables([kept, new])
        return merged.take(pc.sort_indices(merged, [("date", "ascending")])), replaced

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
        new files are staged (one ``AtomicBatch``) before the first is swapped in, so a failure while preparing
        changes nothing. Leftover temp files of the symbols' dead writers are removed under their locks.
        """
        lo, hi = _date_bounds(start, end)
        self._check_slice(spec, frame, symbols, lo, hi)
        new_table = self._to_arrow(spec, frame)
        rows = _symbol_rows(new_table)
        names = sorted(set(symbols))
        targets = {s: self._symbol_file(spec, s) for s in names}
        self.ensure_table(spec)
        folder = self.table_dir(spec)
        replaced = 0
        with self._locks(folder, names):
            atomic.remove_stale_temps(folder, held=[t.name for t in targets.values()])
            with atomic.AtomicBatch() as batch:
                for symbol, target in targets.items():
                    a, b = rows.get(symbol, (0, 0))
                    merged, n = self._merge(spec, target, new_table.slice(a, b - a), lo, hi)
                    replaced += n
                    batch.stage_parquet(target, merged)
        return WriteResult(spec.name, tuple(names), lo.date(), hi.date(), len(frame), replaced)

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
        return [p.stem for p in data_files(self.table_dir(spec))]

    def read(
        self,
        spec: TableSpec,
        symbols: Iterable[str] | None = None,
        start: dt.date | str | None = None,
        end: dt.date | str | None = None,
    ) -> pd.DataFrame:
        """Rows of a table (optionally a symbol x date slice), sorted by key; ``date`` as datetime64."""
        stored = self.symbols(spec)  # listed once: listing per wanted symbol made a 500-symbol read quadratic (27 s)
        known = set(stored)
        wanted = stored if symbols is None else [s for s in symbols if s in known]
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
