"""Which trading day an article counts for, and the daily per-symbol news features.

An article counts for session d when it was published before d's close minus a safety margin (default 5 minutes;
the close is the real one, early closes included, from exchange_calendars' XNYS schedule). Published at or after that
cutoff, or on a day without a session, it counts for the next session. So a feature for day d only uses news a
trader could have read before d's close.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import _calendar, to_date


DEFAULT_CLOSE_MARGIN_MINUTES = 5
DEFAULT_Z_WINDOW = 60
DEFAULT_Z_MIN_PERIODS = 20
BULLISH_MIN = 0.15  # AV: Somewhat-Bullish starts at 0.15, Bullish at 0.35
BEARISH_MAX = -0.15  # AV: Somewhat-Bearish ends at -0.15, Bearish at -0.35

DAILY_COLUMNS = [
    "symbol", "date", "news_count", "news_sentiment_mean", "news_sentiment_weighted",
    "news_bullish_share", "news_bearish_share", "news_volume_z",
]  # fmt: skip


def _margin(margin: Any) -> pd.Timedelta:
    value = pd.Timedelta(minutes=DEFAULT_CLOSE_MARGIN_MINUTES) if margin is None else pd.Timedelta(margin)
    if value < pd.Timedelta(0):
        raise ValueError("the close margin must be >= 0")
    return value


def session_cutoffs(margin: Any = None) -> tuple[pd.DatetimeIndex, Any]:
    """(sessions, cutoffs): every XNYS session (tz-naive) and its close minus ``margin`` as UTC int64 ns."""
    closes = _calendar().schedule["close"]
    sessions = pd.DatetimeIndex(closes.index).tz_localize(None)
    cutoffs = (pd.DatetimeIndex(closes) - _margin(margin)).tz_convert("UTC").as_unit("ns").asi8
    return sessions, cutoffs


def assign_trading_day(published_at: Any, margin: Any = None) -> pd.Series:
    """The session each UTC timestamp counts for (tz-naive midnight); NaT outside the calendar's window."""
    stamps = pd.Series(pd.to_datetime(published_at, utc=True))
    sessions, cutoffs = session_cutoffs(margin)
    values = pd.DatetimeIndex(stamps).tz_convert("UTC").as_unit("ns").asi8  # NaT -> int64 min, masked below
    # First session whose cutoff lies strictly after the publication time.
    index = np.searchsorted(cutoffs, values, side="right")
    valid = stamps.notna().to_numpy() & (index < len(sessions)) & (values >= _calendar_start().value)
    out = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
    out[valid] = sessions.to_numpy()[index[valid]]
    return pd.Series(out, index=stamps.index, name="date")


def _calendar_start() -> pd.Timestamp:
    """The first session's open (UTC): before it the previous close is unknown, so such times get NaT."""
    return _calendar().schedule["open"].iloc[0].tz_convert("UTC").as_unit("ns")


