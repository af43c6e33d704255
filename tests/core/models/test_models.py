"""Forecasting models: targets, splits, members, bundles and the registry (no look-ahead anywhere)."""

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from helpers.paths import ROOT, TESTS
from ibf_core.features.pipeline import compute_features
from ibf_core.models import ModelDataError, ModelLoadError
from ibf_core.models.bundle import LOOKBACK_MARGIN, load_bundle, save_bundle
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel, missing_sessions, truncate
from ibf_core.models.members import Inputs, Member, member_class, register, unregister
from ibf_core.models.predict import forecast, origin_rows, predictions_table
from ibf_core.models.training import select, train_models, windows
from ibf_core.sources.sample import load_sample_bars

SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]
CUTOFF = dt.date(2012, 6, 29)
FAST = ModelConfig(members=("gbdt",), gbdt_rounds=60)
TINY_NEURAL = ModelConfig(members=("lstm", "gbdt"), max_steps=6, val_check_steps=3, gbdt_rounds=40, input_size=30)
OLD_BUNDLE = TESTS / "fixtures" / "models_v1"  # written by the code before the member protocol


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


def test_a_gap_blanks_exactly_the_targets_and_returns_that_span_it(bars):
    """A missing bar is no longer refused: the targets and the daily return across it are NULL, the rest stay."""
    holed = bars.drop(bars[(bars["symbol"] == "IBM") & (bars["date"] == "2010-03-03")].index)
    panel = build_panel(holed, compute_features(holed, benchmark=None), (1, 5))
    ibm = panel[panel["symbol"] == "IBM"].set_index("date")
    full = build_panel(bars, compute_features(bars, benchmark=None), (1, 5))
    ref = full[full["symbol"] == "IBM"].set_index("date")
    assert np.isnan(ibm.loc["2010-03-02", "target_1"]) and np.isnan(ibm.loc["2010-03-04", "y"])
    for day in ("2010-02-24", "2010-02-25", "2010-02-26", "2010-03-01", "2010-03-02"):  # t + 5 sessions is 03-03
        assert np.isnan(ibm.loc[day, "target_5"]) == (day == "2010-02-24"), day
    kept = ibm.index.difference(pd.to_datetime(["2010-02-24", "2010-03-02", "2010-03-04"]))
    for column in ("target_1", "y"):
        np.testing.assert_allclose(ibm.loc[kept, column], ref.loc[kept, column], err_msg=column)
    assert missing_sessions(panel) == {"IBM": 1}


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
    numeric = [c for c in panel.columns if c not in ("symbol", "date", "session") and panel[c].dtype != bool]
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
    assert len(table) == 4 * len(FAST.horizons)  # one row per (horizon, member)
    assert set(gbdt_bundle.conformal) == {"naive", "drift", "gbdt", "ensemble"}
    assert set(gbdt_bundle.ensemble) == {str(h) for h in FAST.horizons}
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


def test_too_little_history_names_the_computed_minimum_and_an_empty_neural_input_is_left_out(panel):
    from ibf_core.calendar import trading_days

    short = panel[panel["date"] >= "2011-12-01"]
    have = len(trading_days("2011-12-01", "2012-03-30"))
    assert have == 83
    # GBDT: fitting origins (20) + purge (20) + early stopping (20) + their targets (20) + validation (20) + H (20)
    with pytest.raises(ModelDataError, match=r"too little history for cut-off 2012-03-30: training needs 120 sessions "
                       rf"\(gbdt 120\).*AAPL has {have} \(the longest history\)"):
        train_models(short, dt.date(2012, 3, 30), FAST)
    blank = panel.copy()
    blank["rsi_14"] = np.nan
    chosen = select(blank, CUTOFF, TINY_NEURAL)  # the neural inputs adapt instead of failing
    assert chosen.neural_left_out == {"rsi_14": "all NaN in the training window"}
    assert list(chosen.inputs.scaler.center) == [f for f in TINY_NEURAL.neural_features if f != "rsi_14"]
    assert chosen.left_out_features["rsi_14"] == "all NaN in the training window"


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
    # The documented layout: bundle.json, neural/<member>/ (safetensors), gbdt/h<h>.txt, manifest.json.
    root = tmp_path / "n"
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert {f.split("/")[0] for f in files} == {"bundle.json", "manifest.json", "neural", "gbdt"}
    assert {f for f in files if f.startswith("gbdt/")} == {f"gbdt/h{h}.txt" for h in TINY_NEURAL.horizons}
    assert {f.split("/")[1] for f in files if f.startswith("neural/")} == {"lstm"}
    assert any(f.startswith("neural/lstm/") and f.endswith(".safetensors") for f in files)
    assert set(json.loads((root / "manifest.json").read_text())) == files - {"manifest.json"}
    assert json.loads((root / "bundle.json").read_text())["format_version"] == 1
    # What a caller must load and require: the LSTM reads input_size sessions, the drift baseline its window.
    assert first.min_usable_sessions() == TINY_NEURAL.input_size
    assert first.lookback_sessions() == max(TINY_NEURAL.input_size, TINY_NEURAL.drift_baseline_sessions) + LOOKBACK_MARGIN


