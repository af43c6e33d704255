"""Modelling on real, imperfect histories: missing sessions, one-year files, close-only bars, textbook factors."""

import math

import numpy as np
import pandas as pd
import pytest

from helpers.messy_bars import messy_bars
from ibf_core.calendar import trading_days
from ibf_core.features.pipeline import compute_features, compute_features_with_support, feature_columns, sparse_features
from ibf_core.models import ModelDataError
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel, session_ordinals, session_shift, truncate
from ibf_core.models.predict import forecast
from ibf_core.models.training import train_models

FAST = ModelConfig(members=("gbdt",), gbdt_rounds=40)
# The default neural inputs and input size; a few steps only (what is tested is the data path, not skill).
NEURAL = ModelConfig(members=("lstm", "gbdt"), max_steps=4, val_check_steps=2, gbdt_rounds=40)
VOLUME_FEATURES = {"obv_flow_20", "cmf_20", "adosc_3_10", "vwap_ratio_20", "vroc_10", "amihud_20", "volume_z_20",
                   "turnover_proxy_20", "rank_volume_z_20", "rank_amihud_20"}
RANGE_FEATURES = {"stoch_k", "stoch_d", "cci_20", "willr_14", "natr_14", "adx_14", "plus_di_14", "minus_di_14",
                  "cs_spread_20", "gap_overnight", "intraday_ret", "hl_range", "cmf_20", "adosc_3_10", "vwap_ratio_20"}
SPARSE = sparse_features()  # real spread, news, live: present on some sessions only


def panel_of(bars: pd.DataFrame, horizons=(1, 3, 5, 10, 15, 20)) -> pd.DataFrame:
    return build_panel(bars, compute_features(bars, benchmark=None), horizons)


# ----- 1. missing sessions -----------------------------------------------------------------------------------
def test_targets_and_the_daily_return_are_null_across_a_missing_session():
    days = trading_days("2021-01-04", "2021-01-13")  # 04 05 06 07 08 11 12 13
    prices = [100.0, 110.0, 121.0, 999.0, 100.0, 105.0, 84.0, 90.0]
    aaa = pd.DataFrame({"symbol": "AAA", "date": days, "adj_close": prices})
    bbb = pd.DataFrame({"symbol": "BBB", "date": days, "adj_close": np.linspace(50, 57, 8)})
    bars = pd.concat([aaa.drop(index=3), bbb], ignore_index=True)  # AAA has no bar on 2021-01-07
    bars = bars.assign(close=bars["adj_close"], open=bars["adj_close"], high=bars["adj_close"] * 1.01,
                       low=bars["adj_close"] * 0.99, volume=1000.0 + np.arange(len(bars)))
    panel = build_panel(bars, compute_features(bars, benchmark=None), (1, 2))
    got = panel[panel["symbol"] == "AAA"].set_index(panel.loc[panel["symbol"] == "AAA", "date"].dt.strftime("%m-%d"))
    ln, nan = math.log, np.nan
    expected = pd.DataFrame({
        "y":        [nan,      ln(1.1),  ln(1.1),        nan,            ln(1.05),     ln(0.8),       ln(90 / 84)],
        "target_1": [ln(1.1),  ln(1.1),  nan,            ln(1.05),       ln(0.8),      ln(90 / 84),   nan],
        "target_2": [ln(1.21), nan,      ln(100 / 121),  ln(0.84),       ln(90 / 105), nan,           nan],
    }, index=["01-04", "01-05", "01-06", "01-08", "01-11", "01-12", "01-13"])
    pd.testing.assert_frame_equal(got[["y", "target_1", "target_2"]], expected, check_names=False, rtol=1e-12)
    # Features count bars, not sessions (documented): the 1-bar return after the gap spans two sessions.
    assert got.loc["01-08", "logret_1"] == pytest.approx(ln(100 / 121))
    # Targets never reach into another symbol; the complete symbol is untouched.
    assert panel.groupby("symbol").tail(1)["target_1"].isna().all()
    assert panel.loc[panel["symbol"] == "BBB", "y"].iloc[1:].notna().all()


