"""Forecasts expressed against the live price: during market hours the newest streamed price (``quotes`` last
trade, else the quote mid, else the newest 5-second TRADES bar close) replaces the origin close as the basis of
``pred_price`` and the price interval (``basis x exp(r)``); every row says which price it used and how old it is.

A stored forecast is an h-session log return from its origin's close; on the live basis it reads "from here".
Outside market hours, or when the newest streamed price is older than ``max_age_s``, the origin close stays the
basis and the row says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ibf_core.calendar import market_is_open
from ibf_core.storage.interface import TableStore
from ibf_core.streaming.store import partition_name
from ibf_core.streaming.tables import INTRADAY_BARS, QUOTES

BASIS_COLUMNS = ("price_basis", "basis_price", "basis_source", "basis_time", "basis_age_seconds", "basis_note")
_PRICE_COLUMNS = {"pred_price": "pred_return", "price_lower_80": "lower_80", "price_upper_80": "upper_80",
                  "price_lower_95": "lower_95", "price_upper_95": "upper_95"}


def newest_live_prices(store: TableStore, symbols: Sequence[str], now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per symbol the newest streamed price of the New York session ``now`` is in: ``symbol, price, source, time,
    delayed`` (symbols with nothing streamed today are absent)."""
    now = _utc(now)
    day = now.tz_convert("America/New_York").tz_localize(None).normalize()
    names = [partition_name(day, s) for s in symbols]
    rows = []
    if store.exists():
        stored = set(store.partitions(QUOTES))
        book = store.read_partitions(QUOTES, [n for n in names if n in stored],
                                     ["symbol", "time", "bid", "ask", "last", "delayed"]).to_pandas()
        if len(book):
            book = book.sort_values("time").groupby("symbol").tail(1)
            mid = (book["bid"] + book["ask"]) / 2
            price = book["last"].where(book["last"] > 0, mid.where((book["bid"] > 0) & (book["ask"] >= book["bid"])))
            source = np.where(book["last"] > 0, "last trade (quotes)", "quote mid (quotes)")
            rows.append(pd.DataFrame({"symbol": book["symbol"], "price": price, "source": source, "time": book["time"],
                                      "delayed": book["delayed"].fillna(False)}))
        stored = set(store.partitions(INTRADAY_BARS))
        bars = store.read_partitions(INTRADAY_BARS, [n for n in names if n in stored], ["symbol", "time", "what", "close"]).to_pandas()
        bars = bars[bars["what"] == "TRADES"]
        if len(bars):
            bars = bars.sort_values("time").groupby("symbol").tail(1)
            rows.append(pd.DataFrame({"symbol": bars["symbol"], "price": bars["close"], "source": "5-second bar close",
                                      "time": bars["time"] + pd.Timedelta(seconds=5), "delayed": False}))
    if not rows:
        return pd.DataFrame(columns=["symbol", "price", "source", "time", "delayed"])
    both = pd.concat(rows, ignore_index=True).dropna(subset=["price"])
    both["time"] = pd.to_datetime(both["time"], utc=True)
    return both.sort_values("time").groupby("symbol").tail(1).reset_index(drop=True)


def against_live_prices(forecasts: pd.DataFrame, prices: pd.DataFrame, now: pd.Timestamp | None = None,
                        max_age_s: float = 300.0) -> pd.DataFrame:
    """``forecasts`` (served forecast rows: ``symbol``, ``close``, ``pred_return`` and the bounds) with the prices
    recomputed on the live basis where one is usable, plus :data:`BASIS_COLUMNS`."""
    now = _utc(now)
    out = forecasts.copy()
    live = prices.set_index("symbol") if len(prices) else pd.DataFrame(columns=["price", "source", "time", "delayed"])
    price = out["symbol"].map(live["price"]).astype(float)
    when = out["symbol"].map(live["time"])
    age = (now - pd.to_datetime(when, utc=True)).dt.total_seconds()
    delayed = out["symbol"].map(live["delayed"]).eq(True)
    is_open = market_is_open(now)
    usable = price.notna() & (age <= max_age_s) & is_open
    note = np.select(
        [usable & delayed, usable, ~pd.Series(is_open, index=out.index), price.isna()],
        ["live (delayed data: the account has no real-time subscription)", "live", "market closed: origin close",
         "nothing streamed this session: origin close"],
        default=f"newest streamed price older than {max_age_s:g} s: origin close",
    )
    basis = price.where(usable, out["close"])
    for column, log_return in _PRICE_COLUMNS.items():
        out[column] = basis * np.exp(out[log_return])
    out["price_basis"] = np.where(usable, "live", "close")
    out["basis_price"] = basis
    out["basis_source"] = np.where(usable, out["symbol"].map(live["source"]), "origin close")
    out["basis_time"] = [t.isoformat() if ok else None for t, ok in zip(pd.to_datetime(when, utc=True), usable)]
    out["basis_age_seconds"] = age.where(usable).round(1)
    out["basis_note"] = note
    return out


def _utc(now: pd.Timestamp | None) -> pd.Timestamp:
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
