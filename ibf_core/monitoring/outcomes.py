"""Matured forecasts against what happened, and rolling performance per symbol and pooled."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.evaluation.metrics import cross_sectional_ic
from ibf_core.storage.tables import ViewSpec

POOLED = "*"  # the symbol value of the pooled (all-symbol) rows


def matured_outcomes(predictions: pd.DataFrame, bars: pd.DataFrame, as_of: dt.date | pd.Timestamp) -> pd.DataFrame:
    """Forecasts whose target session is on or before ``as_of``, with the realized price and return.

    Adds ``realized_price`` (close at the target session), ``realized_return`` (log total return from
    ``adj_close``), ``abs_error`` (of the log return), ``pct_error`` (|forecast price - realized| / realized),
    ``direction_hit`` (NaN when forecast or outcome is exactly 0), ``hit_80``, ``hit_95``.
    """
    if predictions.empty:
        return predictions.assign(realized_price=[], realized_return=[])
    p = predictions.copy()
    p["date"], p["target_date"] = pd.to_datetime(p["date"]), pd.to_datetime(p["target_date"])
    p = p[p["target_date"] <= pd.Timestamp(as_of)]
    prices = bars[["symbol", "date", "close", "adj_close"]].copy()
    prices["date"] = pd.to_datetime(prices["date"])
    origin = prices.rename(columns={"close": "_c0", "adj_close": "_a0"})
    target = prices.rename(columns={"date": "target_date", "close": "realized_price", "adj_close": "_a1"})
    out = p.merge(origin, on=["symbol", "date"], how="inner").merge(target, on=["symbol", "target_date"], how="inner")
    out["realized_return"] = np.log(out["_a1"] / out["_a0"])
    out["abs_error"] = (out["pred_return"] - out["realized_return"]).abs()
    out["pct_error"] = (out["pred_price"] - out["realized_price"]).abs() / out["realized_price"]
    signs = np.sign(out["pred_return"]) * np.sign(out["realized_return"])
    out["direction_hit"] = np.where(signs == 0, np.nan, (signs > 0).astype(float))
    for level in (80, 95):
        out[f"hit_{level}"] = out["realized_return"].between(out[f"lower_{level}"], out[f"upper_{level}"]).astype(float)
    return out.drop(columns=["_c0", "_a0", "_a1"]).reset_index(drop=True)


def served_order(outcomes: pd.DataFrame) -> pd.DataFrame:
    """``outcomes`` with ``served_order``: what ``rank`` ordered (``rank_score``; ``pred_return`` in rows written
    before the ranking was chosen apart from the point forecast), so the monitored rank IC is the served ranking's."""
    order = outcomes["pred_return"]
    if "rank_score" in outcomes.columns:
        order = pd.to_numeric(outcomes["rank_score"], errors="coerce").fillna(order)
    return outcomes.assign(served_order=order)


# The same outcome columns as ``matured_outcomes``, always current, for SQL users (a view: nothing to refresh).
# Declared here, gathered by ``ibf_core.catalog``; a change of the SQL reaches existing warehouses (its version).
FORECAST_OUTCOMES = ViewSpec(
    name="forecast_outcomes",
    description="Matured forecasts with the realized price and return (the columns of matured_outcomes); rank_score is "
    "what rank ordered (NULL in rows written before the ranking was chosen apart from pred_return).",
    sql="""
SELECT p.symbol, p.date, p.horizon, p.target_date, p.model_version, p.pred_return, p.pred_price, p.rank_score,
       b.close AS realized_price, ln(b.adj_close / a.adj_close) AS realized_return,
       abs(p.pred_return - ln(b.adj_close / a.adj_close)) AS abs_error,
       abs(p.pred_price - b.close) / b.close AS pct_error,
       CASE WHEN p.pred_return = 0 OR b.adj_close = a.adj_close THEN NULL
            ELSE CAST(sign(p.pred_return) = sign(ln(b.adj_close / a.adj_close)) AS DOUBLE) END AS direction_hit,
       CAST(ln(b.adj_close / a.adj_close) BETWEEN p.lower_80 AND p.upper_80 AS DOUBLE) AS hit_80,
       CAST(ln(b.adj_close / a.adj_close) BETWEEN p.lower_95 AND p.upper_95 AS DOUBLE) AS hit_95
FROM predictions p
JOIN market_bars a ON a.symbol = p.symbol AND a.date = p.date
JOIN market_bars b ON b.symbol = p.symbol AND b.date = p.target_date
""",
)


def window_start(as_of: dt.date | pd.Timestamp, sessions: int) -> pd.Timestamp:
    """The first session of the ``sessions``-session window ending at ``as_of``."""
    days = all_sessions()
    end = int(days.searchsorted(pd.Timestamp(as_of), side="right")) - 1
    return days[max(end - sessions + 1, 0)]


def rolling_performance(outcomes: pd.DataFrame, as_of: dt.date | pd.Timestamp, window: int, horizon: int) -> pd.DataFrame:
    """One row per symbol plus a pooled row (symbol ``*``): metrics of the forecasts at ``horizon`` that matured
    in the ``window`` sessions ending at ``as_of``.

    Columns: ``symbol, n, mae, mape, rmse, mase`` (MAE / the random walk's MAE, i.e. mean |realized|), ``da``,
    ``coverage_80, coverage_95, rank_ic`` (pooled row only: mean per-origin Spearman IC across symbols).
    """
    first = window_start(as_of, window)
    part = outcomes[(outcomes["horizon"] == horizon) & (outcomes["target_date"] >= first) & (outcomes["target_date"] <= pd.Timestamp(as_of))]
    rows = []
    for symbol, group in [*part.groupby("symbol"), (POOLED, part)]:
        naive = group["realized_return"].abs().mean()
        rows.append(
            {
                "symbol": symbol,
                "n": len(group),
                "mae": group["abs_error"].mean(),
                "mape": group["pct_error"].mean(),
                "rmse": float(np.sqrt(np.mean((group["pred_return"] - group["realized_return"]) ** 2))) if len(group) else np.nan,
                "mase": group["abs_error"].mean() / naive if naive and naive > 0 else np.nan,
                "da": group["direction_hit"].mean(),
                "coverage_80": group["hit_80"].mean(),
                "coverage_95": group["hit_95"].mean(),
                "rank_ic": np.nan,
            }
        )
    out = pd.DataFrame(rows, columns=["symbol", "n", "mae", "mape", "rmse", "mase", "da", "coverage_80", "coverage_95", "rank_ic"])
    if len(part):
        ic = cross_sectional_ic(served_order(part), "served_order", "realized_return", "spearman")
        out.loc[out["symbol"] == POOLED, "rank_ic"] = ic.mean() if len(ic) else np.nan
    return out


# ----- drift scoring -----------------------------------------------------------------------------------------
