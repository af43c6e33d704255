"""Synthetic daily bars with the imperfections of real vendor files: missing sessions, gaps, short or partial data.

Used by the tests and, from the command line, to write a file for ``ibf backfill --source csv``::

    python tests/helpers/messy_bars.py --symbols 50 --sessions 252 --out /tmp/messy.csv

Prices follow a one-factor model (a market return plus an idiosyncratic one) on real NYSE sessions, with
consistent OHLC (open and close inside [low, high]: no OHLC glitches). Imperfections, each optional:
``vendor_missing`` sessions missing for every symbol, ``gaps`` per-symbol runs of 1-3 missing sessions,
``close_only`` (open = high = low = close), ``no_volume`` (NaN volume) and a planted one-session
``reversal`` (tomorrow's idiosyncratic return leans against today's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ibf_core.calendar import trading_days


def messy_bars(
    n_symbols: int = 50,
    sessions: int = 252,
    end: str = "2023-12-29",
    vendor_missing: int = 5,
    gaps: int = 2,
    close_only: bool = False,
    no_volume: bool = False,
    reversal: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Canonical bar frame (``symbol, date, open, high, low, close, adj_close, volume``) of ``sessions`` sessions."""
    rng = np.random.default_rng(seed)
    days = trading_days(pd.Timestamp(end) - pd.Timedelta(days=int(sessions * 1.6) + 30), end)[-sessions:]
    market = rng.normal(0.0003, 0.009, len(days))
    frames = []
    for i in range(n_symbols):
        own = _idiosyncratic(rng, len(days), reversal)
        returns = rng.uniform(0.6, 1.4) * market + own
        close = rng.uniform(20, 200) * np.exp(np.cumsum(returns))
        frames.append(_bars(rng, f"S{i:03d}", days, close))
    bars = pd.concat(frames, ignore_index=True)
    bars = _drop_sessions(rng, bars, days, vendor_missing, gaps)
    if close_only:
        bars[["open", "high", "low"]] = np.repeat(bars[["close"]].to_numpy(), 3, axis=1)
    if no_volume:
        bars["volume"] = np.nan
    return bars.sort_values(["symbol", "date"]).reset_index(drop=True)


def _idiosyncratic(rng: np.random.Generator, n: int, reversal: float) -> np.ndarray:
    """Daily idiosyncratic returns; with ``reversal`` r_t = -reversal * r_{t-1} + noise."""
    noise = rng.normal(0.0, 0.015, n)
    if not reversal:
        return noise
    out = np.empty(n)
    out[0] = noise[0]
    for t in range(1, n):
        out[t] = -reversal * out[t - 1] + noise[t]
    return out


def _bars(rng: np.random.Generator, symbol: str, days: pd.DatetimeIndex, close: np.ndarray) -> pd.DataFrame:
    """Consistent OHLCV around ``close`` (open near the previous close, range around both)."""
    previous = np.r_[close[0], close[:-1]]
    open_ = previous * np.exp(rng.normal(0, 0.004, len(days)))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.006, len(days))))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.006, len(days))))
    volume = np.round(np.exp(rng.normal(13, 0.4, len(days))))
    return pd.DataFrame({
        "symbol": symbol, "date": days, "open": open_.round(4), "high": np.ceil(high * 1e4) / 1e4,
        "low": np.floor(low * 1e4) / 1e4, "close": close.round(4), "adj_close": close.round(4), "volume": volume,
    })


def _drop_sessions(rng: np.random.Generator, bars: pd.DataFrame, days: pd.DatetimeIndex, vendor: int, gaps: int) -> pd.DataFrame:
    """Remove ``vendor`` sessions from every symbol and ``gaps`` runs of 1-3 sessions from each symbol."""
    inner = days[5:-5]
    lost = set(rng.choice(inner, size=min(vendor, len(inner)), replace=False)) if vendor else set()
    drop = bars["date"].isin(lost).to_numpy()
    for symbol in bars["symbol"].unique():
        rows = np.flatnonzero((bars["symbol"] == symbol).to_numpy())
        for _ in range(gaps):
            first = int(rng.integers(5, len(rows) - 8))
            drop[rows[first : first + int(rng.integers(1, 4))]] = True
    return bars[~drop]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=252)
    parser.add_argument("--end", default="2023-12-29")
    parser.add_argument("--vendor-missing", type=int, default=5)
    parser.add_argument("--gaps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--close-only", action="store_true")
    parser.add_argument("--no-volume", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bars = messy_bars(args.symbols, args.sessions, args.end, args.vendor_missing, args.gaps, args.close_only,
                      args.no_volume, seed=args.seed)
    frame = bars.assign(date=bars["date"].dt.strftime("%Y-%m-%d"))
    frame[["date", "symbol", "open", "high", "low", "close", "volume", "adj_close"]].to_csv(args.out, index=False)
    print(f"{len(frame):,} bars of {frame['symbol'].nunique()} symbols, {frame['date'].nunique()} sessions -> {args.out}")


if __name__ == "__main__":
    main()
