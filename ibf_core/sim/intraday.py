"""A deterministic intraday session consistent with a stored daily bar: what the gateway simulator streams.

For one symbol and session the path starts at the day's open, ends at its close and touches exactly its high and
low (a Brownian bridge from open to close whose positive and negative excursions are scaled to reach them); the
day's volume is spread over the session by a U-shaped profile; the quoted spread follows a simple model (a base
in basis points, wider at the open and close and on volatile days). Same inputs, same session: the seed is the
symbol and the date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

BAR_SECONDS = 5
SESSION_SECONDS = 6 * 3600 + 1800  # 09:30-16:00 New York
SUBSTEPS = 5  # path points inside one 5-second bar (its high and low come from them)
NEW_YORK = "America/New_York"


@dataclass(frozen=True)
class DailyBar:
    symbol: str
    date: dt.date
    open: float
    high: float
    low: float
    close: float
    volume: float


def _rng(symbol: str, date: dt.date) -> np.random.Generator:
    digest = hashlib.sha256(f"{symbol}|{date.isoformat()}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def session_open(date: dt.date) -> pd.Timestamp:
    """09:30 New York on ``date``, in UTC."""
    return pd.Timestamp(dt.datetime.combine(date, dt.time(9, 30))).tz_localize(NEW_YORK).tz_convert("UTC")


def price_path(day: DailyBar, points: int) -> np.ndarray:
    """``points`` prices from the open to the close whose maximum is the high and minimum the low."""
    rng = _rng(day.symbol, day.date)
    t = np.linspace(0.0, 1.0, points)
    walk = np.concatenate([[0.0], np.cumsum(rng.standard_normal(points - 1))])
    bridge = walk - t * walk[-1]  # 0 at both ends
    line = day.open + (day.close - day.open) * t
    up, down = np.clip(bridge, 0, None), np.clip(bridge, None, 0)
    i_max, i_min = int(np.argmax(bridge)), int(np.argmin(bridge))
    room_up, room_down = day.high - max(day.open, day.close), min(day.open, day.close) - day.low
    scale_up = (day.high - line[i_max]) / bridge[i_max] if bridge[i_max] > 0 and room_up > 0 else 0.0
    scale_down = (line[i_min] - day.low) / -bridge[i_min] if bridge[i_min] < 0 and room_down > 0 else 0.0
    path = np.clip(line + up * scale_up + down * scale_down, day.low, day.high)
    path[0], path[-1] = day.open, day.close
    # The extremes are reached exactly once the daily range allows it (not at an end already holding them).
    if room_up > 0:
        path[i_max if 0 < i_max < points - 1 else points // 3] = day.high
    if room_down > 0:
        path[i_min if 0 < i_min < points - 1 and i_min != i_max else 2 * points // 3] = day.low
    return path


def volume_profile(bars: int) -> np.ndarray:
    """Share of the day's volume per bar: U-shaped (heavy open and close), summing to one."""
    x = np.linspace(-1.0, 1.0, bars)
    weight = 1.0 + 2.5 * x**2
    return weight / weight.sum()


