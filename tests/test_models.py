"""Forecasting models: targets, splits, members, bundles and the registry (no look-ahead anywhere)."""

import datetime as dt
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from ibf_core.features.pipeline import compute_features
from ibf_core.models import ModelDataError, ModelLoadError
from ibf_core.models.bundle import load_bundle, save_bundle
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel, truncate
from ibf_core.models.predict import forecast, origin_rows, predictions_table
from ibf_core.models.training import train_models, windows
from ibf_core.sources.sample import load_sample_bars

SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]
CUTOFF = dt.date(2012, 6, 29)
FAST = ModelConfig(members=("gbdt",), gbdt_rounds=60)
TINY_NEURAL = ModelConfig(members=("lstm", "gbdt"), max_steps=6, val_check_steps=3, gbdt_rounds=40, input_size=30)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    sample = load_sample_bars()
    return sample[sample["symbol"].isin(SYMBOLS) & (sample["date"] >= "2008-01-01")].reset_index(drop=True)


@pytest.fixture(scope="module")
def panel(bars) -> pd.DataFrame:
    return build_panel(bars, compute_features(bars, benchmark=None), FAST.horizons)


@pytest.fixture(scope="module")
def gbdt_bundle(panel):
    return train_models(panel, CUTOFF, FAST)


def test_targets_are_future_log_returns_of_adjusted_closes(panel):
    aapl = panel[panel["symbol"] == "AAPL"].reset_index(drop=True)
    log_price = np.log(aapl["adj_close"].to_numpy())
    for h in (1, 5, 20):
        expected = log_price[h:] - log_price[:-h]
        np.testing.assert_allclose(aapl[f"target_{h}"].to_numpy()[:-h], expected)
        assert aapl[f"target_{h}"].iloc[-h:].isna().all()
    np.testing.assert_allclose(aapl["y"].to_numpy()[1:], np.diff(log_price))
    # targets never cross into another symbol
    last_rows = panel.groupby("symbol").tail(1)
    assert last_rows["target_1"].isna().all()


def test_truncate_blanks_every_target_that_reaches_past_the_cut(panel):
    cut = truncate(panel, dt.date(2011, 6, 30))
    assert cut["date"].max() <= pd.Timestamp("2011-06-30")
    for h in (1, 20):
        reach = cut.groupby("symbol")["session"].transform("max")
        assert cut.loc[cut["session"] + h > reach, f"target_{h}"].isna().all()
        assert cut.loc[cut["session"] + h <= reach, f"target_{h}"].notna().all()


def test_a_symbol_with_a_gap_is_named(bars):
    holed = bars.drop(bars[(bars["symbol"] == "IBM") & (bars["date"] == "2010-03-03")].index)
    with pytest.raises(ModelDataError, match=r"IBM: 1 gap\(s\).*2010-03-02"):
        build_panel(holed, compute_features(holed, benchmark=None), (1,))


def test_windows_purge_and_embargo():
    span = windows(CUTOFF, FAST)
    assert span["train_end"] < span["validation_start"] < span["validation_end"] < span["cutoff"] == CUTOFF
    from ibf_core.calendar import trading_days

    gap = len(trading_days(span["train_end"], span["validation_start"])) - 2
    assert gap == FAST.max_horizon  # embargo of H sessions between training data and validation origins
    assert len(trading_days(span["validation_start"], span["validation_end"])) == FAST.validation_sessions
    assert len(trading_days(span["validation_end"], span["cutoff"])) - 1 == FAST.max_horizon


def test_training_ignores_everything_after_the_cutoff(panel, gbdt_bundle):
    # Scramble every price and feature after the cut-off: the trained model must not change at all.
    future = panel["date"] > pd.Timestamp(CUTOFF)
    poisoned = panel.copy()
    rng = np.random.default_rng(1)
    numeric = [c for c in panel.columns if c not in ("symbol", "date", "session", "warmup")]
    poisoned.loc[future, numeric] = rng.normal(size=(int(future.sum()), len(numeric)))
    again = train_models(poisoned, CUTOFF, FAST)
    assert again.facts["fingerprint"] == gbdt_bundle.facts["fingerprint"]
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp("2012-06-29")])
    a = forecast(gbdt_bundle, panel, origins)
    b = forecast(again, panel, origins)
    pd.testing.assert_frame_equal(a, b)


def test_validation_table_ensemble_and_intervals(gbdt_bundle):
    table = pd.DataFrame(gbdt_bundle.validation)
    assert set(table["member"]) == {"naive", "drift", "gbdt", "ensemble"}
    assert set(table["horizon"]) == set(FAST.horizons)
    naive = table[table["member"] == "naive"]
    assert (naive["rel_mae_vs_naive"] == 1.0).all()
    for h, choice in gbdt_bundle.ensemble.items():
        assert choice["method"] in ("equal", "inverse_error", "stacking")
        assert abs(sum(choice["weights"].values()) - 1) < 1e-9
    for member, by_h in gbdt_bundle.conformal.items():
        for q in by_h.values():
            assert q["lower_95"] <= q["lower_80"] < q["upper_80"] <= q["upper_95"]


