"""Feature importance by group: permutation on the validation window, LightGBM gain, TFT selection weights."""

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest

from helpers.bars import make_bars
from ibf_core.evaluation.metrics import cross_sectional_ic
from ibf_core.features.pipeline import compute_features, features_by_group
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel
from ibf_core.evaluation.metrics import mean_rank_ic as rank_ic
from ibf_core.models.importance import bundle_importance, permute_group
from ibf_core.models.predict import forecast
from ibf_core.models.training import select, train_models, validation_origins

SYMBOLS = tuple(f"S{i:02d}" for i in range(12))
CUTOFF = dt.date(2021, 12, 1)
HORIZONS = (1, 5)
GBDT = ModelConfig(horizons=HORIZONS, members=("gbdt",), gbdt_rounds=60, validation_sessions=40)
SIGNAL = "news"  # the one group the synthetic targets depend on


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    """Random-walk bars whose h-day targets are replaced by a * news_sentiment_mean + noise: every bit of signal
    is in the news group (no other feature is computed from news)."""
    bars = make_bars(SYMBOLS, start="2019-01-02", end="2021-12-31", seed=3)
    frame = build_panel(bars, compute_features(bars, benchmark=None), HORIZONS)
    rng = np.random.default_rng(11)
    frame["news_sentiment_mean"] = rng.normal(size=len(frame))
    frame["news_count"] = rng.integers(0, 5, len(frame)).astype(float)  # news noise: no signal
    for h in HORIZONS:
        target = frame[f"target_{h}"].to_numpy()
        signal = 0.01 * frame["news_sentiment_mean"].to_numpy() + rng.normal(0, 0.01 * math.sqrt(h), len(frame))
        frame[f"target_{h}"] = np.where(np.isfinite(target), signal, np.nan)
    return frame


@pytest.fixture(scope="module")
def bundle(panel):
    return train_models(panel, CUTOFF, GBDT)


def test_the_group_with_all_the_signal_ranks_first_for_gbdt_by_permutation_and_by_gain(bundle):
    importance = bundle.facts["importance"]
    assert "unavailable" not in importance
    for member in ("gbdt", "ensemble"):
        for h in map(str, HORIZONS):
            table = importance["permutation"][member][h]
            assert set(table) <= set(features_by_group()) and SIGNAL in table
            drops = {g: row["rank_ic_drop"] for g, row in table.items()}
            rises = {g: row["mse_rise"] for g, row in table.items()}
            assert max(drops, key=drops.get) == SIGNAL, drops
            if member == "ensemble" and bundle.ensemble[h]["shrink"] == 0.0:
                # 40 validation dates / h=5 = 8 independent targets: the point forecast is the random walk, which
                # reads nothing, so no permutation moves its error (the ranking still reads the signal)
                assert set(rises.values()) == {0.0}, rises
            else:
                assert max(rises, key=rises.get) == SIGNAL, rises
            assert drops[SIGNAL] > 0.3 and drops[SIGNAL] > 5 * max(abs(v) for g, v in drops.items() if g != SIGNAL)
            assert table[SIGNAL]["repeats"] == 3 and table[SIGNAL]["rank_ic_drop_std"] >= 0
            assert importance["baseline"][member][h]["rank_ic"] > 0.3  # the model found the signal
            validated = next(r for r in bundle.validation if r["member"] == member and str(r["horizon"]) == h)
            assert importance["baseline"][member][h]["rank_ic"] == pytest.approx(validated["rank_ic_mean"], abs=1e-12)
    for h in map(str, HORIZONS):
        gain = importance["gain"]["gbdt"][h]
        assert max(gain, key=gain.get) == SIGNAL and gain[SIGNAL] > 0.5, gain
        assert sum(gain.values()) == pytest.approx(1.0)
    assert importance["tft_vsn"] == {}  # no TFT in this bundle
    assert importance["rows"]["symbols"] == len(SYMBOLS) and importance["rows"]["dates"] == GBDT.validation_sessions
    json.dumps(importance, allow_nan=False)  # JSON as stored in bundle.json