def test_registry_round_trip_picks_the_newest_cutoff_before_the_origin(tmp_path, panel, gbdt_bundle, capfd, monkeypatch):
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
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # restored after the test
    capfd.readouterr()
    loaded = load_registered(uri, registered[0], tmp_path / "cache")
    assert "Downloading artifacts" not in capfd.readouterr().err  # no third-party progress bar
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp("2012-07-02")])
    pd.testing.assert_frame_equal(forecast(gbdt_bundle, panel, origins), forecast(loaded, panel, origins))
    run = mlflow.get_run(registered[0].run_id)
    assert run.data.tags["cutoff"] == CUTOFF.isoformat()
    assert "val_h5_gbdt_rel_mae_vs_naive" in run.data.metrics
    assert run.data.params["horizons"] == "1,3,5,10,15,20"
    assert json.loads(mlflow.artifacts.load_text(f"runs:/{registered[0].run_id}/validation.json"))[0]["horizon"] == 1
    # a cached version loads without importing MLflow (2.5-3.4 s of every daily predictions run)
    child = (
        "import sys; from pathlib import Path; from ibf_core.models.registry import list_versions, load_registered; "
        f"v = list_versions({uri!r}, 'ibf-test')[0]; load_registered({uri!r}, v, Path({str(tmp_path / 'cache')!r})); "
        "print('mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]
    # a cached copy that changed on disk is refused, not loaded
    cached = tmp_path / "cache" / "ibf-test" / "1" / "bundle.json"
    cached.write_text(cached.read_text().replace('"seed": 7', '"seed": 8'))
    with pytest.raises(ModelLoadError, match="v1: .*checksum mismatch"):
        load_registered(uri, registered[0], tmp_path / "cache")


def test_a_bundle_saved_before_the_member_protocol_still_loads(panel):
    """The format-1 fixture (LSTM + GBDT) loads through the registry and forecasts what the old code did."""
    digest = (OLD_BUNDLE / "digest.txt").read_text().strip()
    bundle = load_bundle(OLD_BUNDLE / "bundle", digest)
    assert list(bundle.members) == ["naive", "drift", "lstm", "gbdt"]
    assert bundle.scaler is not None and bundle.min_usable_sessions() == bundle.config.input_size == 20
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp("2012-07-02")])
    expected = pd.read_csv(OLD_BUNDLE / "forecast.csv", parse_dates=["date"])
    got = forecast(bundle, panel, origins)
    # The LSTM computes in float32: another CPU (AVX-512 vs AVX2 kernels) rounds its sums differently, ~1e-7
    # relative (seen on an AMD EPYC with AVX-512); a format or protocol mistake moves forecasts by far more.
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=False, rtol=1e-5, atol=1e-9)


def test_gbdt_only_bundle_needs_one_session_and_the_drift_window(gbdt_bundle):
    assert list(gbdt_bundle.members) == ["naive", "drift", "gbdt"]
    assert gbdt_bundle.min_usable_sessions() == 1
    assert gbdt_bundle.lookback_sessions() == FAST.drift_baseline_sessions + LOOKBACK_MARGIN