def test_a_symbol_with_gaps_trains_and_is_predicted_on_every_origin_with_a_bar():
    from ibf_core.features.table import features_spec
    from ibf_core.models.inference import predict_rectangle
    from ibf_core.models.registry import RegisteredModel

    bars = messy_bars(n_symbols=8, sessions=420, vendor_missing=6, gaps=3, seed=3)
    days = np.sort(bars["date"].unique())
    hole = (bars["symbol"] == "S001") & (bars["date"] == days[-4])  # a gap among the predicted origins
    bars = bars[~hole].reset_index(drop=True)
    panel = panel_of(bars)
    cutoff = pd.Timestamp(days[-12]).date()
    bundle = train_models(panel, cutoff, NEURAL)
    assert bundle.facts["symbols"] == sorted(bars["symbol"].unique())  # nobody is refused for a gap
    assert set(bundle.facts["missing_sessions"]) == set(bundle.facts["symbols"])  # every symbol has a gap
    lstm = bundle.facts["members"]["lstm"]
    assert lstm["missing_sessions"] > 0 and lstm["unobserved_steps"] >= lstm["missing_sessions"]

    features = compute_features(bars, benchmark=None)
    store = FakeStore({"market_bars": bars, features_spec().name: features})
    model = RegisteredModel("m", "1", cutoff, "run", "src", "0" * 64)
    start, end = pd.Timestamp(days[-10]).date(), pd.Timestamp(days[-1]).date()
    symbols = sorted(bars["symbol"].unique())
    result = predict_rectangle(store, [model], lambda _: bundle, symbols, symbols, start, end)
    frame = result.frame
    with_bar = bars[(bars["date"] >= pd.Timestamp(start))][["symbol", "date"]]
    assert set(zip(frame["symbol"], frame["date"])) == set(zip(with_bar["symbol"], with_bar["date"]))
    assert len(frame) == len(with_bar) * len(bundle.config.horizons) and not result.unranked
    assert np.isfinite(frame[["pred_return", "lower_80", "upper_95", "pred_lstm", "pred_gbdt"]].to_numpy()).all()
    gap_day = frame[frame["date"] == days[-4]]
    assert "S001" not in set(gap_day["symbol"])
    assert sorted(gap_day.groupby("horizon")["rank"].max().unique()) == [len(symbols) - 1]  # ranked among those with a bar


class FakeStore:
    """The two tables ``predict_rectangle`` reads, as a warehouse would return them."""

    def __init__(self, tables: dict[str, pd.DataFrame]) -> None:
        self.tables = tables

    def read(self, spec, symbols, start, end, columns=None) -> pd.DataFrame:
        table = self.tables[spec.name]
        dates = pd.to_datetime(table["date"])
        keep = table["symbol"].isin(list(symbols)) & (dates >= pd.Timestamp(start)) & (dates <= pd.Timestamp(end))
        return table.loc[keep, list(columns) if columns else table.columns].reset_index(drop=True)


def test_neural_windows_live_on_the_session_grid_and_need_enough_observed_steps():
    from ibf_core.models import neural

    bars = messy_bars(n_symbols=3, sessions=200, vendor_missing=0, gaps=0, seed=5)
    days = np.sort(bars["date"].unique())
    # S000 misses 1 session before the last origin, S001 misses 10 of its last 30 sessions.
    lost = ((bars["symbol"] == "S000") & (bars["date"] == days[-5])) | (
        (bars["symbol"] == "S001") & bars["date"].isin(days[-25:-15]))
    panel = panel_of(bars[~lost])
    config = ModelConfig(members=("lstm",), input_size=30)
    hist = ["logret_5", "rsi_14"]
    origins = panel[panel["date"] == days[-1]]
    able = neural.forecastable(panel, origins, config, hist)
    assert dict(zip(origins["symbol"], able)) == {"S000": True, "S001": False, "S002": True}  # 20/30 < 3/4
    futr = neural.future_known_features()
    windows, ids = neural._windows(panel, origins, 30, futr, neural.input_columns(hist, futr))
    s000 = windows[windows["symbol_key"] == "S000"]
    assert len(s000) == 30 and (np.diff(s000["session"]) == 1).all()  # one step per NYSE session
    seen = neural.observed_steps(s000, hist)
    assert (~seen).sum() == 2  # the missing session and the return across it
    assert s000["symbol"].isna().sum() == 1 and s000["day_of_week"].notna().all()  # calendar known anyway