def session_window(start: Any, end: Any, margin: Any = None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """UTC [from, to) of the articles that count for the sessions in [start, end]; None without sessions."""
    sessions, cutoffs = session_cutoffs(margin)
    lo = np.searchsorted(sessions.to_numpy(), np.datetime64(to_date(start)), side="left")
    hi = np.searchsorted(sessions.to_numpy(), np.datetime64(to_date(end)), side="right") - 1
    if hi < lo:
        return None
    first = pd.Timestamp(cutoffs[lo - 1], tz="UTC") if lo > 0 else _calendar_start()
    return first, pd.Timestamp(cutoffs[hi], tz="UTC")


def aggregate_daily(
    mentions: pd.DataFrame,
    symbols: Sequence[str],
    sessions: Sequence[Any],
    *,
    window: int = DEFAULT_Z_WINDOW,
    min_periods: int = DEFAULT_Z_MIN_PERIODS,
    observed_from: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Per symbol and session: count, mean and relevance-weighted sentiment, bullish/bearish shares, volume z.

    ``mentions`` needs ``symbol, date, relevance, ticker_sentiment``. Every symbol x session is a row: a day without
    articles has ``news_count`` 0 and NaN sentiment/shares. ``news_volume_z`` compares the day's count with the mean
    and (sample) std of the ``window`` previous sessions (never the day itself); NaN with fewer than
    ``min_periods`` previous sessions or a zero std. The weighted mean is NaN when all relevances are 0.
    ``observed_from`` (symbol -> first date with stored news): earlier sessions were probably never fetched, so
    they do not enter the z-score baseline (their count stays 0, their z is NaN).
    """
    days = pd.DatetimeIndex(pd.to_datetime(list(sessions))).normalize().unique().sort_values()
    names = list(dict.fromkeys(symbols))
    grid = pd.MultiIndex.from_product([names, days], names=["symbol", "date"])
    if len(grid) == 0:
        return _empty_daily()
    m = mentions.loc[:, ["symbol", "date", "relevance", "ticker_sentiment"]].copy()
    m["date"] = pd.to_datetime(m["date"]).dt.normalize()
    m = m[m["symbol"].isin(names) & m["date"].isin(days)]
    score = m["ticker_sentiment"].astype(float)
    weight = m["relevance"].astype(float)
    m = m.assign(
        score=score,
        weight=weight.where(score.notna()),
        weighted=weight * score,
        bullish=(score >= BULLISH_MIN).astype(float),
        bearish=(score <= BEARISH_MAX).astype(float),
    )
    g = m.groupby(["symbol", "date"]).agg(
        news_count=("score", "size"),
        news_sentiment_mean=("score", "mean"),
        weighted=("weighted", "sum"),
        weight=("weight", "sum"),
        bullish=("bullish", "sum"),
        bearish=("bearish", "sum"),
    )
    g = g.reindex(grid)
    count = g["news_count"].fillna(0).astype(np.int64)
    has = count > 0
    out = pd.DataFrame(index=grid)
    out["news_count"] = count
    out["news_sentiment_mean"] = g["news_sentiment_mean"].where(has)
    out["news_sentiment_weighted"] = (g["weighted"] / g["weight"].where(g["weight"] > 0)).where(has)
    out["news_bullish_share"] = (g["bullish"] / count).where(has)
    out["news_bearish_share"] = (g["bearish"] / count).where(has)
    observed = _observed_mask(grid, observed_from)
    out["news_volume_z"] = _volume_z(count.where(observed), window, min_periods).where(observed)
    out = out.reset_index()
    out["symbol"] = out["symbol"].astype(object)
    return out[DAILY_COLUMNS]


def _empty_daily() -> pd.DataFrame:
    dtypes = {"symbol": object, "date": "datetime64[ns]", "news_count": "int64"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in DAILY_COLUMNS})


def _observed_mask(grid: pd.MultiIndex, observed_from: Mapping[str, Any] | None) -> pd.Series:
    mask = pd.Series(True, index=grid)
    if observed_from:
        firsts = grid.get_level_values("symbol").map(lambda s: observed_from.get(s))
        starts = pd.to_datetime(pd.Series(firsts, index=grid))
        mask = starts.isna() | (grid.get_level_values("date") >= starts)
    return mask


def _volume_z(count: pd.Series, window: int, min_periods: int) -> pd.Series:
    """Per symbol: (count - mean of the previous ``window`` counts) / their std; past days only."""
    past = count.astype(float).groupby(level="symbol", sort=False).shift(1)  # NaN counts are skipped by rolling
    grouped = past.groupby(level="symbol", sort=False)
    mean = grouped.transform(lambda s: s.rolling(window, min_periods=min_periods).mean())
    std = grouped.transform(lambda s: s.rolling(window, min_periods=min_periods).std())
    z = (count - mean) / std.where(std > 0)
    return z.replace([np.inf, -np.inf], np.nan)
