"""Benchmark: the point-in-time fundamental, earnings, sector and macro features for N symbols x Y years, computed
vectorized over the whole panel (``fundamental.compute`` + ``macro.compute``), against a simple baseline on the same
data: one ``pandas.merge_asof`` per symbol for the earnings and snapshot columns plus a per-date groupby for the
sector means (what a straightforward implementation does). Both are checked to agree on the columns they share.

    .venv/bin/python benchmarks/bench_fundamental_features.py [--symbols 500 --years 10 --repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import best_of  # noqa: E402 (benchmarks/ is the script folder on sys.path)
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from make_signal_panel import generate

    from ibf_core.features import Panel, fundamental, macro
    from ibf_core.features.fundamental import category_code
    from ibf_core.fundamentals.alphavantage import parse_earnings, parse_macro, parse_overview
    from ibf_core.fundamentals.inputs import FundamentalInputs

    end = pd.Timestamp("2023-12-29")
    start = end - pd.DateOffset(years=args.years)
    bars, data = generate(args.symbols, str(start.date()), str(end.date()), seed=0)
    bars["date"] = pd.to_datetime(bars["date"])
    overview = pd.DataFrame([parse_overview(body, s)[0] for s, body in data["overview"].items()])
    overview = overview.assign(date=pd.Timestamp(start))
    earnings = pd.concat([parse_earnings(body, s)[0] for s, body in data["earnings"].items()], ignore_index=True)
    macro_rows = []
    for key, indicator in (("TREASURY_YIELD:10year", "treasury_10y"), ("TREASURY_YIELD:2year", "treasury_2y"),
                           ("TREASURY_YIELD:3month", "treasury_3m"), ("FEDERAL_FUNDS_RATE", "fed_funds"),
                           ("CPI", "cpi"), ("UNEMPLOYMENT", "unemployment")):
        macro_rows.append(parse_macro(data["macro"][key], indicator)[0])
    inputs = FundamentalInputs(overview=overview, earnings=earnings, macro=pd.concat(macro_rows, ignore_index=True))
    panel, order = Panel.from_bars(bars)
    print(f"{args.symbols} symbols x {args.years} years: {panel.n:,} rows, {len(earnings):,} reports, "
          f"{len(inputs.macro):,} macro values")

    def vectorized():
        rows = {name: np.empty(panel.n) for name in [*fundamental.COLUMNS, *macro.COLUMNS, "logret_20", "hv_20"]}
        logp = np.log(panel.adj_close)
        panel.diff(logp, 20, out=rows["logret_20"])
        rows["hv_20"][:] = 0.2
        fundamental.compute(panel, rows, inputs)
        macro.compute(panel, rows, inputs.macro)
        return rows

    def baseline():
        frame = pd.DataFrame({"symbol": panel.symbols[panel.sym], "date": panel.dates, "close": panel.close,
                              "logret_20": np.log(panel.adj_close) - np.log(pd.Series(panel.adj_close).groupby(panel.sym).shift(20).to_numpy())})
        parts = []
        for symbol, part in frame.groupby("symbol", sort=False):
            reports = earnings[earnings["symbol"] == symbol].sort_values("date")[["date", "surprise_pct"]]
            parts.append(pd.merge_asof(part.sort_values("date"), reports, on="date", direction="backward"))
        out = pd.concat(parts)
        sectors = overview.set_index("symbol")["sector"].map(category_code)
        out["sector_code"] = out["symbol"].map(sectors)
        grouped = out.groupby(["date", "sector_code"])["logret_20"]
        total, count = grouped.transform("sum"), grouped.transform("count")
        out["sector_rel_ret_20"] = out["logret_20"] - (total - out["logret_20"]) / (count - 1)
        return out.sort_values(["symbol", "date"])

    fast, rows = best_of(args.repeat, vectorized)
    slow, ref = best_of(args.repeat, baseline)
    surprise = np.clip(ref["surprise_pct"].to_numpy(), -100, 100)
    assert np.allclose(rows["earn_surprise_pct"], surprise, equal_nan=True)
    assert np.allclose(rows["sector_rel_ret_20"], ref["sector_rel_ret_20"].to_numpy(), equal_nan=True)
    print(f"vectorized (16 fundamental/sector + 7 macro columns): {fast:.3f} s")
    print(f"baseline (merge_asof per symbol + groupby, 2 columns): {slow:.3f} s  ({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()