def test_importance_never_changes_a_forecast(panel, bundle):
    plain = train_models(panel, CUTOFF, GBDT, importance=False)
    assert "importance" not in plain.facts
    assert plain.ensemble == bundle.ensemble and plain.conformal == bundle.conformal and plain.validation == bundle.validation
    selection = select(panel, CUTOFF, GBDT)
    origins = validation_origins(selection)
    before = forecast(bundle, selection.data, origins)
    pd.testing.assert_frame_equal(before, forecast(plain, selection.data, origins))
    snapshot = selection.data.copy()
    again = bundle_importance(bundle, selection.data, origins)
    pd.testing.assert_frame_equal(selection.data, snapshot)  # the panel is never permuted in place
    pd.testing.assert_frame_equal(before, forecast(bundle, selection.data, origins))
    assert again["permutation"] == bundle.facts["importance"]["permutation"]  # seeded: the same numbers


def test_permute_group_shuffles_within_dates_and_dates_of_date_level_columns():
    dates = np.repeat(np.arange(6), 5)
    frame = pd.DataFrame({"date": dates, "a": np.arange(30.0), "b": -np.arange(30.0), "cal": dates * 10.0, "keep": np.arange(30.0)})
    out = permute_group(frame, ["a", "b", "cal"], dates, np.random.default_rng(0))
    assert (out["a"] != frame["a"]).any() and (out["keep"] == frame["keep"]).all()
    assert (out["a"] == -out["b"]).all()  # one joint permutation for the group's columns
    for d in range(6):
        assert sorted(out.loc[dates == d, "a"]) == sorted(frame.loc[dates == d, "a"])  # within each date
    assert (out.groupby("date")["cal"].nunique() == 1).all()  # a date-level column moves as a whole date
    assert sorted(out.groupby("date")["cal"].first()) == sorted(frame.groupby("date")["cal"].first())
    assert (out["cal"] != frame["cal"]).any()
    again = permute_group(frame, ["a", "b", "cal"], dates, np.random.default_rng(0))
    pd.testing.assert_frame_equal(out, again)


def test_dense_rank_ic_equals_the_evaluation_metric():
    rng = np.random.default_rng(5)
    pred, real = rng.normal(size=(30, 7)), rng.normal(size=(30, 7))
    pred[rng.random(pred.shape) < 0.2] = np.nan
    real[3, :5] = np.nan  # a date with too few pairs is dropped
    pred[4] = 1.0  # a constant forecast is dropped
    d, s = np.indices(pred.shape)
    long = pd.DataFrame({"date": d.ravel(), "pred": pred.ravel(), "real": real.ravel()})
    expected = cross_sectional_ic(long, "pred", "real", "spearman").mean()
    assert rank_ic(pred, real) == pytest.approx(expected, abs=1e-12)


def test_neural_members_get_finite_importances_and_tft_selection_weights(panel):
    config = ModelConfig(horizons=HORIZONS, members=("tft", "gbdt"), max_steps=3, val_check_steps=3, input_size=20,
                         gbdt_rounds=20, validation_sessions=20, early_stopping_sessions=20)
    bundle = train_models(panel, CUTOFF, config)
    importance = bundle.facts["importance"]
    assert "unavailable" not in importance, importance
    assert importance["repeats"] == {"tft": 2, "gbdt": 3, "ensemble": 2}
    neural_groups = set(importance["groups"]["tft"])
    assert {"technical", "returns", "cross_asset", "calendar"} <= neural_groups and SIGNAL not in neural_groups
    for member in ("tft", "ensemble"):
        for h in map(str, HORIZONS):
            for row in importance["permutation"][member][h].values():
                assert all(math.isfinite(row[k]) for k in ("rank_ic_drop", "rank_ic_drop_std", "mse_rise", "mse_rise_std"))
    moved = [row["mse_rise"] for h in map(str, HORIZONS) for row in importance["permutation"]["tft"][h].values()]
    assert any(v != 0 for v in moved)  # permuting the inputs changes the network's forecasts
    vsn = importance["tft_vsn"]["tft"]
    assert "unavailable" not in vsn, vsn
    assert sum(vsn["historical"].values()) == pytest.approx(1.0, abs=1e-6)
    assert {"returns", "other", "technical", "calendar"} <= set(vsn["historical"])  # y -> returns, observed -> other
    assert set(vsn["variables"]["historical"]) >= {"y", "observed", "rsi_14"}
    assert vsn["future"] == {"calendar": pytest.approx(1.0, abs=1e-6)}
    assert vsn["windows"] == importance["rows"]["origins"]
    json.dumps(importance, allow_nan=False)

    selection = select(panel, CUTOFF, config)
    origins = validation_origins(selection)
    before = forecast(bundle, selection.data, origins)
    bundle_importance(bundle, selection.data, origins, repeats=1, neural_repeats=1)
    pd.testing.assert_frame_equal(before, forecast(bundle, selection.data, origins))