def test_the_ensemble_uses_the_members_that_forecast_an_origin():
    from ibf_core.models.ensemble import combine

    choice = {"weights": {"lstm": 0.75, "gbdt": 0.25, "tft": 0.0}}
    frame = pd.DataFrame({"lstm": [0.04, np.nan, np.nan, np.nan], "gbdt": [0.00, 0.02, np.nan, np.nan],
                          "tft": [0.08, 0.06, 0.05, np.nan]})
    got = combine(frame, choice)
    np.testing.assert_allclose(got[:3], [0.75 * 0.04, 0.02, 0.05])  # renormalized; only a zero-weight member: itself
    assert np.isnan(got[3])  # nobody forecasts this origin


# ----- 2. short histories --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_year() -> pd.DataFrame:
    return panel_of(messy_bars(n_symbols=12, sessions=252, vendor_missing=5, gaps=2, seed=11))


def test_one_year_trains_at_its_last_session_with_shrunk_windows_and_a_note(one_year):
    last = one_year["date"].max().date()
    bundle = train_models(one_year, last, NEURAL)
    plan = bundle.facts["windows"]
    assert plan["history_sessions"] == 252 and plan["configured_need"] > 252 >= plan["minimum_need"]
    assert plan["note"].startswith("history is short: ") and "validation 60->" in plan["note"]
    assert plan["embargo"] < 20 and 20 <= plan["validation"] < 60 and 20 <= plan["early_stopping"] < 40
    # the bundle's windows are the shrunk ones, laid out as the protocol says
    assert len(trading_days(bundle.validation_start, bundle.validation_end)) == plan["validation"]
    assert len(trading_days(bundle.train_end, bundle.validation_start)) - 2 == plan["embargo"]
    assert bundle.config.validation_sessions == plan["validation"]
    assert bundle.config.early_stopping_sessions == plan["early_stopping"]
    assert set(bundle.config.members) == {"lstm", "gbdt"} and not plan["members_left_out"]
    # warm-up is per feature: the 200-bar windows are left out with the reason, the rest is used
    assert bundle.facts["features_left_out"]["sma_ratio_200"] == "warm-up: needs 200 bars of history"
    assert {"rsi_14", "hv_60", "sma_ratio_50"} <= set(bundle.facts["features_used"])
    # the training up-rate counts realized targets only (a NULL target is not a down move)
    realized = truncate(one_year, bundle.train_end)["target_5"].dropna()
    assert bundle.up_rate["5"] == pytest.approx(float((realized > 0).mean()))
    origins = one_year[one_year["date"] == one_year["date"].max()]
    long = forecast(bundle, one_year, origins)
    assert np.isfinite(long.loc[long["member"].isin(["ensemble", "gbdt", "lstm"]), "pred"]).all()


def test_walk_forward_with_40_test_days_on_one_year(one_year):
    from ibf_core.evaluation.walkforward import walk_forward

    result = walk_forward(one_year, NEURAL.replace(horizons=(1, 5, 20)), test_days=40)
    detail = result.results["config"]["folds_detail"][0]
    assert detail["members"] == ["gbdt"] and "needs" in detail["members_left_out"]["lstm"]  # 173 sessions at the cut-off
    assert detail["note"].startswith("history is short")
    for h in ("1", "5", "20"):
        members = result.results["horizons"][h]
        assert set(members) == {"naive", "drift", "gbdt", "ensemble"}
        assert members["gbdt"]["n"] == members["naive"]["n"] > 0
        factors = result.results["factors"]["horizons"][h]
        assert set(factors) == {"reversal_1", "reversal_5", "momentum_20", "momentum_12_1"}
        # the same origins as the members, less those right after a missing session (no 1-session return)
        assert factors["reversal_1"]["available"] and 0.9 * members["naive"]["n"] < factors["reversal_1"]["n"] <= members["naive"]["n"]
        assert not factors["momentum_12_1"]["available"]
        assert factors["momentum_12_1"]["reason"].startswith("needs 253 sessions of history at an origin")


