"""The live tables: ``intraday_bars`` (IB 5-second real-time bars), ``quotes`` (top of book), ``trades``
(tick-by-tick trades) and ``depth`` (order-book updates), one partition per session date and symbol
(``lake/<table>/<YYYY-MM-DD>.<SYMBOL>.parquet``), appended in micro-batches.

Trade keys: IB's tick-by-tick trades carry no trade id, only a time in whole seconds, price, size, exchange and
conditions, and a new subscription asked for ``numberOfTicks`` re-sends the most recent trades. So a trade is keyed
by (symbol, date, time, price, size, seq) with ``seq`` its occurrence among the trades of the same second, price and
size as one subscription delivered them (0 for the first): a trade re-sent after a reconnect gets the key it had,
two identical trades in one second stay two rows. Depth messages carry no time at all; each update is a new event
(a re-subscription re-inserts the whole book), keyed by its receipt and its ordinal."""

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

TRADES = TableSpec(
    name="trades",
    description="Tick-by-tick trades (IB AllLast) of the symbols in IBF_STREAM_TICK_SYMBOLS, as streamed by ibf stream.",
    key=("symbol", "date", "time", "price", "size", "seq"),
    files="<YYYY-MM-DD>.<SYMBOL>.parquet",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE session (New York date of the trade)"),
        Column("time", _UTC, "Trade time, UTC, in whole seconds (IB's tick-by-tick time)"),
        Column("seq", pa.int64(), "Occurrence among trades of the same second, price and size (0 = the first)"),
        Column("price", pa.float64(), "Trade price"),
        Column("size", pa.float64(), "Shares"),
        Column("exchange", pa.string(), "Exchange that reported the trade"),
        Column("special_conditions", pa.string(), "IB's condition codes of the trade (empty: regular)"),
        Column("received_at", _UTC, "When the collector received it, UTC"),
    ),
)

DEPTH = TableSpec(
    name="depth",
    description="Order-book updates (IB market depth, IBF_STREAM_DEPTH_ROWS levels a side) of the symbols in "
    "IBF_STREAM_TICK_SYMBOLS, as streamed by ibf stream: replaying them in seq order per subscription rebuilds the book.",
    key=("symbol", "date", "received_at", "seq"),
    files="<YYYY-MM-DD>.<SYMBOL>.parquet",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE session (New York date of time)"),
        Column("time", _UTC, "Market time of the update, UTC: the symbol's newest trade or quote time when it arrived "
               "(IB stamps no depth message); receipt time before any"),
        Column("seq", pa.int64(), "Ordinal of the update among the symbol's updates in this collector run"),
        Column("position", pa.int64(), "Book level, 0 = best"),
        Column("side", pa.string(), "bid or ask"),
        Column("price", pa.float64(), "Level price"),
        Column("size", pa.float64(), "Shares at the level (0 for a delete)"),
        Column("operation", pa.string(), "insert, update or delete (of the level at position)"),
        Column("received_at", _UTC, "When the collector received it, UTC"),
    ),
)

LIVE_TABLES = (INTRADAY_BARS, QUOTES, TRADES, DEPTH)
TICK_TABLES = (TRADES, DEPTH, QUOTES)  # what IBF_STREAM_RETENTION_DAYS deletes
