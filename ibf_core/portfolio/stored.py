"""Portfolios in the warehouse: the ``portfolio_weights`` and ``portfolio_returns`` tables, the backtest of a
configured portfolio over the stored predictions and bars, and the reads the API and the metrics serve.

One partition (file) per portfolio and table. A materialization re-simulates the portfolio from its first stored
origin through the newest stored bar and replaces both files in one write: the tables always hold one simulation
over what the warehouse holds, so a session's rows equal a simulation over the data up to that session (the
backtest reads nothing later, see ``simulate``) and backfilling an old date can leave no later row inconsistent.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ibf_core.calendar import trading_days
from ibf_core.portfolio.costs import CostModel
from ibf_core.portfolio.metrics import benchmark_returns, drawdown, equal_weight_returns, portfolio_metrics
from ibf_core.portfolio.simulate import RETURN_COLUMNS, WEIGHT_COLUMNS, Simulation, simulate
from ibf_core.portfolio.spec import Strategy
from ibf_core.storage.interface import TableStore, to_arrow
from ibf_core.storage.tables import MARKET_BARS, PREDICTIONS, Column, TableSpec

# The trailing 20-bar windows of the spread and liquidity estimates need bars before the first origin.
BARS_BEFORE_FIRST_ORIGIN = dt.timedelta(days=120)

PORTFOLIO_WEIGHTS = TableSpec(
    name="portfolio_weights",
    description="Weights of each configured portfolio (IBF_PORTFOLIOS) per session after its close, from the "
    "backtest of the stored predictions (docs/portfolios.md).",
    key=("portfolio", "date", "symbol"),
    files="<PORTFOLIO>.parquet",
    columns=(
        Column("portfolio", pa.string(), "Portfolio name (a key of IBF_PORTFOLIOS)"),
        Column("date", pa.date32(), "NYSE session: the weight held from its close to the next close"),
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("weight", pa.float64(), "Fraction of NAV after the session's close (negative: short)"),
        Column("origin", pa.date32(), "Origin of the predictions that set the current targets", optional=True),
        Column("target_weight", pa.float64(), "Target weight of the newest rebalance"),
        Column("reason", pa.string(), "rebalance, sold, hold, or why a name was not priced / traded"),
    ),
)

PORTFOLIO_RETURNS = TableSpec(
    name="portfolio_returns",
    description="Daily return, cost, turnover, NAV (1.0 at the start) and gross exposure of each configured portfolio.",
    key=("portfolio", "date"),
    files="<PORTFOLIO>.parquet",
    columns=(
        Column("portfolio", pa.string(), "Portfolio name (a key of IBF_PORTFOLIOS)"),
        Column("date", pa.date32(), "NYSE session"),
        Column("gross_return", pa.float64(), "Sum of the previous session's weights x each name's adj_close return"),
        Column("cost", pa.float64(), "Commission, fees, half spread and slippage of the session's trades / previous NAV"),
        Column("net_return", pa.float64(), "gross_return - cost"),
        Column("turnover", pa.float64(), "Sum |new weight - drifted weight| of the session's trades"),
        Column("nav", pa.float64(), "Net asset value, compounding net_return from 1.0"),
        Column("exposure", pa.float64(), "Sum |weight| after the session"),
    ),
)

PORTFOLIO_TABLES = (PORTFOLIO_WEIGHTS, PORTFOLIO_RETURNS)


class NoPredictionsError(ValueError):
    """A portfolio was asked for before the warehouse holds predictions at its horizon."""


@dataclass(frozen=True)
class StoredRun:
    """What one re-simulation of a portfolio wrote, and how it compares with what was stored before."""

    name: str
    simulation: Simulation
    sessions_changed: int  # stored sessions whose return row differs (or is new, or was dropped)
    first_changed: dt.date | None


def cost_model(capital: float, slippage_bps: float) -> CostModel:
    return CostModel(capital=capital, slippage_bps=slippage_bps)


def read_inputs(store: TableStore, spec: Strategy, end: dt.date | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions at the spec's horizon, bars) up to ``end`` (all when None); NoPredictionsError when none."""
    scores = sorted({"rank_score", "pred_return", spec.score})
    sql = f"SELECT symbol, date, horizon, {', '.join(scores)} FROM {PREDICTIONS.name} WHERE horizon = ?"
    preds = store.query(sql + (" AND date <= ?" if end else ""), [spec.horizon, end] if end else [spec.horizon])
    if preds.empty:
        raise NoPredictionsError(
            f"no predictions at horizon {spec.horizon} in the warehouse{f' up to {end}' if end else ''} yet: "
            "materialize predictions first (ibf train, then ibf backfill --assets predictions)"
        )
    first = pd.Timestamp(preds["date"].min()).date()
    bars = store.read(MARKET_BARS, start=first - BARS_BEFORE_FIRST_ORIGIN, end=end)
    return preds, bars


def sectors(store: TableStore) -> pd.Series:
    """The newest recorded sector per symbol (``fundamentals``), for sector-neutral portfolios."""
    frame = store.query("SELECT symbol, arg_max(sector, date) AS sector FROM fundamentals GROUP BY symbol")
    return frame.set_index("symbol")["sector"]


