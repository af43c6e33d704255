"""The storage interface: what every warehouse backend offers, over the one table registry.

Two implementations: :class:`ibf_core.storage.warehouse.Warehouse` (``IBF_WAREHOUSE=lake``, the default: Parquet
files per partition under ``<state>/lake`` and DuckDB views) and :class:`ibf_core.storage.ducklake.DuckLakeWarehouse`
(``IBF_WAREHOUSE=ducklake``: DuckLake tables in a SQLite, DuckDB or Postgres catalog, data files on a path or an
S3-compatible prefix, so several machines can write). :func:`ibf_core.storage.backends.open_warehouse` picks one.

A table is stored as *partitions*: a symbol for per-symbol tables, a month for ``news_articles``, a batch for
``alerts``. The unit of atomic change is :meth:`TableStore.write`: under the partitions' locks, one
:class:`Transaction` reads partitions, replaces or deletes them and replaces symbol x date slices; all of it lands
or none of it (the lake stages every file before the first swap; DuckLake commits one transaction and, on a commit
conflict with another writer, rolls back and runs ``build`` again from fresh reads).
"""

from __future__ import annotations

import datetime as dt
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ibf_core.storage.registry import registered_catalog
from ibf_core.storage.tables import Catalog, TableSpec

T = TypeVar("T")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# The lock name a writer holds to change any partition of a table (news_articles, alerts: a write may touch any).
WHOLE_TABLE = "_table"


class WarehouseError(RuntimeError):
    """The warehouse could not be read or written."""


class QueryRefused(WarehouseError):
    """A query tried to write, or to reach outside the lake; nothing ran."""


class WarehouseLocked(WarehouseError):
    """Another process holds ``warehouse.duckdb`` while ibf must (re)define a view; the message names it."""


class DamagedFile(WarehouseError):
    """A Parquet file of the lake cannot be read (e.g. truncated); the message names it and how to repair it."""


class DiskFullError(WarehouseError):
    """A write hit a full disk (ENOSPC); nothing of it landed, and the message names the path and the free space."""


@dataclass(frozen=True)
class WriteResult:
    table: str
    symbols: tuple[str, ...]
    start: dt.date
    end: dt.date
    rows_written: int
    rows_replaced: int
    quarantined: tuple[str, ...] = ()  # damaged files that were moved to lake/_quarantine/ (the slice replaced them)


def check_partition_name(spec: TableSpec, name: str) -> str:
    """A partition name is a file-name-safe token (a symbol, ``2024-05``, ``20240501-<digest>``)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name == WHOLE_TABLE:
        what = "symbol" if spec.per_symbol else "partition"
        raise WarehouseError(f"{spec.name}: {what} {name!r} cannot be stored")
    return name


def date_bounds(start: dt.date | str, end: dt.date | str) -> tuple[pd.Timestamp, pd.Timestamp]:
    return pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()


def refuse_writes(sql: str) -> None:
    """Only SELECT statements run on a read connection (COPY, EXPORT, ATTACH, INSTALL, LOAD, SET ... never)."""
    statements = duckdb.extract_statements(sql)
    if not statements:
        raise QueryRefused("empty query")
    for statement in statements:
        if statement.type != duckdb.StatementType.SELECT:
            raise QueryRefused(f"{statement.type.name} statements are refused: queries here are read-only (SELECT only)")


def views_needed(catalog: Catalog, sql: str) -> set[str]:
    """The catalog's tables and views ``sql`` may read (names it mentions, and what those views read)."""
    known = {t.name for t in catalog.tables} | {v.name for v in catalog.views}
    views = {v.name: v for v in catalog.views}
    needed = known & set(_IDENTIFIER.findall(sql.lower()))
    pending = [n for n in needed if n in views]
    while pending:
        more = (known & set(_IDENTIFIER.findall(views[pending.pop()].sql.lower()))) - needed
        needed |= more
        pending += [n for n in more if n in views]
    return needed


def to_arrow(spec: TableSpec, frame: pd.DataFrame) -> pa.Table:
    """The whole frame as one Arrow table of the declared schema, sorted by key."""
    missing = [c.name for c in spec.columns if c.name not in frame.columns and not c.optional]
    if missing:
        raise WarehouseError(f"{spec.name}: frame lacks column(s) {', '.join(missing)}")
    absent = {c.name: None for c in spec.columns if c.name not in frame.columns}
    data = frame.assign(**absent)[spec.column_names].sort_values(list(spec.key), kind="stable")
    data = data.assign(date=pd.to_datetime(data["date"]).to_numpy().astype("datetime64[D]"))
    return pa.Table.from_pandas(data, schema=spec.schema, preserve_index=False)


def check_slice(spec: TableSpec, frame: pd.DataFrame, symbols: Sequence[str], lo: pd.Timestamp, hi: pd.Timestamp) -> None:
    """Every row lies in ``symbols`` x [lo, hi] and no key repeats."""
    for symbol in symbols:
        check_partition_name(spec, symbol)
    dates = pd.to_datetime(frame["date"])
    outside = ~frame["symbol"].isin(list(symbols)) | ~dates.between(lo, hi)
    if outside.any():
        bad = frame.loc[outside].iloc[0]
        when = pd.Timestamp(bad["date"]).date()
        raise WarehouseError(f"{spec.name}: row {bad['symbol']} {when} lies outside the slice being written")
    if frame.assign(date=dates).duplicated(list(spec.key)).any():
        raise WarehouseError(f"{spec.name}: duplicate {spec.key} rows in the frame being written")