def test_select_keeps_short_symbols_for_gbdt_the_neural_series_leave_them_out_with_a_reason(panel):
    from ibf_core.models import neural

    short = panel[(panel["symbol"] != "IBM") | (panel["date"] >= "2011-12-01")].assign(rsi_14=np.nan)
    chosen = select(short, CUTOFF, FAST)
    assert chosen.symbols == SYMBOLS and not chosen.excluded  # GBDT learns from every origin with a target
    assert set(chosen.train["symbol"]) == set(chosen.symbols)
    assert chosen.train["date"].max() <= pd.Timestamp(chosen.span["train_end"])
    assert chosen.data["date"].max() <= pd.Timestamp(CUTOFF)
    assert chosen.inputs.scaler is None  # no GBDT-only member reads the scaled neural inputs
    assert "rsi_14" in chosen.dropped_features and "rsi_14" not in chosen.inputs.features
    assert chosen.plan.note is None and chosen.plan.validation == FAST.validation_sessions  # long history: as configured
    tiny = select(short, CUTOFF, TINY_NEURAL)
    hist = list(tiny.inputs.scaler.center)
    grid, excluded = neural.training_series(tiny.train, tiny.config, hist, neural.future_known_features())
    need = TINY_NEURAL.input_size + TINY_NEURAL.early_stopping_sessions + 1
    assert set(excluded) == {"IBM"} and excluded["IBM"].endswith(f"< {need} needed")
    assert set(grid["symbol_key"]) == {"AAPL", "GOOG", "MSFT"}
    scaled = select(panel, CUTOFF, TINY_NEURAL).inputs.scaler
    assert scaled is not None and list(scaled.center) == list(TINY_NEURAL.neural_features)


def test_member_names_come_from_the_registry():
    from ibf_core.models import NEURAL_MEMBERS, TRAINED_MEMBERS

    assert NEURAL_MEMBERS == ("lstm", "tft") and TRAINED_MEMBERS == (
        "lstm", "tft", "gbdt", "gbdt_rank", "reversal_1", "reversal_5", "momentum_20", "momentum_12_1"
    )
    assert member_class("lstm").folder == "neural/lstm" and member_class("gbdt").folder == "gbdt"
    assert not member_class("naive").trained and member_class("drift").folder is None
    with pytest.raises(ValueError, match=r"unknown member\(s\) \['naive'\]"):
        ModelConfig(members=("naive",))  # baselines are always in a bundle, never configured
    with pytest.raises(ValueError, match="repeat"):
        ModelConfig(members=("gbdt", "gbdt"))
    with pytest.raises(ValueError, match="already registered"):
        register(type("Other", (member_class("gbdt"),), {"name": "gbdt"}))
    # training, prediction and the bundle name no member: they ask the registry
    for module in ("training", "predict", "bundle"):
        source = (ROOT / "ibf_core" / "models" / f"{module}.py").read_text()
        assert "NEURAL_MEMBERS" not in source and not any(f'"{m}"' in source for m in ("lstm", "tft", "gbdt", "naive", "drift"))


def test_model_config_defaults_are_the_settings_defaults():
    from ibf_core.settings import Settings, get_settings

    fields = Settings.model_fields
    config = ModelConfig()
    assert config.members == tuple(fields["model_members"].get_default(call_default_factory=True))
    assert (config.max_steps, config.input_size, config.validation_sessions, config.seed) == tuple(
        fields[f"model_{name}"].default for name in ("max_steps", "input_size", "validation_sessions", "seed")
    )
    assert ModelConfig.from_settings(get_settings()) == config  # no IBF_* variable set (conftest)


class Ridge(Member):
    """A member defined outside ibf_core: ridge regression of each h-day return on two raw features."""

    name = "ridge"
    folder = "ridge"
    features = ("logret_5", "rsi_14")

    def __init__(self, inputs: Inputs, coef: dict[int, np.ndarray] | None = None) -> None:
        super().__init__(inputs)
        self.coef = coef or {}

    def design(self, rows: pd.DataFrame) -> np.ndarray:
        x = np.nan_to_num(rows[list(self.features)].to_numpy(dtype=np.float64))
        return np.column_stack([np.ones(len(rows)), x])

    def fit(self, train: pd.DataFrame, device: str = "cpu") -> dict:
        for h in self.config.horizons:
            rows = train[np.isfinite(train[f"target_{h}"].to_numpy(dtype=np.float64))]
            x, y = self.design(rows), rows[f"target_{h}"].to_numpy()
            self.coef[h] = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)
        return {"seconds": 0.0, "steps": 1, "rows": len(train)}

    def predict(self, panel: pd.DataFrame, origins: pd.DataFrame) -> pd.DataFrame:
        return self._columns({h: self.design(origins) @ self.coef[h] for h in self.config.horizons})

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "coef.json").write_text(json.dumps({str(h): c.tolist() for h, c in self.coef.items()}))

    @classmethod
    def load(cls, folder: Path, inputs: Inputs) -> "Ridge":
        data = json.loads((folder / "coef.json").read_text())
        return cls(inputs, {int(h): np.array(c) for h, c in data.items()})


