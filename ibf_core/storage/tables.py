"""Declared schemas of the warehouse tables (used for storage, Dagster column metadata and docs)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    optional: bool = False  # a writer may omit it; stored as NULL

    @property
    def sql_type(self) -> str:
        return {
            pa.string(): "VARCHAR",
            pa.date32(): "DATE",
            pa.float64(): "DOUBLE",
            pa.int64(): "BIGINT",
        }[self.type]


@dataclass(frozen=True)
class TableSpec:
    """A symbol x date table: one Parquet file per symbol under ``lake/<name>/``, a DuckDB view ``<name>``."""

    name: str
    columns: tuple[Column, ...]
    description: str
    key: tuple[str, ...] = ("symbol", "date")

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.type) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


MARKET_BARS = TableSpec(
    name="market_bars",
    description="Daily OHLCV bars per symbol and NYSE trading day, split-adjusted.",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE trading day"),
        Column("open", pa.float64(), "Opening price, split-adjusted"),
        Column("high", pa.float64(), "High price, split-adjusted"),
        Column("low", pa.float64(), "Low price, split-adjusted"),
        Column("close", pa.float64(), "Closing price, split-adjusted"),
        Column("adj_close", pa.float64(), "Closing price adjusted for splits and dividends (total return)"),
        Column("volume", pa.float64(), "Shares traded, split-adjusted"),
        Column(
            "spread",
            pa.float64(),
            "Relative quoted spread (ask - bid) / mid from IB BID_ASK bars; NULL when unknown",
            optional=True,
        ),
        Column("source", pa.string(), "Source that delivered the bar: sample, csv or ibkr"),
    ),
)

TABLES = {t.name: t for t in (MARKET_BARS,)}
