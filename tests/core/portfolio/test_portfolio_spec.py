"""Strategy specs and the portfolios setting: a wrong parameter or an unknown strategy is one ValueError naming it."""

import json

import pytest

from ibf_core.portfolio.spec import DEFAULT_PORTFOLIOS, Strategy, parse_portfolios
from ibf_core.settings import SettingsError, load_settings


def test_parse_fills_the_defaults_and_round_trips():
    spec = Strategy.parse({"strategy": "long_short", "k": 10, "horizon": 5})
    assert (spec.k, spec.rebalance, spec.leverage, spec.score) == (10, 5, 2.0, "rank_score")  # rebalance = horizon
    assert Strategy.parse(spec.as_dict()) == spec
    assert Strategy.parse("topk_dropout").n_drop_for(50) == 5  # Qlib's topk=50, n_drop=5
    assert Strategy.parse({"strategy": "TopK", "k": 5.0}).k == 5


@pytest.mark.parametrize(
    "raw,named",
    [
        ({"strategy": "momentum"}, ["'momentum'", "topk, topk_dropout, long_short"]),
        ({"strategy": "topk", "kk": 3}, ["kk", "known: strategy, k,"]),
        ({"k": 3}, ["strategy: missing"]),
        ({"strategy": "topk", "k": 2.5}, ["k: must be", "2.5"]),
        ({"strategy": "topk", "k": 0}, ["k: must be"]),
        ({"strategy": "topk", "horizon": 2}, ["horizon", "1, 3, 5, 10, 15, 20", "got 2"]),
        ({"strategy": "topk", "rebalance": 0}, ["rebalance"]),
        ({"strategy": "topk", "score": "pred_xgb"}, ["score", "pred_xgb"]),
        ({"strategy": "topk", "max_weight": 1.5}, ["max_weight", "1.5"]),
        ({"strategy": "topk", "turnover_cap": -1}, ["turnover_cap"]),
        ({"strategy": "topk", "leverage": 10}, ["leverage", "10"]),
        ({"strategy": "topk", "sector_neutral": "yes"}, ["sector_neutral", "bool", "'yes'"]),
        ({"strategy": "topk", "k_min": True}, ["k_min", "True"]),
        ({"strategy": "topk", "n_drop": 2}, ["n_drop", "topk_dropout only"]),
        ({"strategy": "TopK_Dropout", "n_drop": 0}, ["n_drop: must be"]),
        ({"strategy": "topk", "min_dollar_volume": float("nan")}, ["min_dollar_volume", "finite"]),
    ],
)
def test_a_wrong_parameter_is_a_value_error_naming_the_portfolio_the_key_and_the_value(raw, named):
    with pytest.raises(ValueError) as caught:
        Strategy.parse(raw, name="mine")
    message = str(caught.value)
    assert message.startswith("portfolio 'mine': ")
    assert all(part in message for part in named), message


def test_portfolio_names_and_shapes_are_checked():
    assert list(parse_portfolios(DEFAULT_PORTFOLIOS)) == ["topk"]
    with pytest.raises(ValueError, match="portfolio name 'Bad Name'"):
        parse_portfolios({"Bad Name": "topk"})
    with pytest.raises(ValueError, match="portfolio 'x': must be a mapping"):
        parse_portfolios({"x": 3})


def test_the_default_setting_is_normalized_and_survives_replace():
    settings = load_settings()
    assert settings.portfolios["topk"]["strategy"] == "topk" and settings.portfolios["topk"]["k_min"] == 2
    assert (settings.portfolio_capital, settings.portfolio_slippage_bps) == (100_000.0, 0.0)
    assert settings.replace(universe=["IBM"]).portfolios == settings.portfolios
    custom = load_settings(portfolios={"d": {"strategy": "topk_dropout", "k": 5, "n_drop": 1, "max_weight": 0.3}})
    as_run_config = json.loads(custom.model_dump_json(exclude=custom.secret_field_names()))  # what Dagster runs get
    assert load_settings(**as_run_config).portfolios == custom.portfolios


def test_the_environment_json_and_one_error_naming_the_variable_portfolio_and_key(monkeypatch):
    monkeypatch.setenv("IBF_PORTFOLIOS", '{"fast": {"strategy": "topk_dropout", "k": 20, "n_drop": 2}}')
    assert load_settings().portfolios["fast"]["n_drop"] == 2
    monkeypatch.setenv("IBF_PORTFOLIOS", '{"fast": {"strategy": "topk", "kk": 3}}')
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "IBF_PORTFOLIOS" in str(caught.value) and "portfolio 'fast'" in str(caught.value) and "kk" in str(caught.value)
    assert "\n" not in str(caught.value)
    monkeypatch.setenv("IBF_PORTFOLIOS", "{not json")
    with pytest.raises(SettingsError, match="IBF_PORTFOLIOS: not valid JSON"):
        load_settings()


def test_a_toml_table_of_portfolios(tmp_path, monkeypatch):
    config = tmp_path / "settings.toml"
    config.write_text('portfolio_capital = 250000\n[portfolios.ls]\nstrategy = "long_short"\nk = 5\nhorizon = 5\n')
    monkeypatch.setenv("IBF_CONFIG", str(config))
    settings = load_settings()
    assert list(settings.portfolios) == ["ls"] and settings.portfolios["ls"]["rebalance"] == 5
    assert settings.portfolio_capital == 250_000
