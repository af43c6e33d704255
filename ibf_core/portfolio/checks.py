"""The checks of the portfolio tables: exposure, leverage, priced weights, a finite NAV (each a ``QualityResult``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ibf_core.market.quality import QualityResult
from ibf_core.portfolio.simulate import NO_PRICE_HELD, NO_PRICE_NOT_TRADED, REBALANCE, SOLD
from ibf_core.portfolio.spec import MAX_LEVERAGE, Strategy

TOLERANCE = 1e-9
MAX_EXAMPLES = 5


def _named(frame: pd.DataFrame) -> list[str]:
    return [f"{r.portfolio} {pd.Timestamp(r.date).date()}" for r in frame.head(MAX_EXAMPLES).itertuples()]


def check_exposure(weights: pd.DataFrame, returns: pd.DataFrame, specs: dict[str, Strategy]) -> QualityResult:
    """Each session's weights sum (|w|) to its stored ``exposure``, and a full rebalance (every name priced and
    traded) sums to the strategy's leverage (less only where ``max_weight`` or ``turnover_cap`` leave cash),
    long-short netting to 0."""
    sums = weights.assign(gross=weights["weight"].abs()).groupby(["portfolio", "date"], as_index=False).agg(
        gross=("gross", "sum"), net=("weight", "sum"),
        full=("reason", lambda r: bool(r.isin([REBALANCE, SOLD]).all() and (r == REBALANCE).any())))
    joined = returns[["portfolio", "date", "exposure"]].merge(sums, on=["portfolio", "date"], how="left")
    joined[["gross", "net"]] = joined[["gross", "net"]].fillna(0.0)
    joined["full"] = joined["full"].astype("boolean").fillna(False).astype(bool)
    mismatch = joined[(joined["gross"] - joined["exposure"]).abs() > TOLERANCE]
    bad = []
    for name, rows in joined[joined["full"]].groupby("portfolio"):
        spec = specs.get(str(name))
        if spec is None:
            continue
        capped = spec.max_weight is not None or spec.turnover_cap is not None
        off = rows["gross"] - spec.leverage
        wrong = rows[(off > TOLERANCE) | ((off < -TOLERANCE) & (not capped))]
        if not spec.long_only:
            wrong = pd.concat([wrong, rows[rows["net"].abs() > TOLERANCE]])
        bad.append(wrong)
    off_target = pd.concat(bad) if bad else joined.iloc[:0]
    passed = mismatch.empty and off_target.empty
    return QualityResult(
        "weights_sum_to_exposure", passed,
        "every session's weights sum to its exposure, every full rebalance to the strategy's leverage" if passed
        else f"{len(mismatch)} session(s) whose weights do not sum to the stored exposure, {len(off_target)} full "
             "rebalance(s) off the strategy's leverage",
        {"sessions": len(joined), "exposure_mismatch": _named(mismatch), "off_leverage": _named(off_target)},
    )


def check_leverage(returns: pd.DataFrame, weights: pd.DataFrame, specs: dict[str, Strategy]) -> QualityResult:
    """Gross exposure never above MAX_LEVERAGE, and not above the strategy's leverage after a session that traded
    every name it wanted (between trades weights drift with prices)."""
    over_cap = returns[returns["exposure"] > MAX_LEVERAGE + TOLERANCE]
    traded = weights.groupby(["portfolio", "date"])["reason"].agg(
        lambda r: bool((r == REBALANCE).any() and not r.isin([NO_PRICE_HELD, NO_PRICE_NOT_TRADED]).any()))
    traded = traded[traded].reset_index()[["portfolio", "date"]]
    rows = returns.merge(traded, on=["portfolio", "date"])
    limit = rows["portfolio"].map(lambda p: specs[p].leverage if p in specs else MAX_LEVERAGE).astype(float)
    over = rows[rows["exposure"] > limit + TOLERANCE]
    passed = over_cap.empty and over.empty
    return QualityResult(
        "leverage_within_limit", passed,
        "exposure within the strategies' leverage" if passed
        else f"{len(over)} trade session(s) above the strategy's leverage, {len(over_cap)} above {MAX_LEVERAGE:g}",
        {"max_exposure": float(returns["exposure"].max()) if len(returns) else 0.0,
         "over_leverage": _named(over), "over_cap": _named(over_cap)},
    )


def check_priced(weights: pd.DataFrame, bars: pd.DataFrame) -> QualityResult:
    """No weight on a symbol without a price: every held name has a positive adj_close that session, or on an
    earlier one and a row saying it was held (or not traded) at its last price."""
    held = weights[weights["weight"] != 0][["portfolio", "date", "symbol", "reason"]]
    prices = bars[["symbol", "date", "adj_close"]].assign(date=pd.to_datetime(bars["date"]))
    prices = prices[np.isfinite(prices["adj_close"].astype(float)) & (prices["adj_close"].astype(float) > 0)]
    priced = held.merge(prices, on=["symbol", "date"], how="left")["adj_close"].notna().to_numpy()
    first = prices.groupby("symbol")["date"].min()
    seen_before = (held["date"] >= held["symbol"].map(first)).fillna(False).to_numpy(dtype=bool)
    explained = held["reason"].isin([NO_PRICE_HELD, NO_PRICE_NOT_TRADED]).to_numpy()
    bad = held[~priced & ~(seen_before & explained)]
    unexplained = held[~priced & ~explained & seen_before]
    passed = bad.empty
    return QualityResult(
        "weights_priced", passed,
        "every weight is on a priced symbol" if passed else f"{len(bad)} weight(s) on a symbol without a price",
        {"held_rows": len(held), "unpriced": [f"{r.portfolio} {pd.Timestamp(r.date).date()} {r.symbol}"
                                             for r in bad.head(MAX_EXAMPLES).itertuples()],
         "missing_price_unexplained": len(unexplained), "held_at_last_price": int((~priced & explained).sum())},
    )


def check_nav(returns: pd.DataFrame) -> QualityResult:
    """Every NAV and return finite, the NAV positive, and each NAV the previous one x (1 + net_return)."""
    values = returns[["gross_return", "cost", "net_return", "turnover", "nav", "exposure"]].to_numpy(dtype=float)
    rows = ~np.isfinite(values).all(axis=1) | (returns["nav"].to_numpy(dtype=float) <= 0)
    bad = returns[rows]
    ordered = returns.sort_values(["portfolio", "date"])
    previous = ordered.groupby("portfolio")["nav"].shift(1).fillna(1.0)
    broken = ordered[~np.isclose(previous * (1 + ordered["net_return"]), ordered["nav"], rtol=1e-9, atol=1e-12)]
    passed = bad.empty and broken.empty
    return QualityResult(
        "nav_finite", passed,
        "NAV finite, positive and compounding net_return" if passed
        else f"{len(bad)} session(s) with a non-finite value or NAV <= 0, {len(broken)} not compounding",
        {"sessions": len(returns), "bad": _named(bad), "not_compounding": _named(broken)},
    )


__all__ = ["check_exposure", "check_leverage", "check_nav", "check_priced"]