def test_predictions_table_ranks_and_orders_intervals(panel, gbdt_bundle):
    origins = origin_rows(panel, SYMBOLS, pd.to_datetime(["2012-07-02", "2012-07-03"]))
    table = predictions_table(forecast(gbdt_bundle, panel, origins), origins, gbdt_bundle, "7")
    assert len(table) == 2 * len(SYMBOLS) * len(FAST.horizons)
    for _, group in table.groupby(["date", "horizon"]):
        assert sorted(group["rank"]) == [1, 2, 3, 4]
        assert group.sort_values("rank")["pred_return"].is_monotonic_decreasing
    assert (table["lower_95"] <= table["lower_80"]).all() and (table["upper_80"] <= table["upper_95"]).all()
    np.testing.assert_allclose(table["pred_price"], table["close"] * np.exp(table["pred_return"]))
    assert (table["target_date"] > table["date"]).all()
    assert (table["model_cutoff"] < table["date"]).all()


def test_bundle_round_trip_and_tampering(tmp_path, panel, gbdt_bundle):
    digest = save_bundle(gbdt_bundle, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b", digest)
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp("2012-07-02")])
    pd.testing.assert_frame_equal(forecast(gbdt_bundle, panel, origins), forecast(loaded, panel, origins))
    with pytest.raises(ModelLoadError, match="manifest digest"):
        load_bundle(tmp_path / "b", "0" * 64)
    model = tmp_path / "b" / "gbdt" / "h5.txt"
    model.write_text(model.read_text().replace("learning_rate", "learning_rate "))
    with pytest.raises(ModelLoadError, match="checksum mismatch for gbdt/h5.txt"):
        load_bundle(tmp_path / "b", digest)


def test_too_little_history_and_all_nan_features(panel):
    short = panel[panel["date"] >= "2011-06-01"]
    with pytest.raises(ModelDataError, match="too little history"):
        train_models(short, dt.date(2012, 3, 30), FAST)
    blank = panel.copy()
    blank["rsi_14"] = np.nan
    with pytest.raises(ModelDataError, match="'rsi_14' has no finite value"):
        train_models(blank, CUTOFF, TINY_NEURAL)


def test_neural_members_reproducible_with_a_fixed_seed(tmp_path, panel):
    """LSTM (and the GBDT beside it) on the CPU: same seed, same data -> identical forecasts; round trip too."""
    first = train_models(panel, CUTOFF, TINY_NEURAL)
    second = train_models(panel, CUTOFF, TINY_NEURAL)
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp("2012-07-02")])
    a, b = forecast(first, panel, origins), forecast(second, panel, origins)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["member"]) == {"naive", "drift", "lstm", "gbdt", "ensemble"}
    assert np.isfinite(a["pred"]).all()
    digest = save_bundle(first, tmp_path / "n")
    assert not list((tmp_path / "n").rglob("*.pkl"))  # NeuralForecast's safetensors + JSON format only
    pd.testing.assert_frame_equal(a, forecast(load_bundle(tmp_path / "n", digest), panel, origins))


def test_registry_round_trip_picks_the_newest_cutoff_before_the_origin(tmp_path, panel, gbdt_bundle):
    from ibf_core.models.registry import ensure_experiment, list_versions, load_registered, log_and_register, version_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_experiment(uri, "test", tmp_path / "artifacts")
    mlflow.set_experiment("test")
    later = train_models(panel, dt.date(2012, 9, 28), FAST)
    registered = []
    for bundle in (gbdt_bundle, later):
        with mlflow.start_run():
            registered.append(log_and_register(bundle, "ibf-test", tmp_path / f"work{len(registered)}"))
    assert [v.version for v in list_versions(uri, "ibf-test")] == ["1", "2"]
    assert version_for(uri, "ibf-test", dt.date(2012, 7, 2)).version == "1"
    assert version_for(uri, "ibf-test", dt.date(2012, 9, 28)).version == "1"  # cut-off day itself: strictly before
    assert version_for(uri, "ibf-test", dt.date(2012, 10, 1)).version == "2"
    with pytest.raises(ModelLoadError, match="no registered version"):
        version_for(uri, "ibf-test", CUTOFF)
    loaded = load_registered(uri, registered[0], tmp_path / "cache")
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp("2012-07-02")])
    pd.testing.assert_frame_equal(forecast(gbdt_bundle, panel, origins), forecast(loaded, panel, origins))
    run = mlflow.get_run(registered[0].run_id)
    assert run.data.tags["cutoff"] == CUTOFF.isoformat()
    assert "val_h5_gbdt_rel_mae_vs_naive" in run.data.metrics
    assert run.data.params["horizons"] == "1,3,5,10,15,20"
    assert json.loads(mlflow.artifacts.load_text(f"runs:/{registered[0].run_id}/validation.json"))[0]["horizon"] == 1
    # a cached copy that changed on disk is refused, not loaded
    cached = tmp_path / "cache" / "ibf-test" / "1" / "bundle.json"
    cached.write_text(cached.read_text().replace('"seed": 7', '"seed": 8'))
    with pytest.raises(ModelLoadError, match="v1: .*checksum mismatch"):
        load_registered(uri, registered[0], tmp_path / "cache")