def symbol_rows(table: pa.Table) -> dict[str, tuple[int, int]]:
    """(start, stop) of each symbol's rows in ``table``, which is sorted by symbol (so they are contiguous)."""
    symbol_col = table.column("symbol").to_numpy(zero_copy_only=False)
    if not len(symbol_col):
        return {}
    change = np.flatnonzero(symbol_col[1:] != symbol_col[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(symbol_col)]])
    return {symbol_col[a]: (a, b) for a, b in zip(starts, stops)}


def with_datetime_dates(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``date`` column as ``datetime64[ns]``, whichever backend read it: the lake's DuckDB
    answers microseconds, DuckLake's Arrow dates nanoseconds, and a digest of the rows (``predictions``' inputs
    digest) must not depend on the backend."""
    if "date" in frame.columns:
        frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")
    return frame


def empty_frame(spec: TableSpec) -> pd.DataFrame:
    """No rows, the table's columns (``date`` as datetime64[ns])."""
    return with_datetime_dates(spec.schema.empty_table().to_pandas())


class Transaction(ABC):
    """What a :meth:`TableStore.write` may do; nothing is visible to readers before the write returns."""

    @abstractmethod
    def read(self, spec: TableSpec, name: str, columns: Sequence[str] | None = None) -> pa.Table | None:
        """The partition's rows as stored before this transaction (None: no such partition)."""

    def read_many(self, spec: TableSpec, names: Sequence[str]) -> dict[str, pa.Table]:
        """The stored partitions among ``names`` (absent ones left out), as :meth:`read` gives each."""
        found = {name: self.read(spec, name) for name in names}
        return {name: table for name, table in found.items() if table is not None}

    @abstractmethod
    def put(self, spec: TableSpec, name: str, table: pa.Table) -> None:
        """Make ``table`` (of the declared schema) the partition's rows."""

    @abstractmethod
    def delete(self, spec: TableSpec, name: str) -> None:
        """Remove the partition (if present)."""

    @abstractmethod
    def replace_slice(
        self, spec: TableSpec, frame: pd.DataFrame, symbols: Sequence[str], start: dt.date | str, end: dt.date | str
    ) -> WriteResult:
        """Make the rows of ``symbols`` x ``[start, end]`` exactly ``frame``'s rows (per-symbol tables)."""


class TableStore(ABC):
    """A warehouse of the registered catalog's tables: atomic partition writes, slice replaces, read-only SQL."""

    home: Path
    backend: str
    state_dir: Path  # where a user of the store keeps local files beside it (e.g. news fetch progress)

    # ----- tables ---------------------------------------------------------------------------------
    @abstractmethod
    def ensure_catalog(self, catalog: Catalog) -> None:
        """Every table and view of ``catalog`` exists (an unmaterialized table reads as no rows)."""

    def ensure_table(self, spec: TableSpec) -> None:
        self.ensure_catalog(Catalog((spec,)))

    def ensure_all_tables(self) -> None:
        """Every table and view ibf writes (the registered catalog)."""
        self.ensure_catalog(registered_catalog())

    @abstractmethod
    def exists(self) -> bool:
        """Whether the warehouse was created (a reader says "not yet" rather than creating it)."""

    @abstractmethod
    def partitions(self, spec: TableSpec) -> list[str]:
        """Names of the table's stored partitions, sorted."""

    def symbols(self, spec: TableSpec) -> list[str]:
        if not spec.per_symbol:
            raise WarehouseError(f"{spec.name}: files are {spec.files}, not one per symbol")
        return self.partitions(spec)

    @abstractmethod
    def read_partitions(
        self, spec: TableSpec, names: Iterable[str] | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The rows of the named partitions (all when None), concatenated; partitions not stored are skipped."""

    @abstractmethod
    def table_stamp(self, spec: TableSpec) -> Hashable | None:
        """A value that changes whenever a write of the table commits (None: the table does not exist yet)."""

    # ----- writes ---------------------------------------------------------------------------------
    @abstractmethod
    def write(self, partitions: Iterable[tuple[TableSpec, str]], build: Callable[[Transaction], T]) -> T:
        """Hold the partitions' locks (sorted: two writers never deadlock), run ``build`` in one transaction and
        commit it; ``build``'s value is returned. ``build`` may run again after a commit conflict, so it must only
        read through the transaction and compute (side effects belong outside, or must be idempotent)."""

    def replace_slice(
        self,
        spec: TableSpec,
        frame: pd.DataFrame,
        symbols: Sequence[str],
        start: dt.date | str,
        end: dt.date | str,
    ) -> WriteResult:
        """Make the rows of ``symbols`` x ``[start, end]`` exactly ``frame``'s rows; other rows are kept.
        Idempotent, and all-or-nothing over the symbols."""
        names = sorted(set(symbols))
        return self.write([(spec, s) for s in names], lambda tx: tx.replace_slice(spec, frame, names, start, end))

    # ----- reads ----------------------------------------------------------------------------------
    @abstractmethod
    def read(
        self,
        spec: TableSpec,
        symbols: Iterable[str] | None = None,
        start: dt.date | str | None = None,
        end: dt.date | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Rows of a table (optionally a symbol x date slice, only ``columns``), sorted by key; ``date`` as datetime64."""

    @abstractmethod
    def query(
        self,
        sql: str,
        params: Sequence[object] | None = None,
        on_damaged: Callable[[Path, str], None] | None = None,
    ) -> pd.DataFrame:
        """Read-only SQL (SELECT only) over the catalog's tables and views, under their names."""

    def describe(self) -> str:
        """Where the data lives, for logs and ``ibf`` output (never a secret)."""
        return f"{self.backend} warehouse under {self.home}"
