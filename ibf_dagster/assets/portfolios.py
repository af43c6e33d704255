"""``portfolio_weights`` and ``portfolio_returns``: the configured portfolios (IBF_PORTFOLIOS) backtested on the
stored predictions and bars, one step writing both tables, with their checks.

Partitioned by date like ``predictions`` (whose partitions of a date it follows, eagerly). A portfolio's path
depends on its whole history, so every materialization re-simulates each portfolio from its first stored origin
through the newest stored bar and replaces its rows (``ibf_core.portfolio.stored.refresh_portfolio``): a date's
rows always equal a simulation over the data up to that date, and backfilling an old date rewrites the later rows
from the same simulation (``sessions_changed`` says how many stored sessions that changed)."""

import dagster as dg
import pandas as pd

from ibf_core.portfolio.checks import check_exposure, check_leverage, check_nav, check_priced
from ibf_core.portfolio.metrics import drawdown
from ibf_core.portfolio.spec import parse_portfolios
from ibf_core.portfolio.stored import (
    PORTFOLIO_RETURNS,
    PORTFOLIO_WEIGHTS,
    cost_model,
    portfolio_figures,
    refresh_portfolio,
)
from ibf_core.report import line_plot_markdown, markdown_table
from ibf_core.settings import Settings
from ibf_core.storage.tables import MARKET_BARS
from ibf_dagster.metadata import OWNERS, check_result, column_schema, partition_result, plot_if_small
from ibf_dagster.partitions import date_partitions
from ibf_dagster.resources import SettingsResource, WarehouseResource

ERROR = dg.AssetCheckSeverity.ERROR
WEIGHTS, RETURNS = dg.AssetKey(PORTFOLIO_WEIGHTS.name), dg.AssetKey(PORTFOLIO_RETURNS.name)
CHECKS = {
    "weights_sum_to_exposure": (WEIGHTS, "Each session's |weights| sum to its exposure; a full rebalance sums to "
                                "the strategy's leverage (long-short nets to 0) (ERROR)"),
    "leverage_within_limit": (WEIGHTS, "Exposure after a full trade within the strategy's leverage, never above 4 (ERROR)"),
    "weights_priced": (WEIGHTS, "No weight on a symbol without a price: held names are priced that session, or "
                       "held at their last price and say so (ERROR)"),
    "nav_finite": (RETURNS, "Every return and NAV finite, NAV > 0 and compounding net_return (ERROR)"),
}
SHOWN_METRICS = ("annual_return", "annual_volatility", "sharpe", "universe_excess_annual_return",
                 "universe_information_ratio", "benchmark_excess_annual_return", "benchmark_information_ratio",
                 "max_drawdown", "annual_turnover", "cost_drag", "hit_rate", "var_95", "es_95", "var_99", "es_99")


