"""portfolio_weights / portfolio_returns through the real Dagster instance on a small warehouse of planted
predictions: the checks, an independent recomputation of the returns, backfilling an old date, no predictions."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers.portfolio import planted_panel
from typer.testing import CliRunner

from ibf_core.portfolio.spec import parse_portfolios
from ibf_core.portfolio.orders import current_holdings
from ibf_core.portfolio.stored import cost_model, read_portfolio, simulate_stored
from ibf_core.settings import get_settings
from ibf_core.storage.tables import MARKET_BARS, PREDICTIONS
from ibf_core.storage.warehouse import Warehouse
from ibf_dagster.cli import app

PORTFOLIOS = {"top": {"strategy": "topk", "k": 3}, "ls": {"strategy": "long_short", "k": 2},
              "slow": {"strategy": "topk_dropout", "k": 4, "n_drop": 1, "horizon": 5}}
CHECKS = {"weights_sum_to_exposure": True, "leverage_within_limit": True, "weights_priced": True, "nav_finite": True}
ASSETS = "portfolio_weights,portfolio_returns"


def _predictions(preds: pd.DataFrame) -> pd.DataFrame:
    """Planted forecasts as stored ``predictions`` rows (the columns a real model writes; at horizons 1 and 5)."""
    rows = pd.concat([preds, preds.assign(horizon=5)], ignore_index=True)
    return rows.assign(
        target_date=rows["date"], close=1.0, pred_price=1.0, lower_80=-0.1, upper_80=0.1, lower_95=-0.2, upper_95=0.2,
        price_lower_80=0.9, price_upper_80=1.1, price_lower_95=0.8, price_upper_95=1.2, pred_drift=0.0,
        rank=rows.groupby(["date", "horizon"])["rank_score"].rank(ascending=False, method="first").astype("int64"),
        member_used="ensemble", model_version="1", model_cutoff=pd.Timestamp("2020-12-31"),
    )


@pytest.fixture
def world(monkeypatch, ibf_home, instance):
    """10 planted symbols, 2021-01-04..2021-06-30 (two bars of S001 missing), monthly partitions, three portfolios;
    bars only: the predictions are written by the test."""
    bars, preds, _ = planted_panel(n_symbols=10, start="2021-01-04", end="2021-06-30", seed=3)
    gap = (bars["symbol"] == "S001") & bars["date"].isin(pd.to_datetime(["2021-03-10", "2021-03-11"]))
    bars = bars[~gap].assign(source="csv")
    symbols = sorted(bars["symbol"].unique())
    for name, value in {"IBF_UNIVERSE": ",".join(symbols), "IBF_HISTORY_START": "2021-01-01",
                        "IBF_DATE_PARTITIONS": "month", "IBF_PORTFOLIOS": json.dumps(PORTFOLIOS),
                        "IBF_BENCHMARK": "S000"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    store = Warehouse(ibf_home)
    store.ensure_all_tables()
    store.replace_slice(MARKET_BARS, bars, symbols, "2021-01-04", "2021-06-30")
    return {"settings": get_settings(), "store": store, "bars": bars, "preds": _predictions(preds), "symbols": symbols}


def _recompute(weights: pd.DataFrame, bars: pd.DataFrame) -> pd.DataFrame:
    """gross_return from the stored weights and adj_close alone: the previous session's weights x each name's return
    since its last known price (a missing bar: 0 that day, caught up at the next price)."""
    prices = bars.pivot(index="date", columns="symbol", values="adj_close").sort_index()
    held = weights.pivot(index="date", columns="symbol", values="weight").fillna(0.0)
    dates = held.index.union(prices.index[prices.index >= held.index.min()])
    known = prices.ffill().reindex(dates)
    moved = (known / known.shift(1) - 1.0).where(prices.reindex(dates).notna(), 0.0).fillna(0.0)
    previous = held.reindex(dates).fillna(0.0).shift(1).fillna(0.0)
    symbols = previous.columns
    return (previous * moved.reindex(columns=symbols).fillna(0.0)).sum(axis=1).rename("gross")


def test_no_predictions_is_one_clear_error(world):
    result = CliRunner().invoke(app, ["backfill", "--assets", ASSETS, "--start", "2021-06-01", "--end", "2021-06-30"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1, result.output
    assert errors[0].startswith("error: portfolio 'top': no predictions at horizon 1 in the warehouse yet"), errors[0]
    assert "ibf backfill --assets predictions" in errors[0] and "Traceback" not in result.output
    assert world["store"].query("SELECT count(*) AS n FROM portfolio_returns")["n"].iloc[0] == 0


def test_materialize_check_recompute_and_backfill_an_old_date(world):
    from ibf_dagster.runner import backfill

    settings, store, bars = world["settings"], world["store"], world["bars"]
    store.replace_slice(PREDICTIONS, world["preds"], world["symbols"], "2021-01-04", "2021-06-30")
    specs, costs = parse_portfolios(settings.portfolios), cost_model(settings.portfolio_capital, settings.portfolio_slippage_bps)

    # One old monthly partition (March): the rows of every session are one simulation over everything stored.
    runs = backfill(settings, None, "2021-03-01", "2021-03-31", "portfolio_returns", None, None)
    assert len(runs) == 1 and runs[0].success, runs[0].error
    assert runs[0].checks == CHECKS
    for name, spec in specs.items():
        weights, returns = read_portfolio(store, name)
        assert returns["date"].max() == pd.Timestamp("2021-06-30") and len(returns) > 100
        # March's rows equal a simulation over the data up to March only (the backtest reads nothing later).
        upto = simulate_stored(store, name, spec, costs, end=pd.Timestamp("2021-03-31").date())
        march = returns[returns["date"] <= "2021-03-31"].reset_index(drop=True)
        expected = upto.returns.assign(date=pd.to_datetime(upto.returns["date"]))
        pd.testing.assert_frame_equal(march, expected[march.columns], check_exact=False, rtol=1e-12, atol=1e-15)

        # Independent recomputation: gross from weights and adj_close, net = gross - cost, NAV compounds net.
        gross = _recompute(weights, bars).reindex(returns["date"]).to_numpy()
        np.testing.assert_allclose(returns["gross_return"], gross, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(returns["net_return"], returns["gross_return"] - returns["cost"], rtol=0, atol=1e-15)
        np.testing.assert_allclose(returns["nav"], np.cumprod(1.0 + returns["net_return"]), rtol=1e-12)
        assert (returns["cost"] >= 0).all() and (returns.loc[returns["turnover"] > 0, "cost"] > 0).all()
    _, slow = read_portfolio(store, "slow")
    assert (slow["turnover"] > 0).sum() < (read_portfolio(store, "top")[1]["turnover"] > 0).sum()  # every 5 sessions
    for name in specs:  # a name held over its missing bars is held at its last price, and says so
        held = read_portfolio(store, name)[0]
        gap = held[(held["symbol"] == "S001") & held["date"].isin(pd.to_datetime(["2021-03-10", "2021-03-11"]))]
        assert gap["reason"].str.startswith("no price").all(), gap
    # `ibf orders` starts from what the assets stored: the newest session's non-zero weights.
    weights = read_portfolio(store, "top")[0]
    newest = weights[(weights["date"] == weights["date"].max()) & (weights["weight"] != 0)]
    holdings = current_holdings(store, "top")
    assert holdings.date == newest["date"].iloc[0].date() and holdings.source.startswith("paper portfolio weights of")
    assert holdings.weights.sort_index().to_dict() == newest.set_index("symbol")["weight"].sort_index().to_dict()

    # Materializing again changes nothing; the metadata says so.
    before = {n: read_portfolio(store, n) for n in specs}
    again = backfill(settings, None, "2021-06-01", "2021-06-30", "portfolio_returns", None, None)
    assert again[0].success and again[0].checks == CHECKS
    for name in specs:
        pd.testing.assert_frame_equal(before[name][1], read_portfolio(store, name)[1])
    meta = _latest_metadata(settings, "portfolio_returns")
    assert meta["sessions_changed"] == {n: 0 for n in specs} and meta["newest_session"] == "2021-06-30"
    assert {"sharpe", "max_drawdown", "var_99", "benchmark_information_ratio"} <= set(meta["metrics_json"]["top"])

    # Backfilling an old date after its predictions changed rewrites the later sessions too: still one simulation.
    preds = world["preds"].copy()
    feb = preds["date"].between("2021-02-01", "2021-02-26")
    preds.loc[feb, ["rank_score", "pred_return"]] *= -1.0
    store.replace_slice(PREDICTIONS, preds[feb], world["symbols"], "2021-02-01", "2021-02-26")
    redo = backfill(settings, None, "2021-02-01", "2021-02-28", "portfolio_returns", None, None)
    assert redo[0].success and redo[0].checks == CHECKS
    meta = _latest_metadata(settings, "portfolio_returns")
    assert meta["sessions_changed"]["top"] > 80 and meta["first_changed"]["top"] >= "2021-02-02"
    for name, spec in specs.items():
        full = simulate_stored(store, name, spec, costs)
        stored = read_portfolio(store, name)[1]
        pd.testing.assert_frame_equal(stored, full.returns.assign(date=pd.to_datetime(full.returns["date"])),
                                      check_exact=False, rtol=1e-12)
    june_before, june_after = before["top"][1], read_portfolio(store, "top")[1]
    assert not np.allclose(june_before["nav"].iloc[-1], june_after["nav"].iloc[-1])


def _latest_metadata(settings, asset: str) -> dict:
    import dagster as dg

    from ibf_dagster.instance import get_instance

    event = get_instance(settings).get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
