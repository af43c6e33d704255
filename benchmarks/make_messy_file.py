"""Write a vendor-like messy long CSV: clean random-walk bars, then the faults real files carry.

Faults, all seeded: OHLC glitches of mixed size (open or close outside [low, high], high below low; sizes
log-uniform between 0.02% and 20%, so some fall inside and some outside the repair tolerance), vendor-wide missing
sessions (every symbol lacks them), per-symbol gaps, duplicate (symbol, date) rows and non-positive closes. A JSON
manifest of what was injected goes to stdout (or ``--manifest``), so a load can be checked against it.

    .venv/bin/python benchmarks/make_messy_file.py --symbols 50 --sessions 252 --out messy.csv
    ibf backfill --source csv --csv messy.csv
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibf_core.calendar import trading_days  # noqa: E402

GLITCH_KINDS = ("open_above_high", "open_below_low", "close_above_high", "close_below_low", "high_below_low")


def clean_bars(rng: np.random.Generator, n_symbols: int, days: pd.DatetimeIndex, regime_from: str | None = None) -> pd.DataFrame:
    """Random walks (about 1.5% daily volatility) with a consistent intraday range and lognormal volume.

    ``regime_from``: from that session on, volatility triples and the drift turns to -0.4% a day (a regime change
    for the drift monitor to find).
    """
    after = days >= pd.Timestamp(regime_from) if regime_from else np.zeros(len(days), dtype=bool)
    mu, sigma = np.where(after, -0.004, 0.0003), np.where(after, 0.045, 0.015)
    frames = []
    for k in range(n_symbols):
        close = rng.uniform(10, 300) * np.exp(np.cumsum(mu + sigma * rng.standard_normal(len(days))))
        open_ = close * np.exp(rng.normal(0, 0.006, len(days)))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.007, len(days))))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.007, len(days))))
        frames.append(
            pd.DataFrame(
                {
                    "date": days.strftime("%Y-%m-%d"),
                    "symbol": f"S{k:03d}",
                    "open": open_.round(4),
                    "high": high.round(4),
                    "low": low.round(4),
                    "close": close.round(4),
                    "adj_close": close.round(4),
                    "volume": rng.lognormal(13, 0.5, len(days)).round(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def glitch(frame: pd.DataFrame, rng: np.random.Generator, rate: float) -> list[dict]:
    """Break ``rate`` of the rows in place; returns what was done to each."""
    rows = rng.choice(len(frame), size=max(1, round(rate * len(frame))), replace=False)
    done = []
    for row in sorted(rows.tolist()):
        kind = GLITCH_KINDS[rng.integers(len(GLITCH_KINDS))]
        size = float(np.exp(rng.uniform(np.log(0.0002), np.log(0.2))))
        high, low = frame.at[row, "high"], frame.at[row, "low"]
        column, value = {
            "open_above_high": ("open", high * (1 + size)),
            "open_below_low": ("open", low * (1 - size)),
            "close_above_high": ("close", high * (1 + size)),
            "close_below_low": ("close", low * (1 - size)),
            "high_below_low": ("high", low * (1 - size)),
        }[kind]
        frame.at[row, column] = round(value, 4)
        done.append({"symbol": frame.at[row, "symbol"], "date": frame.at[row, "date"], "kind": kind, "size": round(size, 6)})
    return done


def remove_sessions(frame: pd.DataFrame, rng: np.random.Generator, days: pd.DatetimeIndex, n: int) -> list[str]:
    """Sessions no symbol has (never the first or last, which would only shorten the range)."""
    chosen = sorted(rng.choice(days[1:-1].strftime("%Y-%m-%d"), size=n, replace=False).tolist())
    frame.drop(frame.index[frame["date"].isin(chosen)], inplace=True)
    return chosen


def remove_rows(frame: pd.DataFrame, rng: np.random.Generator, n: int) -> list[dict]:
    """Single (symbol, session) gaps inside a symbol's range."""
    inner = frame.groupby("symbol", group_keys=False).apply(lambda g: g.iloc[1:-1], include_groups=False)
    picked = rng.choice(inner.index.to_numpy(), size=n, replace=False)
    gaps = [{"symbol": frame.at[i, "symbol"], "date": frame.at[i, "date"]} for i in sorted(picked.tolist())]
    frame.drop(index=picked, inplace=True)
    return gaps


def session_days(sessions: int, end: str) -> pd.DatetimeIndex:
    """The file's ``sessions`` NYSE sessions ending on or before ``end`` (before vendor gaps remove any)."""
    return trading_days(pd.Timestamp(end) - pd.Timedelta(days=int(sessions * 1.6) + 10), end)[-sessions:]


def make_messy(
    n_symbols: int, sessions: int, end: str, seed: int, glitch_rate: float, vendor_gaps: int, symbol_gaps: int,
    duplicates: int, nonpositive: int, regime_from: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    days = session_days(sessions, end)
    frame = clean_bars(rng, n_symbols, days, regime_from)
    manifest: dict = {"symbols": n_symbols, "sessions": sessions, "first": str(days[0].date()), "last": str(days[-1].date()),
                      "regime_from": regime_from}
    manifest["glitches"] = glitch(frame, rng, glitch_rate)
    bad_close = rng.choice(len(frame), size=nonpositive, replace=False)
    frame.loc[bad_close, "close"] = 0.0
    manifest["nonpositive_close"] = [{"symbol": frame.at[i, "symbol"], "date": frame.at[i, "date"]} for i in sorted(bad_close.tolist())]
    manifest["vendor_gaps"] = remove_sessions(frame, rng, days, vendor_gaps)
    manifest["symbol_gaps"] = remove_rows(frame, rng, symbol_gaps)
    copies = frame.sample(n=duplicates, random_state=seed).assign(close=lambda f: (f["close"] * 1.0005).round(4))
    manifest["duplicates"] = [{"symbol": r.symbol, "date": r.date} for r in copies.itertuples()]
    frame = pd.concat([frame, copies]).sort_values(["date", "symbol"], kind="stable")  # vendor order: by day
    manifest["rows"] = len(frame)
    return frame, manifest


def session_date(text: str) -> str:
    """A YYYY-MM-DD date, checked (argparse names the bad value)."""
    return dt.date.fromisoformat(text).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=252)
    parser.add_argument("--end", default="2021-12-31", help="last calendar day (the file ends on the session on or before)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--glitch-rate", type=float, default=0.001, help="share of rows with an OHLC glitch")
    parser.add_argument("--vendor-gaps", type=int, default=5, help="sessions missing for every symbol")
    parser.add_argument("--symbol-gaps", type=int, default=4, help="single (symbol, session) rows missing")
    parser.add_argument("--duplicates", type=int, default=2, help="extra rows repeating a (symbol, date)")
    parser.add_argument("--nonpositive", type=int, default=1, help="rows whose close is 0")
    parser.add_argument("--regime-from", type=session_date, default=None,
                        help="from this session (YYYY-MM-DD): volatility x3 and a negative drift")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, help="write the manifest here instead of stdout")
    args = parser.parse_args()
    frame, manifest = make_messy(
        args.symbols, args.sessions, args.end, args.seed, args.glitch_rate, args.vendor_gaps, args.symbol_gaps,
        args.duplicates, args.nonpositive, args.regime_from,
    )
    frame.to_csv(args.out, index=False)
    text = json.dumps(manifest, indent=1)
    if args.manifest:
        args.manifest.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
