"""The portfolio tables' checks pass on a real backtest and fail on each kind of corrupted frame."""

import numpy as np
import pandas as pd
import pytest
from helpers.portfolio import planted_panel

from ibf_core.portfolio.checks import check_exposure, check_leverage, check_nav, check_priced
from ibf_core.portfolio.costs import CostModel
from ibf_core.portfolio.simulate import simulate
from ibf_core.portfolio.spec import Strategy

SPECS = {"top": Strategy.parse({"strategy": "topk", "k": 3}), "ls": Strategy.parse({"strategy": "long_short", "k": 2})}


@pytest.fixture(scope="module")
def tables():
    bars, preds, _ = planted_panel(n_symbols=10, start="2021-01-04", end="2021-04-30", seed=5)
    sims = [simulate(preds, bars, spec, CostModel(), portfolio=name) for name, spec in SPECS.items()]
    weights = pd.concat([s.weights for s in sims], ignore_index=True)
    returns = pd.concat([s.returns for s in sims], ignore_index=True)
    return (weights.assign(date=pd.to_datetime(weights["date"])), returns.assign(date=pd.to_datetime(returns["date"])),
            bars.assign(date=pd.to_datetime(bars["date"])))


def _all(weights, returns, bars) -> dict[str, bool]:
    results = (check_exposure(weights, returns, SPECS), check_leverage(returns, weights, SPECS),
               check_priced(weights, bars), check_nav(returns))
    return {r.name: r.passed for r in results}


def test_a_real_backtest_passes_every_check(tables):
    assert _all(*tables) == {"weights_sum_to_exposure": True, "leverage_within_limit": True, "weights_priced": True,
                             "nav_finite": True}


def test_a_weight_off_its_exposure_fails(tables):
    weights, returns, bars = tables
    bad = weights.copy()
    at = bad.index[bad["weight"] != 0][10]
    bad.loc[at, "weight"] *= 2.0
    result = check_exposure(bad, returns, SPECS)
    assert not result.passed and result.details["exposure_mismatch"] == [f"{bad.at[at, 'portfolio']} {bad.at[at, 'date'].date()}"]


def test_a_rebalance_above_the_strategys_leverage_fails_both_checks(tables):
    weights, returns, bars = tables
    day = weights.loc[(weights["portfolio"] == "top") & (weights["reason"] == "rebalance"), "date"].iloc[5]
    w, r = weights.copy(), returns.copy()
    w.loc[(w["portfolio"] == "top") & (w["date"] == day), "weight"] *= 1.5  # 1.5x levered: exposure says so too
    r.loc[(r["portfolio"] == "top") & (r["date"] == day), "exposure"] *= 1.5
    exposure, leverage = check_exposure(w, r, SPECS), check_leverage(r, w, SPECS)
    assert not exposure.passed and exposure.details["off_leverage"] == [f"top {day.date()}"]
    assert not leverage.passed and leverage.details["over_leverage"] == [f"top {day.date()}"]
    r.loc[r.index[3], "exposure"] = 5.0
    assert check_leverage(r, w, SPECS).details["over_cap"] == [f"{r.at[r.index[3], 'portfolio']} {r.at[r.index[3], 'date'].date()}"]


def test_a_long_short_rebalance_that_does_not_net_to_zero_fails(tables):
    weights, returns, bars = tables
    day = weights.loc[(weights["portfolio"] == "ls") & (weights["reason"] == "rebalance"), "date"].iloc[2]
    w = weights.copy()
    shorts = (w["portfolio"] == "ls") & (w["date"] == day) & (w["weight"] < 0)
    w.loc[shorts, "weight"] = 0.0
    r = returns.copy()
    r.loc[(r["portfolio"] == "ls") & (r["date"] == day), "exposure"] = 1.0  # consistent gross, but not neutral
    assert f"ls {day.date()}" in check_exposure(w, r, SPECS).details["off_leverage"]


def test_a_weight_on_a_symbol_without_a_price_fails(tables):
    weights, returns, bars = tables
    ghost = weights.iloc[[0]].assign(symbol="ZZZ", weight=0.01)
    result = check_priced(pd.concat([weights, ghost], ignore_index=True), bars)
    assert not result.passed and result.details["unpriced"] == [f"{ghost['portfolio'].iloc[0]} {ghost['date'].iloc[0].date()} ZZZ"]
    # A held name whose bar is gone that session, not marked as held at its last price, fails too.
    row = weights[(weights["weight"] != 0) & (weights["reason"] == "hold")].iloc[0]
    gone = bars[~((bars["symbol"] == row["symbol"]) & (bars["date"] == row["date"]))]
    assert not check_priced(weights, gone).passed
    marked = weights.copy()
    same = (marked["symbol"] == row["symbol"]) & (marked["date"] == row["date"])
    marked.loc[same, "reason"] = "no price: held at last price"
    assert check_priced(marked, gone).passed


@pytest.mark.parametrize("column, value", [("nav", np.nan), ("gross_return", np.inf), ("nav", -0.5), ("net_return", 0.3)])
def test_a_non_finite_negative_or_non_compounding_nav_fails(tables, column, value):
    weights, returns, bars = tables
    bad = returns.copy()
    bad.loc[bad.index[7], column] = value
    assert not check_nav(bad).passed
