"""Strategy backtests in ``ibf evaluate`` (ibf_core.evaluation.portfolios) on the planted-signal panel: a forecaster
that knows the signal beats a random one net of costs, the JSON section's shape, the report's table and plot, and
the errors (an unknown portfolio, an in-sample forecast)."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers.portfolio import planted_panel
from typer.testing import CliRunner

from ibf_core.calendar import all_sessions
from ibf_core.evaluation.factors import factor_table
from ibf_core.evaluation.portfolios import choose_portfolios, evaluate_portfolios, out_of_sample
from ibf_core.evaluation.walkforward import WalkForwardResult, write_outputs
from ibf_core.portfolio.spec import Strategy

TEST_DAYS = 60
SPEC = {"topk": Strategy.parse({"strategy": "topk", "k": 0.1, "k_min": 2}, "topk")}


def walk_forward_forecasts(predictions: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """The walk-forward's long forecasts on the last ``TEST_DAYS`` origins: ``oracle`` (the planted predictions, also
    the ensemble), ``random`` and ``naive`` (0), in two folds whose cut-offs precede their origins."""
    dates = np.sort(predictions["date"].unique())[-TEST_DAYS:]
    rows = predictions[predictions["date"].isin(dates)].reset_index(drop=True)
    sessions = all_sessions()
    folds = np.where(rows["date"] < dates[TEST_DAYS // 2], 1, 2)
    firsts = {1: dates[0], 2: dates[TEST_DAYS // 2]}
    cutoffs = {f: sessions[sessions.get_loc(pd.Timestamp(d)) - 3] for f, d in firsts.items()}
    base = rows[["symbol", "date", "horizon"]].assign(fold=folds, model_cutoff=[cutoffs[f] for f in folds], realized=np.nan)
    rng = np.random.default_rng(seed)
    members = {
        "naive": np.zeros(len(rows)),
        "random": rng.normal(0.0, 0.01, len(rows)),
        "oracle": rows["pred_return"].to_numpy(),
        "ensemble": rows["pred_return"].to_numpy(),
    }
    frames = [base.assign(member=m, pred=p) for m, p in members.items()]
    frames[-1]["rank_score"] = rows["rank_score"].to_numpy()
    return pd.concat(frames, ignore_index=True)


def factors_of(bars: pd.DataFrame) -> pd.DataFrame:
    """The textbook factors of the planted bars (the panel columns ``factor_table`` reads)."""
    panel = bars[["symbol", "date", "adj_close"]].assign(date=pd.to_datetime(bars["date"]))
    panel["session"] = all_sessions().get_indexer(panel["date"])
    return factor_table(panel)


@pytest.fixture(scope="module")
def planted():
    bars, predictions, _ = planted_panel(n_symbols=30, start="2021-01-04", end="2021-06-30", lead=2)
    return bars, walk_forward_forecasts(predictions), factors_of(bars)


@pytest.fixture(scope="module")
def evaluation(planted):
    bars, forecasts, factors = planted
    return evaluate_portfolios(forecasts, factors, bars, SPEC, benchmark="S000")


def test_a_forecaster_that_knows_the_signal_beats_a_random_one_net_of_costs(evaluation):
    runs = evaluation.results["topk"]["forecasters"]
    oracle, random = runs["oracle"], runs["random"]
    # k = 3 of 30 names earn the planted +50 bps a session; costs (half the 10 bps spread, IB's commission) are charged
    assert oracle["net"]["cost_drag"] > 0 and random["net"]["cost_drag"] > 0
    assert oracle["net"]["annual_return"] < oracle["net"]["annual_return_gross"]
    assert oracle["net"]["total_return"] > 0.15 and oracle["net"]["sharpe"] > 3
    assert oracle["net"]["annual_return"] > random["net"]["annual_return"] + 0.5
    assert oracle["net"]["universe_excess_annual_return"] > 0.5 > random["net"]["universe_excess_annual_return"]
    # the ensemble's frame is the oracle's (as the predictions table would hold it): the same backtest
    assert runs["ensemble"]["net"] == oracle["net"]


def test_a_forecast_of_the_trade_session_itself_earns_nothing():
    """lead=1 forecasts the session the portfolio enters at its close: an honest backtest cannot earn it."""
    bars, predictions, _ = planted_panel(n_symbols=30, start="2021-01-04", end="2021-06-30", lead=1)
    result = evaluate_portfolios(walk_forward_forecasts(predictions), None, bars, SPEC)
    gross = result.results["topk"]["forecasters"]["oracle"]["gross"]
    sessions = result.results["topk"]["forecasters"]["oracle"]["sessions"]
    # 3 names of 1% daily noise: the mean daily return's standard error is about 0.075%; the planted edge is 0.5%
    assert abs((1 + gross["total_return"]) ** (1 / sessions) - 1) < 0.003


def test_the_section_holds_every_forecaster_and_factor_with_counts_net_and_gross(evaluation, planted):
    entry = evaluation.results["topk"]
    assert entry["strategy"] == SPEC["topk"].as_dict() and entry["test_origins"] == TEST_DAYS
    assert set(entry["forecasters"]) == {"naive", "random", "oracle", "ensemble"}
    assert set(entry["factors"]) == {"reversal_1", "reversal_5", "momentum_20", "momentum_12_1"}
    assert entry["factors"]["momentum_12_1"] == {"available": False, "reason": "no score at any test origin"}
    assert entry["benchmark"] == "S000"
    for run in [*entry["forecasters"].values(), *(v for k, v in entry["factors"].items() if k != "momentum_12_1")]:
        assert run["available"] and run["rebalances"] == TEST_DAYS and run["rebalances_skipped"] == 0
        # from the first trade (the session after the first origin) through the last holding session
        assert run["sessions"] == TEST_DAYS + 1
        assert {"annual_return", "annual_return_gross", "sharpe", "cost_drag", "var_99", "benchmark_information_ratio"} <= set(run["net"])
        assert run["gross"]["annual_return"] == pytest.approx(run["net"]["annual_return_gross"])
        assert run["costs_usd"]["commission"] > 0 and run["costs_usd"]["spread"] > 0
    curves = evaluation.nav["topk"]
    assert list(curves.columns) == ["ensemble", "naive", "oracle", "random", "factor:reversal_1", "factor:reversal_5",
                                    "factor:momentum_20"]
    assert len(curves) == TEST_DAYS + 1 and curves.iloc[-1]["oracle"] == pytest.approx(1 + entry["forecasters"]["oracle"]["net"]["total_return"])


def test_json_and_report_show_the_portfolio_table_and_nav_plot(tmp_path, evaluation, planted):
    result = WalkForwardResult({"horizons": {}, "verdicts": {}}, planted[1])
    json_path, report_path = write_outputs(result, tmp_path / "e.json", portfolios=evaluation)
    data = json.loads(json_path.read_text())
    assert data["portfolios"]["topk"]["forecasters"]["oracle"]["rebalances"] == TEST_DAYS
    report = report_path.read_text()
    assert "## Portfolios: one strategy on every forecaster and factor" in report
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "run" and "annual_return_gross" in table[0]
    assert any(line.split("|")[1].strip() == "oracle" for line in table)
    assert any("factor:momentum_12_1" in line and "no score at any test origin" in line for line in table)
    assert "![topk net NAV](e_plots/portfolio_topk_nav.png)" in report
    assert (tmp_path / "e_plots" / "portfolio_topk_nav.png").stat().st_size > 1000


def test_an_in_sample_forecast_is_an_error_never_traded(planted):
    forecasts = planted[1].copy()
    forecasts.loc[5, "model_cutoff"] = forecasts.loc[5, "date"]
    with pytest.raises(ValueError, match=r"1 forecast row\(s\) at or before their model's cut-off"):
        out_of_sample(forecasts)


def test_choosing_portfolios():
    configured = {"top": {"strategy": "topk"}, "ls": {"strategy": "long_short", "horizon": 5}}
    assert list(choose_portfolios(configured, None, (1, 5))) == ["top"]
    assert list(choose_portfolios(configured, ["all"], (1, 5))) == ["top", "ls"]
    assert list(choose_portfolios(configured, ["ls", "ls"], (5,))) == ["ls"]
    with pytest.raises(ValueError, match=r"^unknown portfolio 'nope' \(configured in IBF_PORTFOLIOS: top, ls; or 'all'\)$"):
        choose_portfolios(configured, ["top", "nope"], (1, 5))
    with pytest.raises(ValueError, match=r"portfolio 'ls' ranks horizon 5, which this evaluation does not forecast \(--horizons 1,20\)"):
        choose_portfolios(configured, ["all"], (1, 20))


def test_evaluate_names_a_wrong_portfolio_in_one_error_line(tmp_path, monkeypatch):
    from ibf_dagster.cli import app

    monkeypatch.setenv("IBF_PORTFOLIOS", '{"top": "topk", "ls": {"strategy": "long_short"}}')
    result = CliRunner().invoke(app, ["evaluate", "--portfolio", "top", "--portfolio", "nope", "--json", str(tmp_path / "x.json")])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "'nope'" in errors[0] and "top, ls" in errors[0]
    assert not (tmp_path / "x.json").exists()
