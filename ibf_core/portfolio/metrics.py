"""Portfolio metrics of a backtest's daily returns: return, risk, excess over the universe and a benchmark, costs.

Conventions: 252 sessions a year; returns are fractions of NAV; the risk-free rate is 0; annual return is
geometric (``nav_end ** (252 / sessions) - 1``), excess returns and cost drag arithmetic (daily mean x 252);
VaR and expected shortfall are historical, of the daily net return, reported as positive losses; the maximum
drawdown is negative (NAV's largest fall from a previous peak, the start at 1.0 included). A value that cannot
be computed (too few sessions, no variation) is None.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

TRADING_DAYS = 252
RISK_LEVELS = (95, 99)
NO_VARIATION = 1e-12  # a daily standard deviation below this is rounding: no ratio


def _clean(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _ratio(series: pd.Series) -> float | None:
    """Annualised mean / standard deviation (a Sharpe or information ratio); None without variation."""
    if len(series) < 2:
        return None
    std = float(series.std(ddof=1))
    return _clean(float(series.mean()) / std * math.sqrt(TRADING_DAYS)) if std > NO_VARIATION else None


def drawdown(nav: pd.Series) -> pd.Series:
    """NAV / its running peak (the start at 1.0 counts as one) - 1: 0 at a new high, negative below."""
    peak = np.maximum(nav.cummax().to_numpy(dtype=float), 1.0)
    return pd.Series(nav.to_numpy(dtype=float) / peak - 1.0, index=nav.index)


def value_at_risk(returns: pd.Series, level: int) -> tuple[float | None, float | None]:
    """Historical VaR and expected shortfall at ``level`` percent: the loss not exceeded on ``level``% of the
    sessions (the (100 - level)% quantile, sign flipped) and the mean loss of the sessions at or beyond it."""
    values = returns.dropna().to_numpy(dtype=float)
    if len(values) == 0:
        return None, None
    cut = float(np.quantile(values, 1.0 - level / 100.0))
    return _clean(-cut), _clean(-float(values[values <= cut].mean()))


def equal_weight_returns(bars: pd.DataFrame) -> pd.Series:
    """Daily return of the equal-weighted universe: the mean adj_close return of the symbols priced both days."""
    dated = bars.assign(date=pd.to_datetime(bars["date"]).dt.normalize())
    wide = dated.pivot(index="date", columns="symbol", values="adj_close")
    return wide.pct_change(fill_method=None).mean(axis=1).dropna()


def benchmark_returns(bars: pd.DataFrame, symbol: str) -> pd.Series | None:
    """Daily adj_close return of ``symbol`` (e.g. ``IBF_BENCHMARK``), None when the bars do not hold it."""
    rows = bars[bars["symbol"] == symbol]
    if rows.empty:
        return None
    series = rows.assign(date=pd.to_datetime(rows["date"]).dt.normalize()).set_index("date")["adj_close"].sort_index()
    return series.pct_change(fill_method=None).dropna()


def _excess(net: pd.Series, gross: pd.Series, other: pd.Series | None, prefix: str) -> dict[str, float | None]:
    """Excess return over ``other`` (net and gross of costs), its tracking error and the information ratio."""
    keys = [f"{prefix}excess_annual_return", f"{prefix}excess_annual_return_gross", f"{prefix}tracking_error",
            f"{prefix}information_ratio"]
    if other is None:
        return dict.fromkeys(keys)
    other = other.copy()
    other.index = pd.to_datetime(other.index).normalize()
    joined = pd.concat({"net": net, "gross": gross, "other": other}, axis=1, join="inner").dropna()
    if joined.empty:
        return dict.fromkeys(keys)
    excess = joined["net"] - joined["other"]
    return dict(zip(keys, [
        _clean(float(excess.mean()) * TRADING_DAYS),
        _clean(float((joined["gross"] - joined["other"]).mean()) * TRADING_DAYS),
        _clean(float(excess.std(ddof=1)) * math.sqrt(TRADING_DAYS)) if len(excess) > 1 else None,
        _ratio(excess),
    ]))


def portfolio_metrics(
    returns: pd.DataFrame, universe: pd.Series | None = None, benchmark: pd.Series | None = None
) -> dict[str, float | int | None]:
    """The metrics of a ``portfolio_returns`` frame; ``universe`` / ``benchmark``: daily returns indexed by date."""
    data = returns.assign(date=pd.to_datetime(returns["date"]).dt.normalize()).set_index("date").sort_index()
    n = len(data)
    out: dict[str, float | int | None] = {"sessions": n}
    if n == 0:
        return out
    net, gross = data["net_return"].astype(float), data["gross_return"].astype(float)
    nav_end = float(data["nav"].iloc[-1])
    years = n / TRADING_DAYS
    out["total_return"] = _clean(nav_end - 1.0)
    out["annual_return"] = _clean(nav_end ** (1.0 / years) - 1.0) if nav_end > 0 else None
    gross_end = float(np.prod(1.0 + gross.to_numpy()))
    out["annual_return_gross"] = _clean(gross_end ** (1.0 / years) - 1.0) if gross_end > 0 else None
    out["annual_volatility"] = _clean(float(net.std(ddof=1)) * math.sqrt(TRADING_DAYS)) if n > 1 else None
    out["sharpe"] = _ratio(net)
    out["max_drawdown"] = _clean(float(drawdown(data["nav"]).min()))
    out["turnover_mean"] = _clean(float(data["turnover"].mean()))
    out["annual_turnover"] = _clean(float(data["turnover"].sum()) / years)
    out["cost_drag"] = _clean(float(data["cost"].mean()) * TRADING_DAYS)
    active = net[gross != 0]  # sessions that held positions
    out["hit_rate"] = _clean(float((active > 0).mean())) if len(active) else None
    out["exposure_mean"] = _clean(float(data["exposure"].mean()))
    for level in RISK_LEVELS:
        out[f"var_{level}"], out[f"es_{level}"] = value_at_risk(net, level)
    out.update(_excess(net, gross, universe, "universe_"))
    out.update(_excess(net, gross, benchmark, "benchmark_"))
    return out