def build_portfolios(settings: Settings) -> dg.AssetsDefinition:
    common = {"owners": OWNERS, "tags": {"layer": "portfolios", "domain": "portfolios"}, "kinds": {"duckdb", "parquet", "python"},
              "automation_condition": dg.AutomationCondition.eager(), "group_name": "portfolios"}
    specs = [
        dg.AssetSpec(WEIGHTS, description=(
            "Per configured portfolio (IBF_PORTFOLIOS), session and symbol: the weight held after the close, the "
            "origin and target of the newest rebalance and why (rebalance, sold, hold, no price); from the honest "
            "backtest of the stored predictions (trades at the next close, IB costs)."),
            deps=["predictions", "market_bars"],
            metadata={"dagster/column_schema": column_schema(PORTFOLIO_WEIGHTS), "dagster/table_name": PORTFOLIO_WEIGHTS.name},
            **common),
        dg.AssetSpec(RETURNS, description=(
            "Per configured portfolio and session: gross return (the previous weights x adj_close returns), cost as "
            "a fraction of NAV, net return, turnover, NAV (from 1.0) and gross exposure; metrics in the metadata."),
            deps=["predictions", "market_bars"],
            metadata={"dagster/column_schema": column_schema(PORTFOLIO_RETURNS), "dagster/table_name": PORTFOLIO_RETURNS.name},
            **common),
    ]

    @dg.multi_asset(
        name="portfolios",
        specs=specs,
        check_specs=[dg.AssetCheckSpec(n, asset=key, description=d, blocking=True) for n, (key, d) in CHECKS.items()],
        partitions_def=date_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool="duckdb",
    )
    def portfolios(context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource):
        settings = ibf.get()
        store = warehouse.get()
        strategies = parse_portfolios(settings.portfolios)
        costs = cost_model(settings.portfolio_capital, settings.portfolio_slippage_bps)
        # One simulation per portfolio over everything stored (its own rows before and after this partition too).
        runs = [refresh_portfolio(store, name, spec, costs) for name, spec in strategies.items()]
        weights = pd.concat([r.simulation.weights for r in runs], ignore_index=True).assign(
            date=lambda f: pd.to_datetime(f["date"]))
        returns = pd.concat([r.simulation.returns for r in runs], ignore_index=True).assign(
            date=lambda f: pd.to_datetime(f["date"]))
        first = weights["date"].min() if len(weights) else None
        bars = (store.read(MARKET_BARS, start=first, columns=["symbol", "date", "adj_close"]) if first is not None
                else pd.DataFrame({"symbol": [], "date": pd.to_datetime([]), "adj_close": []}))
        figures = {r.name: portfolio_figures(store, r.name, settings.benchmark) for r in runs}
        metrics = pd.DataFrame([{"portfolio": n, **{k: f["metrics"].get(k) for k in SHOWN_METRICS}} for n, f in figures.items()])
        window = context.partition_time_window if context.has_partition_key else None
        shared = {
            "portfolios": dg.MetadataValue.json({n: s.as_dict() for n, s in strategies.items()}),
            "sessions_changed": dg.MetadataValue.json({r.name: r.sessions_changed for r in runs}),
            "first_changed": dg.MetadataValue.json({r.name: str(r.first_changed) if r.first_changed else None for r in runs}),
            "newest_session": str(returns["date"].max().date()) if len(returns) else "",
            "partition_end": str(pd.Timestamp(window.end).date()) if window is not None else "",
        }
        yield partition_result(
            context,
            asset_key=WEIGHTS,
            metadata={"dagster/row_count": len(weights), **shared,
                      "current_weights": dg.MetadataValue.md(markdown_table(_current(weights), max_rows=30))},
            check_results=[
                check_result(check_exposure(weights, returns, strategies), ERROR, WEIGHTS),
                check_result(check_leverage(returns, weights, strategies), ERROR, WEIGHTS),
                check_result(check_priced(weights, bars), ERROR, WEIGHTS),
            ],
        )
        yield partition_result(
            context,
            asset_key=RETURNS,
            metadata={"dagster/row_count": len(returns), **shared,
                      "metrics": dg.MetadataValue.md(markdown_table(metrics, max_rows=20)),
                      "metrics_json": dg.MetadataValue.json({n: f["metrics"] for n, f in figures.items()}),
                      "nav_plot": plot_if_small(context, lambda: line_plot_markdown(returns, "date", "nav", "portfolio", "NAV")),
                      "drawdown_plot": plot_if_small(context, lambda: _drawdown_plot(returns))},
            check_results=[check_result(check_nav(returns), ERROR, RETURNS)],
        )

    return portfolios


def _current(weights: pd.DataFrame) -> pd.DataFrame:
    """The newest session's non-zero weights of each portfolio, largest first."""
    if weights.empty:
        return weights
    newest = weights.groupby("portfolio")["date"].transform("max")
    rows = weights[(weights["date"] == newest) & (weights["weight"] != 0)]
    return rows.sort_values(["portfolio", "weight"], ascending=[True, False])[["portfolio", "date", "symbol", "weight", "reason"]]


def _drawdown_plot(returns: pd.DataFrame) -> str:
    parts = [g.assign(drawdown=drawdown(g["nav"]).to_numpy()) for _, g in returns.groupby("portfolio")]
    frame = pd.concat(parts, ignore_index=True) if parts else returns.assign(drawdown=[])
    return line_plot_markdown(frame, "date", "drawdown", "portfolio", "Drawdown from the running peak")


__all__ = ["build_portfolios"]