def test_mlflow_metrics_artifact_api_facts_and_asset_metadata(tmp_path, bundle):
    import mlflow

    from ibf_core.forecasts import model_facts
    from ibf_core.models.registry import ensure_experiment, list_versions, log_and_register
    from ibf_core.settings import get_settings
    from ibf_dagster.assets.models import _result

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_experiment(uri, "importance", tmp_path / "artifacts")
    mlflow.set_experiment("importance")
    with mlflow.start_run():
        registered = log_and_register(bundle, "ibf-importance", tmp_path / "work")
    metrics = mlflow.get_run(registered.run_id).data.metrics
    expected = bundle.facts["importance"]["permutation"]["gbdt"]["5"][SIGNAL]["rank_ic_drop"]
    assert metrics["importance/gbdt/h5/news"] == pytest.approx(expected)
    assert {"importance_mse/ensemble/h1/news", "importance_gain/gbdt/h1/news"} <= set(metrics)
    artifact = json.loads(mlflow.artifacts.load_text(f"runs:/{registered.run_id}/importance.json"))
    assert artifact["permutation"] == json.loads(json.dumps(bundle.facts["importance"]["permutation"]))

    facts = model_facts(uri, list_versions(uri, "ibf-importance")[0], tmp_path / "facts")  # GET /models/{version}
    assert facts["importance"]["permutation"]["gbdt"]["1"][SIGNAL]["rank_ic_drop"] > 0.3
    assert facts["importance"]["gain"]["gbdt"]["1"][SIGNAL] > 0.5

    result = _result(bundle, registered, get_settings(), 1.0, "http://mlflow/run")
    table = result.metadata["feature_importance"].value
    assert "**h=1**" in table and "gbdt ΔRankIC" in table and "gbdt gain" in table
    rows = [line for line in table.split("**h=5**")[1].splitlines() if line.startswith("|")]
    assert rows[2].split("|")[1].strip() == SIGNAL  # h=5's first row (sorted by the ensemble's drop): the signal
    assert result.metadata["feature_importance_plot"].value.startswith("![rank IC drop")


def test_walk_forward_averages_the_folds_importance_into_json_and_report(tmp_path, panel):
    from ibf_core.evaluation.walkforward import walk_forward, write_outputs

    result = walk_forward(panel[panel["date"] <= "2021-12-01"], GBDT, test_days=30, refit_every=15)
    aggregated = result.results["importance"]
    assert aggregated["folds"] == result.results["config"]["folds"] == 2 and not aggregated["not_measured"]
    for h in map(str, HORIZONS):
        gbdt = aggregated["horizons"][h]["gbdt"]
        assert max(gbdt, key=lambda g: gbdt[g]["rank_ic_drop"]) == SIGNAL
        assert gbdt[SIGNAL]["folds"] == 2 and gbdt[SIGNAL]["rank_ic_drop_std"] is not None
        assert gbdt[SIGNAL]["gain_share"] > 0.5 and aggregated["horizons"][h]["ensemble"][SIGNAL]["gain_share"] is None
    json_path, report_path = write_outputs(result, tmp_path / "wf.json")
    stored = json.loads(json_path.read_text())
    assert stored["importance"]["horizons"]["5"]["gbdt"][SIGNAL]["folds"] == 2
    report = report_path.read_text()
    section = report.split("## Feature importance by group")[1]
    assert "### h=1" in section and "### h=5" in section and "gbdt ΔRankIC" in section
