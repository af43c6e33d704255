"""Synthetic daily bars on real NYSE sessions (``messy_bars`` adds a vendor file's imperfections)."""

import numpy as np
import pandas as pd

from ibf_core.calendar import trading_days


def make_bars(symbols=("AAA", "BBB"), start="2021-01-04", end="2021-03-31", seed=0) -> pd.DataFrame:
    """Synthetic but valid bars on real NYSE sessions (random-walk closes, consistent OHLC)."""
    rng = np.random.default_rng(seed)
    days = trading_days(start, end)
    frames = []
    for i, symbol in enumerate(symbols):
        close = 50 * (i + 1) * np.exp(np.cumsum(rng.normal(0, 0.01, len(days))))
        open_ = close * (1 + rng.normal(0, 0.003, len(days)))
        high = np.maximum(open_, close) * 1.01
        low = np.minimum(open_, close) * 0.99
        frames.append(
            pd.DataFrame(
                {
                    "date": days.strftime("%Y-%m-%d"),
                    "symbol": symbol,
                    "open": open_.round(4),
                    "high": high.round(4),
                    "low": low.round(4),
                    "close": close.round(4),
                    "adj_close": close.round(4),
                    "volume": rng.integers(1_000, 100_000, len(days)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def dividend_bars(symbols=("AAPL", "IBM"), start="2020-01-02", end="2022-12-30", dividend=0.97) -> pd.DataFrame:
    """Canonical bars on NYSE sessions; adj_close = close * ``dividend`` before 2022-06-01."""
    days = trading_days(start, end)
    frames = []
    for i, symbol in enumerate(symbols):
        close = 50.0 * (i + 1) + np.sin(np.arange(len(days)) / 9.0) * 5 + np.arange(len(days)) * 0.01
        factor = np.where(days < pd.Timestamp("2022-06-01"), dividend, 1.0)
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "date": days,
                    "open": close * 0.995,
                    "high": close * 1.01,
                    "low": close * 0.985,
                    "close": close,
                    "adj_close": close * factor,
                    "volume": 10_000.0 + np.arange(len(days)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