@pytest.fixture
def ridge():
    register(Ridge)
    yield Ridge
    unregister("ridge")


def test_a_registered_member_trains_predicts_saves_and_loads_with_no_other_change(tmp_path, panel, ridge):
    config = ModelConfig(members=("ridge", "gbdt"), gbdt_rounds=40)
    bundle = train_models(panel, CUTOFF, config)
    assert list(bundle.members) == ["naive", "drift", "ridge", "gbdt"]
    assert bundle.scaler is None and set(bundle.facts["members"]) == {"ridge", "gbdt"}
    assert all(set(choice["weights"]) == {"ridge", "gbdt"} for choice in bundle.ensemble.values())
    assert {"ridge", "ensemble"} <= set(bundle.conformal)
    assert {"ridge", "ensemble"} <= set(pd.DataFrame(bundle.validation)["member"])
    origins = origin_rows(panel, SYMBOLS, [pd.Timestamp("2012-07-02")])
    long = forecast(bundle, panel, origins)
    fitted = bundle.members["ridge"]
    np.testing.assert_allclose(long[(long["member"] == "ridge") & (long["horizon"] == 5)]["pred"], fitted.design(origins) @ fitted.coef[5])
    table = predictions_table(long, origins, bundle, "1")
    assert "pred_ridge" in table and np.isfinite(table["pred_ridge"]).all()
    digest = save_bundle(bundle, tmp_path / "r")
    assert (tmp_path / "r" / "ridge" / "coef.json").is_file()
    pd.testing.assert_frame_equal(long, forecast(load_bundle(tmp_path / "r", digest), panel, origins))
    unregister("ridge")  # a process that does not know the member refuses the bundle with its name
    with pytest.raises(ModelLoadError, match=r"unknown member\(s\) \['ridge'\]"):
        load_bundle(tmp_path / "r", digest)


def test_a_bundle_with_factor_members_is_logged_and_registered(tmp_path, panel):
    """Factor members record no fitting of their own: every member's fit is timed by the trainer, so the registry
    logs `train_seconds_<member>` for all of them (a default-members `ibf train` failed with KeyError 'seconds')."""
    from ibf_core.models.registry import ensure_experiment, log_and_register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_experiment(uri, "factors", tmp_path / "artifacts")
    mlflow.set_experiment("factors")
    bundle = train_models(panel, CUTOFF, ModelConfig(members=("gbdt", "reversal_5", "momentum_20"), gbdt_rounds=40))
    assert all(bundle.facts["members"][name]["seconds"] >= 0 for name in ("gbdt", "reversal_5", "momentum_20"))
    with mlflow.start_run():
        registered = log_and_register(bundle, "ibf-factors", tmp_path / "work")
    metrics = mlflow.get_run(registered.run_id).data.metrics
    assert {"train_seconds_gbdt", "train_seconds_reversal_5", "train_seconds_momentum_20"} <= set(metrics)


def test_a_member_without_history_by_design_is_named_not_a_failed_validation(panel):
    """A universe loaded with under a year of history: 12-1 momentum (253 sessions) forecasts nothing. The bundle
    says so and the `validation_complete` rule excuses it by name; a trained member without metrics is not excused."""
    from ibf_core.models.training import validation_gaps

    short = panel[panel["date"] > pd.Timestamp(CUTOFF) - pd.Timedelta(days=300)].reset_index(drop=True)
    bundle = train_models(short, CUTOFF, ModelConfig(members=("gbdt", "momentum_12_1"), gbdt_rounds=40))
    excused, unexplained = validation_gaps(bundle)
    assert excused == {"momentum_12_1": list(bundle.config.horizons)} and unexplained == {}
    assert set(bundle.facts["intervals_left_out"]) == {"momentum_12_1"}
    bundle.validation[0] = {**bundle.validation[0], "member": "gbdt", "mae": float("nan")}
    assert validation_gaps(bundle)[1] == {"gbdt": [bundle.validation[0]["horizon"]]}


def test_member_names_table_matches_the_member_classes():
    """Settings validate against ``names`` without importing the members; the table must say what the classes say."""
    from ibf_core.models import members, names

    assert names.BUILTIN_MEMBERS == {n: (c.trained, c.neural) for n, c in members.registered().items() if n in names.BUILTIN_MEMBERS}
    assert list(names.BUILTIN_MEMBERS) == [n for n in members.registered() if n in names.BUILTIN_MEMBERS]
    assert set(members.registered()) >= set(names.BUILTIN_MEMBERS)
