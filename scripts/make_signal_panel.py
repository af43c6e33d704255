"""Generate a synthetic panel with *planted* fundamental, sector and macro effects, to check that ibf finds them.

Writes ``<out>/bars.csv`` (long format: symbol,date,open,high,low,close,adj_close,volume) and
``<out>/fundamentals.json`` in Alpha Vantage's own shapes (OVERVIEW, EARNINGS, economic endpoints) for
``ibf av-sim --fundamentals``. Everything is synthetic and says so; the planted effects are:

* post-earnings drift: from the session a report becomes usable, ``DRIFT_PER_DAY x surprise_z`` is added to the
  daily return for 20 sessions (the surprise itself is only known from that session on);
* sector rotation: each sector's daily drift is an AR(1) (phi 0.985), so a sector's recent return predicts its next;
* macro: the market's daily drift rises with the 10y-2y slope published the day before.

Usage: ``python scripts/make_signal_panel.py OUT [--symbols 20] [--start 2016-01-04] [--end 2023-12-29] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

SECTORS = {
    "TECHNOLOGY": ("SERVICES-PREPACKAGED SOFTWARE", "SEMICONDUCTORS & RELATED DEVICES"),
    "FINANCE": ("NATIONAL COMMERCIAL BANKS", "FIRE, MARINE & CASUALTY INSURANCE"),
    "LIFE SCIENCES": ("PHARMACEUTICAL PREPARATIONS", "SURGICAL & MEDICAL INSTRUMENTS & APPARATUS"),
    "ENERGY & TRANSPORTATION": ("CRUDE PETROLEUM & NATURAL GAS", "RAILROADS, LINE-HAUL OPERATING"),
}
DRIFT_PER_DAY = 0.0025  # per 1 sigma of surprise, for 20 sessions (strong enough to show in 250 origins)
DRIFT_SESSIONS = 20


def _sessions(start: str, end: str) -> pd.DatetimeIndex:
    from ibf_core.calendar import trading_days

    return trading_days(start, end)


def generate(n_symbols: int, start: str, end: str, seed: int) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    days = _sessions(start, end)
    n = len(days)
    names = list(SECTORS)
    symbols = [f"S{i + 1:02d}" for i in range(n_symbols)]
    sector_of = {s: names[i % len(names)] for i, s in enumerate(symbols)}
    industry_of = {s: SECTORS[sector_of[s]][(i // len(names)) % 2] for i, s in enumerate(symbols)}

    # Macro: daily yields (random walks), fed funds steps, monthly CPI and unemployment.
    y3m = np.clip(1.0 + np.cumsum(rng.normal(0, 0.02, n)), 0.0, None)
    y2y = np.clip(y3m + 0.3 + np.cumsum(rng.normal(0, 0.015, n)), 0.0, None)
    y10 = np.clip(y2y + 0.6 + np.cumsum(rng.normal(0, 0.015, n)), 0.0, None)
    fed = np.round(np.clip(y3m - 0.1, 0.0, None) * 4) / 4
    slope = y10 - y2y
    market_drift = 0.0002 + 0.0006 * (np.concatenate([[slope[0]], slope[:-1]]) - slope.mean())
    market = market_drift + rng.normal(0, 0.009, n)
    sector_drift = np.zeros((n, len(names)))
    for t in range(1, n):
        sector_drift[t] = 0.985 * sector_drift[t - 1] + rng.normal(0, 0.00012, len(names))
    sector_ret = sector_drift + rng.normal(0, 0.005, (n, len(names)))

    bars, earnings = [], {}
    day_index = {d: i for i, d in enumerate(days)}
    for k, symbol in enumerate(symbols):
        beta = rng.uniform(0.7, 1.3)
        r = beta * market + sector_ret[:, names.index(sector_of[symbol])] + rng.normal(0, 0.013, n)
        quarters = pd.date_range(days[0] - pd.DateOffset(months=3), days[-1], freq="QE")
        rows = []
        for q in quarters:
            reported = q + pd.Timedelta(days=int(rng.integers(22, 40)))
            when = "post-market" if rng.random() < 0.55 else "pre-market"
            later = days[days > reported] if when == "post-market" else days[days >= reported]
            if reported > days[-1] or not len(later):
                continue
            usable = day_index[later[0]]
            z = rng.normal()
            estimate = round(1.0 + 0.05 * k + rng.normal(0, 0.1), 2)
            reported_eps = round(estimate * (1 + 0.08 * z), 2)
            r[usable : usable + DRIFT_SESSIONS] += DRIFT_PER_DAY * z
            r[usable] += 0.01 * z  # the announcement move, in the return that reaches the first usable close
            rows.append({
                "fiscalDateEnding": q.date().isoformat(), "reportedDate": reported.date().isoformat(),
                "reportedEPS": f"{reported_eps:.2f}", "estimatedEPS": f"{estimate:.2f}",
                "surprise": f"{reported_eps - estimate:.2f}",
                "surprisePercentage": f"{100 * (reported_eps - estimate) / abs(estimate):.4f}", "reportTime": when,
            })
        earnings[symbol] = {"symbol": symbol, "annualEarnings": [], "quarterlyEarnings": rows[::-1]}
        close = 50.0 * np.exp(np.cumsum(r))
        open_ = close * np.exp(rng.normal(0, 0.003, n) - r / 2)
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, n)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, n)))
        volume = np.round(rng.lognormal(14, 0.4, n))
        bars.append(pd.DataFrame({"symbol": symbol, "date": days.date, "open": open_, "high": high, "low": low,
                                  "close": close, "adj_close": close, "volume": volume}))
    overview = {s: {"Symbol": s, "AssetType": "Common Stock", "Name": f"Synthetic {s}", "Exchange": "NYSE",
                    "Sector": sector_of[s], "Industry": industry_of[s], "SharesOutstanding": str(int(rng.uniform(5e7, 5e9))),
                    "AnalystTargetPrice": "None", "AnalystRatingStrongBuy": "-", "AnalystRatingBuy": "-",
                    "AnalystRatingHold": "-", "AnalystRatingSell": "-", "AnalystRatingStrongSell": "-"} for s in symbols}

    def series(name: str, interval: str, unit: str, dates, values) -> dict:
        data = [{"date": d.date().isoformat(), "value": f"{v:.3f}"} for d, v in zip(dates, values)][::-1]
        return {"name": name, "interval": interval, "unit": unit, "data": data}

    months = pd.date_range(days[0] - pd.DateOffset(months=14), days[-1], freq="MS")
    cpi = 240 * np.exp(np.cumsum(rng.normal(0.002, 0.002, len(months))))
    unemployment = np.clip(4.5 + np.cumsum(rng.normal(0, 0.1, len(months))), 2.5, None)
    macro = {
        "TREASURY_YIELD:3month": series("3-Month Treasury Constant Maturity Rate", "daily", "percent", days, y3m),
        "TREASURY_YIELD:2year": series("2-Year Treasury Constant Maturity Rate", "daily", "percent", days, y2y),
        "TREASURY_YIELD:10year": series("10-Year Treasury Constant Maturity Rate", "daily", "percent", days, y10),
        "FEDERAL_FUNDS_RATE": series("Effective Federal Funds Rate", "daily", "percent", days, fed),
        "CPI": series("Consumer Price Index for all Urban Consumers", "monthly", "index 1982-1984=100", months, cpi),
        "UNEMPLOYMENT": series("Unemployment Rate", "monthly", "percent", months, unemployment),
    }
    fundamentals = {"overview": overview, "earnings": earnings, "calendar": [], "macro": macro}
    return pd.concat(bars, ignore_index=True), fundamentals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--start", default="2016-01-04")
    parser.add_argument("--end", default="2023-12-29")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bars, fundamentals = generate(args.symbols, args.start, args.end, args.seed)
    bars.to_csv(args.out / "bars.csv", index=False, float_format="%.4f")
    (args.out / "fundamentals.json").write_text(json.dumps(fundamentals))
    print(f"wrote {len(bars):,} bars of {bars['symbol'].nunique()} symbols and {args.out / 'fundamentals.json'}")


if __name__ == "__main__":
    main()
