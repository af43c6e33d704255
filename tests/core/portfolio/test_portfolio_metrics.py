"""Portfolio metrics on series whose answers are known by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from ibf_core.calendar import trading_days
from ibf_core.portfolio.metrics import (
    benchmark_returns,
    drawdown,
    equal_weight_returns,
    portfolio_metrics,
    value_at_risk,
)


def returns_frame(net, gross=None, cost=None, turnover=None) -> pd.DataFrame:
    net = np.asarray(net, dtype=float)
    cost = np.zeros(len(net)) if cost is None else np.asarray(cost, dtype=float)
    days = trading_days("2021-01-04", "2022-12-30")[: len(net)]
    return pd.DataFrame({
        "portfolio": "p", "date": days.date, "gross_return": net + cost if gross is None else gross, "cost": cost,
        "net_return": net, "turnover": 0.5 if turnover is None else turnover, "nav": np.cumprod(1.0 + net),
        "exposure": 1.0,
    })


def test_return_volatility_sharpe_costs_and_hit_rate():
    net = np.tile([0.002, -0.001], 126)  # 252 sessions
    metrics = portfolio_metrics(returns_frame(net, cost=np.full(252, 0.0001)))
    assert metrics["sessions"] == 252
    assert metrics["annual_return"] == pytest.approx(np.prod(1 + net) - 1)  # one year: the total return
    assert metrics["annual_volatility"] == pytest.approx(np.std(net, ddof=1) * math.sqrt(252))
    assert metrics["sharpe"] == pytest.approx(net.mean() / np.std(net, ddof=1) * math.sqrt(252))
    assert metrics["cost_drag"] == pytest.approx(0.0252)
    assert metrics["annual_return_gross"] > metrics["annual_return"]
    assert (metrics["hit_rate"], metrics["turnover_mean"], metrics["annual_turnover"]) == (0.5, 0.5, pytest.approx(126.0))
    assert metrics["universe_information_ratio"] is None and metrics["benchmark_excess_annual_return"] is None


def test_max_drawdown_counts_from_the_start_and_from_each_peak():
    nav = pd.Series([1.1, 0.99, 1.2, 1.08])
    assert drawdown(nav).tolist() == pytest.approx([0.0, -0.1, 0.0, -0.1])
    assert drawdown(pd.Series([0.9, 1.0])).tolist() == pytest.approx([-0.1, 0.0])
    metrics = portfolio_metrics(returns_frame([0.1, -0.1, 0.2, -0.1]))  # nav 1.1, 0.99, 1.188, 1.0692
    assert metrics["max_drawdown"] == pytest.approx(-0.1)


def test_historical_var_and_expected_shortfall():
    returns = pd.Series([-0.05] * 2 + [-0.03] * 4 + [0.01] * 95)  # 101 sessions: the 5% quantile is the 6th worst
    assert value_at_risk(returns, 95) == pytest.approx((0.03, (2 * 0.05 + 4 * 0.03) / 6))
    assert value_at_risk(returns, 99) == pytest.approx((0.05, 0.05))
    metrics = portfolio_metrics(returns_frame(returns.to_numpy()))
    assert (metrics["var_95"], metrics["var_99"]) == pytest.approx((0.03, 0.05))


def test_excess_over_the_universe_and_a_benchmark():
    rng = np.random.default_rng(0)
    frame = returns_frame(rng.normal(0.001, 0.01, 200))
    dates = pd.to_datetime(frame["date"])
    universe = pd.Series(frame["net_return"].to_numpy() - 0.0002, index=dates)  # exactly 2 bps a day behind
    metrics = portfolio_metrics(frame, universe, benchmark=pd.Series(0.0, index=dates))
    assert metrics["universe_excess_annual_return"] == pytest.approx(0.0002 * 252)
    assert metrics["universe_information_ratio"] is None  # a constant excess has no tracking error
    assert metrics["benchmark_excess_annual_return"] == pytest.approx(frame["net_return"].mean() * 252)
    assert metrics["benchmark_information_ratio"] == pytest.approx(metrics["sharpe"])


def test_equal_weight_and_benchmark_series_from_bars():
    bars = pd.DataFrame({
        "symbol": ["A", "A", "A", "B", "B", "SPY", "SPY"],
        "date": pd.to_datetime(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-04", "2021-01-06", "2021-01-04", "2021-01-05"]),
        "adj_close": [10.0, 11.0, 11.0, 20.0, 19.0, 100.0, 101.0],
    })
    ew = equal_weight_returns(bars)
    assert ew.tolist() == pytest.approx([(0.1 + 0.01) / 2, 0.0])  # B is priced on no two consecutive sessions
    assert benchmark_returns(bars, "SPY").tolist() == pytest.approx([0.01])
    assert benchmark_returns(bars, "QQQ") is None