def simulate_stored(store: TableStore, name: str, spec: Strategy, costs: CostModel,
                    end: dt.date | None = None) -> Simulation:
    """The backtest of portfolio ``name`` over the stored predictions and bars up to ``end`` (all when None)."""
    try:
        preds, bars = read_inputs(store, spec, end)
    except NoPredictionsError as exc:
        raise NoPredictionsError(f"portfolio {name!r}: {exc}") from None
    sector_codes = sectors(store) if spec.sector_neutral else None
    first = pd.Timestamp(preds["date"].min()).date()
    newest = pd.Timestamp(bars["date"].max()).date() if len(bars) else first
    sessions = trading_days(first, max(first, newest))
    return simulate(preds, bars, spec, costs, portfolio=name, sectors=sector_codes, sessions=sessions)


def read_portfolio(store: TableStore, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stored (weights, returns) of portfolio ``name``, sorted by date (empty frames when none)."""
    out = []
    for spec in PORTFOLIO_TABLES:
        table = store.read_partitions(spec, [name])
        frame = table.to_pandas() if table.num_rows else spec.schema.empty_table().to_pandas()
        frame["date"] = pd.to_datetime(frame["date"])
        out.append(frame.sort_values(list(spec.key), kind="stable").reset_index(drop=True))
    return out[0], out[1]


def stored_portfolios(store: TableStore) -> list[str]:
    """Names of the portfolios with stored returns."""
    return store.partitions(PORTFOLIO_RETURNS)


def _changed(before: pd.DataFrame, after: pd.DataFrame) -> tuple[int, dt.date | None]:
    """Sessions whose return row differs between two ``portfolio_returns`` frames, and the first of them."""
    values = [c for c in RETURN_COLUMNS if c not in ("portfolio", "date")]
    old = before.assign(date=pd.to_datetime(before["date"])).set_index("date")[values]
    new = after.assign(date=pd.to_datetime(after["date"])).set_index("date")[values]
    joined = old.join(new, how="outer", lsuffix="_old", rsuffix="_new")
    a = joined[[f"{c}_old" for c in values]].to_numpy(dtype=float)
    b = joined[[f"{c}_new" for c in values]].to_numpy(dtype=float)
    differs = ~np.isclose(a, b, rtol=0.0, atol=1e-12).all(axis=1)
    dates = joined.index[differs]
    return int(differs.sum()), (dates.min().date() if len(dates) else None)


def refresh_portfolio(store: TableStore, name: str, spec: Strategy, costs: CostModel) -> StoredRun:
    """Re-simulate portfolio ``name`` over everything stored and replace its rows in both tables in one write."""
    sim = simulate_stored(store, name, spec, costs)
    _, before = read_portfolio(store, name)
    changed, first = _changed(before, sim.returns)
    weights = to_arrow(PORTFOLIO_WEIGHTS, sim.weights)
    returns = to_arrow(PORTFOLIO_RETURNS, sim.returns)

    def build(tx) -> None:
        tx.put(PORTFOLIO_WEIGHTS, name, weights)
        tx.put(PORTFOLIO_RETURNS, name, returns)

    store.write([(PORTFOLIO_WEIGHTS, name), (PORTFOLIO_RETURNS, name)], build)
    return StoredRun(name, sim, changed, first)


def portfolio_figures(store: TableStore, name: str, benchmark: str) -> dict[str, object]:
    """The stored portfolio's NAV series with its drawdown, current weights and ``portfolio_metrics`` (over the
    equal-weighted universe of the stored bars and the ``benchmark`` symbol's bars when stored)."""
    weights, returns = read_portfolio(store, name)
    if returns.empty:
        return {"latest_date": None, "nav": None, "series": returns, "weights": weights, "metrics": {"sessions": 0}}
    first, last = returns["date"].min().date(), returns["date"].max().date()
    bars = store.read(MARKET_BARS, start=first - dt.timedelta(days=10), end=last, columns=["symbol", "date", "adj_close"])
    series = returns.assign(drawdown=drawdown(returns["nav"]).to_numpy())
    current = weights[(weights["date"] == returns["date"].max()) & (weights["weight"] != 0)]
    metrics = portfolio_metrics(returns, equal_weight_returns(bars), benchmark_returns(bars, benchmark))
    return {"latest_date": last, "nav": float(returns["nav"].iloc[-1]), "series": series, "weights": current,
            "metrics": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}


def newest_rows(store: TableStore) -> pd.DataFrame:
    """Per stored portfolio its newest session: nav, drawdown from its running peak, turnover, exposure."""
    frame = store.query(
        f"SELECT portfolio, date, nav, turnover, exposure, "
        f"nav / greatest(max(nav) OVER (PARTITION BY portfolio ORDER BY date), 1.0) - 1 AS drawdown "
        f"FROM {PORTFOLIO_RETURNS.name} QUALIFY row_number() OVER (PARTITION BY portfolio ORDER BY date DESC) = 1 "
        f"ORDER BY portfolio"
    )
    return frame


__all__ = ["PORTFOLIO_RETURNS", "PORTFOLIO_TABLES", "PORTFOLIO_WEIGHTS", "NoPredictionsError", "StoredRun",
           "WEIGHT_COLUMNS", "newest_rows", "portfolio_figures", "read_portfolio", "refresh_portfolio", "simulate_stored",
           "stored_portfolios"]