def test_too_short_a_history_names_the_sessions_needed_and_the_longest_symbol():
    panel = panel_of(messy_bars(n_symbols=2, sessions=100, vendor_missing=0, gaps=0, seed=2))
    config = ModelConfig(members=("lstm", "tft", "gbdt"))
    h = config.max_horizon
    gbdt = 3 * h + h + 0 + 20 + h  # fitting, purge, early stopping, targets; embargo 0; validation 20; H
    lstm = 60 + config.input_size + h + h + 0 + 20 + h  # input warm-up (hv_60), window, early stopping, ...
    with pytest.raises(ModelDataError) as caught:
        train_models(panel, panel["date"].max().date(), config)
    message = str(caught.value)
    assert f"training needs {gbdt} sessions (lstm {lstm}, tft {lstm}, gbdt {gbdt})" in message
    assert "S000 has 100 (the longest history)" in message


# ----- 3. partial data -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["close_only", "no_volume", "constant_volume"])
def test_partial_bars_give_null_features_never_zeros(kind):
    bars = messy_bars(n_symbols=4, sessions=260, seed=7, close_only=kind == "close_only", no_volume=kind != "constant_volume")
    if kind == "constant_volume":
        bars["volume"] = 1000.0
    features = compute_features(bars, benchmark=None)  # no error
    lost = VOLUME_FEATURES | (RANGE_FEATURES if kind == "close_only" else set())
    for name in feature_columns():
        values = features[name]
        if name in lost:
            assert values.isna().all(), name
        elif name not in SPARSE:
            assert values.notna().any(), name
    if kind != "close_only":  # a real range stays: only the volume is missing
        assert features["hl_range"].notna().all() and (features["hl_range"] > 0).all()


@pytest.fixture(scope="module")
def close_only_panel() -> pd.DataFrame:
    return panel_of(messy_bars(n_symbols=8, sessions=320, seed=9, close_only=True, no_volume=True))


def test_close_only_training_leaves_out_what_the_data_lacks_and_says_why(close_only_panel):
    bundle = train_models(close_only_panel, close_only_panel["date"].max().date(), NEURAL)
    left_out = bundle.facts["features_left_out"]
    for name in VOLUME_FEATURES - RANGE_FEATURES:
        assert left_out[name] == "missing input: volume", name
    for name in RANGE_FEATURES - VOLUME_FEATURES:
        assert left_out[name] == "missing input: open/high/low", name
    assert left_out["cmf_20"] == "missing input: open/high/low, volume"
    assert not (VOLUME_FEATURES | RANGE_FEATURES) & set(bundle.gbdt_features)
    neural_out = bundle.facts["neural_features_left_out"]
    assert neural_out == {"volume_z_20": "missing input: volume", "hl_range": "missing input: open/high/low",
                          "gap_overnight": "missing input: open/high/low"}
    assert bundle.facts["neural_features_used"] == [f for f in NEURAL.neural_features if f not in neural_out]
    assert list(bundle.scaler.center) == bundle.facts["neural_features_used"]
    origins = close_only_panel[close_only_panel["date"] == close_only_panel["date"].max()]
    long = forecast(bundle, close_only_panel, origins)
    assert np.isfinite(long.loc[long["member"].isin(["lstm", "gbdt", "ensemble"]), "pred"]).all()