def five_second_bars(day: DailyBar, bars: int = SESSION_SECONDS // BAR_SECONDS) -> pd.DataFrame:
    """The session's 5-second TRADES bars: time (UTC, bar start), open, high, low, close, volume, wap, count."""
    path = price_path(day, bars * SUBSTEPS + 1)
    opens = path[:-1:SUBSTEPS][:bars]
    closes = path[SUBSTEPS::SUBSTEPS][:bars]
    inside = np.stack([path[k : k + bars * SUBSTEPS : SUBSTEPS][:bars] for k in range(SUBSTEPS + 1)])
    volume = np.floor(volume_profile(bars) * day.volume)
    volume[-1] += max(0.0, day.volume - volume.sum())  # the day's volume exactly
    start = session_open(day.date)
    return pd.DataFrame({
        "time": start + pd.to_timedelta(np.arange(bars) * BAR_SECONDS, unit="s"),
        "open": opens,
        "high": inside.max(axis=0),
        "low": inside.min(axis=0),
        "close": closes,
        "volume": volume,
        "wap": inside.mean(axis=0),
        "count": np.maximum(1, np.round(volume / 100)).astype(np.int64),
    })


def quotes(day: DailyBar, bars: pd.DataFrame, base_bps: float = 2.0) -> pd.DataFrame:
    """Top of book at each bar's close: bid/ask around the close, the spread wider at the open and close and on
    volatile days; sizes in round lots."""
    rng = _rng(day.symbol + "|quotes", day.date)
    n = len(bars)
    x = np.linspace(-1.0, 1.0, n)
    day_range = (day.high - day.low) / max(day.close, 1e-9)
    spread_bps = base_bps * (1.0 + 1.5 * x**2) * (1.0 + 20.0 * day_range)
    mid = bars["close"].to_numpy()
    half = mid * spread_bps / 2e4
    return pd.DataFrame({
        "time": bars["time"] + pd.Timedelta(seconds=BAR_SECONDS - 1),
        "bid": np.round(mid - half, 4),
        "ask": np.round(mid + half, 4),
        "bid_size": 100.0 * rng.integers(1, 20, n),
        "ask_size": 100.0 * rng.integers(1, 20, n),
        "last": mid,
        "last_size": 100.0 * rng.integers(1, 10, n),
    })


EXCHANGES = ("NASDAQ", "ARCA", "NYSE", "BATS", "EDGX", "IEX")
TICK = 0.01  # price step between order-book levels


def session_trades(day: DailyBar, bars: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each trade of the session, derived from its 5-second bars: ``count`` trades per bar (fewer when the bar has
    fewer shares than that) whose sizes sum to the bar's volume, priced on the bar's own price path (so inside its
    low/high; the last trade at its close), timed inside the bar in order. Columns: time (UTC, sub-second), price,
    size, exchange, bar (the bar's index)."""
    bars = five_second_bars(day) if bars is None else bars
    volume = bars["volume"].to_numpy()
    n = np.where(volume >= 1, np.minimum(bars["count"].to_numpy(), np.floor(volume)), 0).astype(np.int64)
    bar = np.repeat(np.arange(len(bars)), n)
    first = np.concatenate([[0], np.cumsum(n)[:-1]])
    j = np.arange(len(bar)) - np.repeat(first, n)  # the trade's index inside its bar
    k = n[bar]
    rng = _rng(day.symbol + "|trades", day.date)
    weight = rng.exponential(size=len(bar))
    share = weight / np.add.reduceat(weight, first[n > 0])[np.searchsorted(np.flatnonzero(n > 0), bar)]
    # One share each, the rest by weight; the last trade of a bar takes what rounding left over.
    size = 1 + np.floor((volume[bar] - k) * share)
    last = j == k - 1
    spent = np.bincount(bar, weights=size, minlength=len(bars))
    size[last] += (volume - spent)[bar[last]]
    path = price_path(day, len(bars) * SUBSTEPS + 1)
    price = np.interp(bar * SUBSTEPS + SUBSTEPS * (j + 1) / k, np.arange(len(path)), path)
    start_ns = pd.to_datetime(bars["time"], utc=True).astype("int64").to_numpy()[bar]
    offset_ns = np.round(1e9 * BAR_SECONDS * (j + 1) / (k + 1)).astype(np.int64)
    return pd.DataFrame({
        "time": pd.to_datetime(start_ns + offset_ns, utc=True),
        "price": price,
        "size": size,
        "exchange": np.asarray(EXCHANGES)[rng.integers(0, len(EXCHANGES), len(bar))],
        "bar": bar,
    })


def depth_levels(day: DailyBar, book: pd.DataFrame, rows: int) -> dict[str, np.ndarray]:
    """The order book at each quote of ``book``: ``rows`` levels per side (arrays quotes x rows). Level 0 is the
    quote (its price and size); level k is ``k`` ticks further from it, with deterministic round-lot sizes."""
    rng = _rng(day.symbol + "|depth", day.date)
    n = len(book)
    steps = TICK * np.arange(rows)
    deeper = 100.0 * rng.integers(1, 50, (2, n, rows))
    deeper[:, :, 0] = np.stack([book["bid_size"].to_numpy(), book["ask_size"].to_numpy()])
    return {
        "bid_price": np.round(book["bid"].to_numpy()[:, None] - steps, 4),
        "ask_price": np.round(book["ask"].to_numpy()[:, None] + steps, 4),
        "bid_size": deeper[0],
        "ask_size": deeper[1],
    }
