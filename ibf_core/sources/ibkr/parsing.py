"""IB's bar objects to ibf frames: TRADES, ADJUSTED_LAST and BID_ASK bars merged with the cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("ibf_core.sources.ibkr")  # the name it logged under before the split

EASTERN = "US/Eastern"
BAR_SIZE = "1 day"
BID_ASK = "BID_ASK"
SPREAD = "spread"


# ---- frame helpers ---------------------------------------------------------------------------------------
def bars_frame(bars: Sequence[Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.to_datetime([b.date for b in bars]).normalize(),
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
        }
    )


def spread_series(symbol: str, bars: Sequence[Any]) -> pd.Series:
    """Relative quoted spread per day from IB BID_ASK bars (open = average bid, close = average ask).

    A day without a usable quote (non-positive or non-finite prices, or an average ask below the average bid)
    gets NaN, never 0.
    """
    frame = bars_frame(bars)
    bid, ask = frame["open"].to_numpy(dtype="float64"), frame["close"].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = (ask - bid) / ((ask + bid) / 2)
    usable = np.isfinite(spread) & (bid > 0) & (ask > 0) & (spread >= 0)
    if not usable.all():
        log.warning("%s: %d BID_ASK bar(s) without a usable quote; their spread is NaN", symbol, int((~usable).sum()))
    return pd.Series(np.where(usable, spread, np.nan), index=pd.DatetimeIndex(frame["date"]), name=SPREAD)


def concat_bars(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in ["open", "high", "low", "close", "volume"]}).assign(
            date=pd.Series(dtype="datetime64[ns]")
        )
    # Overlapping chunks repeat days; the newest request's copy wins.
    out = pd.concat(frames, ignore_index=True).drop_duplicates("date", keep="first")
    return out.sort_values("date").reset_index(drop=True)


def merge_bars(symbol: str, cached: pd.DataFrame, trades: pd.DataFrame, adjusted: pd.Series | None) -> pd.DataFrame:
    """Cached bars + new TRADES bars with adj_close from ADJUSTED_LAST.

    New bars take adj_close from ``adjusted`` (gaps interpolate the adj/close ratio). Cached days inside
    the ADJUSTED_LAST answer take its fresh value; older cached days are re-based by the ratio at the oldest
    overlapping day, so a dividend paid since the last download re-adjusts the whole history consistently.
    """
    new = trades.copy()
    new["symbol"] = symbol
    old = cached.copy()
    if SPREAD in old.columns:  # a re-downloaded day keeps the spread already known for it
        new[SPREAD] = new["date"].map(old.set_index("date")[SPREAD]).astype("float64")
    if adjusted is not None:
        ratio = new["date"].map(adjusted) / new["close"]
        new["adj_close"] = new["close"] * ratio.ffill().bfill().fillna(1.0)
        overlap = old["date"].isin(adjusted.index)
        if overlap.any():
            oldest = old.loc[overlap, "date"].min()
            factor = adjusted[oldest] / old.loc[old["date"] == oldest, "adj_close"].iloc[0]
            old.loc[old["date"] < oldest, "adj_close"] *= factor
            old.loc[overlap, "adj_close"] = old.loc[overlap, "date"].map(adjusted)
    else:
        new["adj_close"] = new["close"]
    old = old[~old["date"].isin(new["date"])]
    columns = ["symbol", "date", "open", "high", "low", "close", "adj_close", "volume"]
    columns += [SPREAD] if SPREAD in old.columns else []
    return pd.concat([old, new], ignore_index=True)[columns]
