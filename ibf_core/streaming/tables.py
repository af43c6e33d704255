"""The live tables: ``intraday_bars`` (IB 5-second real-time bars) and ``quotes`` (top of book), one partition per
session date and symbol (``lake/<table>/<YYYY-MM-DD>.<SYMBOL>.parquet``), appended in micro-batches."""

from __future__ import annotations

import pyarrow as pa

from ibf_core.storage.tables import Column, TableSpec

_UTC = pa.timestamp("us", tz="UTC")

INTRADAY_BARS = TableSpec(
    name="intraday_bars",
    description="IB 5-second real-time bars per symbol (TRADES, and MIDPOINT/BID_ASK when enabled), as streamed by ibf stream.",
    key=("symbol", "date", "what", "time"),
    files="<YYYY-MM-DD>.<SYMBOL>.parquet",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE session (New York date of the bar)"),
        Column("time", _UTC, "Bar start, UTC (IB's bar time)"),
        Column("what", pa.string(), "TRADES, MIDPOINT or BID_ASK"),
        Column("open", pa.float64(), "First price of the 5 seconds"),
        Column("high", pa.float64(), "Highest price"),
        Column("low", pa.float64(), "Lowest price"),
        Column("close", pa.float64(), "Last price"),
        Column("volume", pa.float64(), "Shares traded (-1 for quote bars)"),
        Column("wap", pa.float64(), "Volume-weighted average price (-1 for quote bars)"),
        Column("count", pa.int64(), "Trades in the bar (-1 for quote bars)"),
        Column("received_at", _UTC, "When the collector received it, UTC"),
    ),
)

QUOTES = TableSpec(
    name="quotes",
    description="Top-of-book snapshots per symbol (bid/ask price and size, last, cumulative volume), as streamed by ibf stream.",
    key=("symbol", "date", "time"),
    files="<YYYY-MM-DD>.<SYMBOL>.parquet",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE session (New York date)"),
        Column("time", _UTC, "Time of the quote, UTC (IB's tick time when it sends one, else receipt)"),
        Column("bid", pa.float64(), "Best bid"),
        Column("ask", pa.float64(), "Best ask"),
        Column("bid_size", pa.float64(), "Shares at the bid"),
        Column("ask_size", pa.float64(), "Shares at the ask"),
        Column("last", pa.float64(), "Last trade price"),
        Column("last_size", pa.float64(), "Last trade size"),
        Column("volume", pa.float64(), "Session volume so far (IB reports lots of 100 for US stocks)"),
        Column("delayed", pa.bool_(), "True when the line serves delayed data (no live subscription)"),
        Column("received_at", _UTC, "When the collector received it, UTC"),
    ),
)

LIVE_TABLES = (INTRADAY_BARS, QUOTES)