def test_feature_checks_on_close_only_data_judge_what_the_data_supports():
    from ibf_core.market import quality

    bars = messy_bars(n_symbols=4, sessions=300, seed=4, close_only=True, no_volume=True)
    frame, support = compute_features_with_support(bars, benchmark=None)
    columns = feature_columns()
    # The old judgement (every feature past the 200-bar warm-up) fails on data that has no volume at all...
    assert not quality.check_nan_share_after_warmup(frame, columns, SPARSE).passed
    # ...the judgement per feature on what the data supports passes and says what it did not judge.
    result = quality.check_nan_share_after_warmup(frame, columns, SPARSE, support=support)
    assert result.passed, result.summary
    assert result.details["not_supported"]["volume_z_20"] == "missing input: volume"
    assert result.details["not_supported"]["stoch_k"] == "missing input: open/high/low"
    assert not set(result.details["not_supported"]) & {"rsi_14", "sma_ratio_50", "logret_20"}
    # A supported feature that goes missing is still caught, named, after its own warm-up (rsi_14: 15 bars).
    broken = frame.copy()
    early = broken.groupby("symbol").cumcount().between(15, 60)
    broken.loc[early, "rsi_14"] = np.nan
    result = quality.check_nan_share_after_warmup(broken, columns, SPARSE, support=support)
    assert not result.passed and list(result.details["over_threshold"]) == ["rsi_14"]


# ----- 4. textbook factors ----------------------------------------------------------------------------------------
def test_factor_rank_ics_find_a_planted_one_session_reversal():
    from ibf_core.evaluation.factors import factor_ics

    bars = messy_bars(n_symbols=40, sessions=300, vendor_missing=0, gaps=0, reversal=0.5, seed=21)
    panel = bars[["symbol", "date", "adj_close"]].sort_values(["symbol", "date"]).reset_index(drop=True)
    panel["session"] = session_ordinals(panel["date"])
    log_price = np.log(panel["adj_close"].to_numpy())
    origins = {h: panel.assign(realized=session_shift(panel, log_price, h) - log_price) for h in (1, 5)}
    result = factor_ics(panel, origins)["horizons"]
    one = result["1"]
    assert one["reversal_1"]["rank_ic_mean"] > 0.2 and one["reversal_1"]["rank_ic_t"] > 8
    assert abs(one["momentum_12_1"]["rank_ic_mean"]) < 0.1  # nothing planted a month and more back
    # 12-1 momentum needs 253 sessions; the last origin has no realized return yet
    assert one["momentum_12_1"]["available"] and one["momentum_12_1"]["n_dates"] == 300 - 252 - 1
    assert one["reversal_1"]["n_dates"] == 300 - 2  # the first session has no return, the last no target
    # a factor and its negation: the sign convention is "positive IC = works as named"
    flipped = factor_ics(panel.assign(adj_close=1 / panel["adj_close"]), {1: origins[1].assign(realized=-origins[1]["realized"])})
    assert flipped["horizons"]["1"]["reversal_1"]["rank_ic_mean"] == pytest.approx(one["reversal_1"]["rank_ic_mean"])


def test_features_asset_on_a_close_only_file_passes_its_checks_and_stores_nulls(ibf_home, tmp_path):
    """Through ``ibf backfill``: a close-only file (open = high = low = close, volume 0) loads and its features
    pass the blocking checks, with NULL volume and range features (the old whole-row judgement failed here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ibf_core.storage.warehouse import Warehouse

    bars = messy_bars(n_symbols=3, sessions=260, vendor_missing=2, gaps=1, close_only=True, seed=13)
    bars["volume"] = 0.0
    csv = tmp_path / "close_only.csv"
    bars.assign(date=bars["date"].dt.strftime("%Y-%m-%d")).to_csv(csv, index=False)
    env = {**os.environ, "IBF_UNIVERSE": "S000,S001,S002", "IBF_HISTORY_START": str(bars["date"].min().date()),
           "IBF_DATE_PARTITIONS": "year"}
    ibf = str(Path(sys.executable).with_name("ibf"))
    proc = subprocess.run([ibf, "backfill", "--source", "csv", "--csv", str(csv), "--assets", "*"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "nan_share_after_warmup=pass" in proc.stderr and "no_infinities=pass" in proc.stderr
    stored = Warehouse(ibf_home).query(
        "SELECT count(*) AS n, count(volume_z_20) AS volume_z, count(hl_range) AS hl, count(stoch_k) AS stoch, "
        "count(rsi_14) AS rsi, count(sma_ratio_200) AS sma200 FROM features")
    row = stored.iloc[0]
    assert row["n"] == len(bars) and row["volume_z"] == row["hl"] == row["stoch"] == 0
    assert row["rsi"] == len(bars) - 3 * 14 and row["sma200"] > 0
