"""Write a close-only long CSV (``date, symbol, close``) of many years, with weak planted effects of known size.

Daily log return of symbol i on session t::

    r[i,t] = beta_i * m[t] + mu[i,t] + e[i,t] - kappa * mean(e[i,t-5..t-1])

* ``m``: a market return, N(0.0003, 0.010); ``beta_i`` in U(0.6, 1.4);
* ``e``: idiosyncratic noise, N(0, sigma_i) with ``sigma_i`` in U(0.010, 0.025);
* ``kappa`` (``--reversal``): a short-term reversal of the last five idiosyncratic shocks. The 5-day reversal
  factor's correlation with the next day's idiosyncratic return is about kappa / sqrt(5) (0.045 at the default
  0.1): the size of the best published daily ICs, so a model that finds it has real but small skill;
* ``mu``: a slowly moving expected return per symbol (AR(1), ``--persistence`` 0.998 a day, stationary standard
  deviation ``--drift-sd`` 0.0004 a day): what 12-1 momentum can pick up.

No opens, highs, lows or volume: features that need them are left out with their reasons, as on a real close-only
history. Seeded, so a run is reproducible.

    .venv/bin/python benchmarks/make_close_panel.py --symbols 20 --years 23 --out closes.csv
    ibf evaluate --csv closes.csv --horizons 1,5,20 --test-days 250 --refit-every 125
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ibf_core.calendar import trading_days  # noqa: E402


def close_panel(symbols: int, days: pd.DatetimeIndex, seed: int, reversal: float, persistence: float, drift_sd: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n, t = symbols, len(days)
    beta = rng.uniform(0.6, 1.4, n)
    sigma = rng.uniform(0.010, 0.025, n)
    market = rng.normal(0.0003, 0.010, t)
    shocks = rng.normal(0.0, 1.0, (t, n)) * sigma
    innovation_sd = drift_sd * np.sqrt(1.0 - persistence**2)
    mu = np.empty((t, n))
    mu[0] = rng.normal(0.0, drift_sd, n)
    steps = rng.normal(0.0, innovation_sd, (t, n))
    for day in range(1, t):
        mu[day] = persistence * mu[day - 1] + steps[day]
    # mean of the five previous shocks (fewer at the start), the reversal's signal
    cumulative = np.vstack([np.zeros((1, n)), np.cumsum(shocks, axis=0)])
    past = np.array([cumulative[d] - cumulative[max(d - 5, 0)] for d in range(t)]) / 5.0
    returns = beta * market[:, None] + mu + shocks - reversal * past
    close = rng.uniform(20, 200, n) * np.exp(np.cumsum(returns, axis=0))
    return pd.DataFrame({
        "date": np.repeat(days.strftime("%Y-%m-%d").to_numpy(), n),
        "symbol": np.tile([f"C{k:03d}" for k in range(n)], t),
        "close": close.ravel().round(4),
    }).sort_values(["symbol", "date"], kind="stable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--years", type=float, default=23.0)
    parser.add_argument("--end", default="2024-12-31", help="last calendar day (the panel ends on the session on or before)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--reversal", type=float, default=0.1, help="kappa: strength of the planted 5-day reversal")
    parser.add_argument("--persistence", type=float, default=0.998, help="daily AR(1) coefficient of the expected returns")
    parser.add_argument("--drift-sd", type=float, default=0.0004, help="stationary s.d. of the daily expected return")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    end = pd.Timestamp(args.end)
    days = trading_days(end - pd.DateOffset(days=round(args.years * 365.25)), end)
    frame = close_panel(args.symbols, pd.DatetimeIndex(days), args.seed, args.reversal, args.persistence, args.drift_sd)
    frame.to_csv(args.out, index=False)
    print(f"{args.out}: {args.symbols} symbols x {len(days)} sessions ({days[0].date()}..{days[-1].date()}), {len(frame):,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
