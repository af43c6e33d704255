"""Sector / industry codes: LightGBM categoricals for gbdt and gbdt_rank, one-hot static covariates for TFT."""

import datetime as dt
import json
import zlib

import numpy as np
import pandas as pd
import pytest

from ibf_core.features.pipeline import compute_features
from ibf_core.models import gbdt, neural
from ibf_core.models.bundle import load_bundle, save_bundle
from ibf_core.models.config import CATEGORICAL_FEATURES, ModelConfig
from ibf_core.models.dataset import build_panel
from ibf_core.models.members import Inputs, member_class
from ibf_core.models.predict import forecast, origin_rows
from ibf_core.models.training import select, train_models
from ibf_core.sources.sample import load_sample_bars

SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]
CUTOFF = dt.date(2012, 6, 29)
SECTOR = {"AAPL": "TECHNOLOGY", "GOOG": "COMMUNICATION SERVICES", "IBM": "TECHNOLOGY", "MSFT": "TECHNOLOGY"}
INDUSTRY = {"AAPL": "CONSUMER ELECTRONICS", "GOOG": "INTERNET CONTENT & INFORMATION", "IBM": "IT SERVICES", "MSFT": "SOFTWARE"}
GBDTS = ModelConfig(members=("gbdt", "gbdt_rank"), gbdt_rounds=40, gbdt_min_leaf=50, gbdt_cat_min_group=50)
TINY_TFT = ModelConfig(members=("tft",), max_steps=2, val_check_steps=100, input_size=20, early_stopping_sessions=20)


def code(name: str) -> float:
    """The feature engineer's code of an Alpha Vantage sector / industry name."""
    return float(zlib.crc32(name.encode()) % 32749 + 1)


def with_codes(panel: pd.DataFrame, sector: dict[str, str] = SECTOR, industry: dict[str, str] = INDUSTRY) -> pd.DataFrame:
    return panel.assign(sector_code=panel["symbol"].map(sector).map(code), industry_code=panel["symbol"].map(industry).map(code))


@pytest.fixture(scope="module")
def plain() -> pd.DataFrame:
    """The panel as the pipeline builds it (code columns present only if the registry has them, NaN without fundamentals)."""
    sample = load_sample_bars()
    bars = sample[sample["symbol"].isin(SYMBOLS) & (sample["date"] >= "2010-01-01")].reset_index(drop=True)
    return build_panel(bars, compute_features(bars, benchmark=None), GBDTS.horizons)


@pytest.fixture(scope="module")
def coded(plain) -> pd.DataFrame:
    return with_codes(plain)


@pytest.fixture(scope="module")
def selection(coded):
    chosen = select(coded, CUTOFF, GBDTS)
    features = [f for f in chosen.inputs.features if f not in CATEGORICAL_FEATURES] + list(CATEGORICAL_FEATURES)
    return chosen, Inputs(chosen.inputs.config, None, chosen.inputs.y_sigma, features)


def test_gbdt_members_declare_the_codes_categorical_and_keep_them_across_save_load(tmp_path, coded, selection):
    chosen, inputs = selection
    origins = origin_rows(coded, SYMBOLS, [pd.Timestamp("2012-07-02"), pd.Timestamp("2012-07-03")])
    for name in ("gbdt", "gbdt_rank"):
        member = member_class(name)(inputs)
        facts = member.fit(chosen.train)
        assert facts["categorical"] == {"sector_code": 2, "industry_code": 4}
        assert member.categories == {
            "sector_code": sorted(int(code(s)) for s in set(SECTOR.values())),
            "industry_code": sorted(int(code(s)) for s in INDUSTRY.values()),
        }
        booster = next(iter(member.boosters.values()))
        infos = booster.dump_model()["feature_infos"]
        # a categorical feature lists its categories (dense indices of the vocabulary); a numerical one lists none
        assert sorted(v for v in infos["sector_code"]["values"] if v >= 0) == [0, 1]
        assert sorted(v for v in infos["industry_code"]["values"] if v >= 0) == [0, 1, 2, 3]
        assert infos[inputs.features[0]]["values"] == []
        folder = tmp_path / name
        member.save(folder)
        text = (folder / "h1.txt").read_text()
        indices = [inputs.features.index(c) for c in CATEGORICAL_FEATURES]
        assert f"[categorical_feature: {','.join(map(str, indices))}]" in text
        loaded = member_class(name).load(folder, inputs)
        assert loaded.categories == member.categories
        assert loaded.boosters[1].dump_model()["feature_infos"]["sector_code"] == infos["sector_code"]
        pd.testing.assert_frame_equal(member.predict(coded, origins), loaded.predict(coded, origins))
        # gbdt_rank ranks every other feature, never the codes: they enter as their vocabulary index
        if name == "gbdt_rank":
            x = gbdt.rank_inputs(origins, inputs.features, member.categories)
            j = inputs.features.index("industry_code")
            assert set(x[:, j]) == {0.0, 1.0, 2.0, 3.0}


def test_an_unseen_or_unknown_category_at_predict_time_is_the_missing_category(coded, selection):
    chosen, inputs = selection
    origins = origin_rows(coded, SYMBOLS, [pd.Timestamp("2012-07-02")])
    odd = origins.copy()
    odd["sector_code"] = [code("UTILITIES"), np.nan, code("TECHNOLOGY"), code("ENERGY")]
    odd["industry_code"] = code("NEVER SEEN")
    panel = pd.concat([coded.drop(origins.index), odd]).sort_values(["symbol", "session"])
    for name in ("gbdt", "gbdt_rank"):
        member = member_class(name)(inputs)
        member.fit(chosen.train)
        x = gbdt.matrix(odd, inputs.features, member.categories)
        j = inputs.features.index("sector_code")
        assert np.isnan(x[[0, 1, 3], j]).all() and x[2, j] == member.categories["sector_code"].index(int(code("TECHNOLOGY")))
        assert np.isnan(x[:, inputs.features.index("industry_code")]).all()
        out = member.predict(panel, odd)
        assert out.shape == (4, len(GBDTS.horizons)) and np.isfinite(out.to_numpy()).all()


def test_tft_trains_with_one_hot_static_covariates_and_predicts_finite_values(tmp_path, coded):
    chosen = select(coded, CUTOFF, TINY_TFT)
    features = [*chosen.inputs.features, *(c for c in CATEGORICAL_FEATURES if c not in chosen.inputs.features)]
    inputs = Inputs(chosen.inputs.config, chosen.inputs.scaler, chosen.inputs.y_sigma, features)
    tft = member_class("tft")(inputs)
    facts = tft.fit(chosen.train)
    assert facts["static_covariates"] == {"sector_code": 2, "industry_code": 4}
    columns = neural.static_columns(tft.statics)
    assert len(columns) == 6 and list(tft.model.models[0].stat_exog_list) == columns
    origins = origin_rows(coded, SYMBOLS, [pd.Timestamp("2012-07-02")])
    out = tft.predict(coded, origins)
    assert np.isfinite(out.to_numpy()).all()
    tft.save(tmp_path / "tft")
    saved = json.loads((tmp_path / "tft" / neural.STATIC_FILE).read_text())["one_hot"]
    assert saved == tft.statics
    loaded = member_class("tft").load(tmp_path / "tft", inputs)
    assert loaded.statics == tft.statics
    pd.testing.assert_frame_equal(out, loaded.predict(coded, origins))
    # an unseen sector and an unknown industry: all-zero one-hot rows, still a forecast
    odd = origins.copy()
    odd["sector_code"], odd["industry_code"] = code("UTILITIES"), np.nan
    frame = neural.static_frame(np.array(["x"] * 4, dtype=object), odd, tft.statics)
    assert (frame[columns].to_numpy() == 0).all()
    panel = pd.concat([coded.drop(origins.index), odd]).sort_values(["symbol", "session"])
    assert np.isfinite(loaded.predict(panel, odd).to_numpy()).all()
    # the LSTM keeps its inputs: no static covariates
    assert neural.static_vocabulary("lstm", chosen.train, features) == {}


def test_without_codes_nothing_changes(tmp_path, plain, monkeypatch):
    """All-NaN codes: no categorical handling, no extra files, exactly the forecasts of a registry without them."""
    import ibf_core.features.pipeline as pipeline
    import ibf_core.models.training as training

    nan_codes = plain.assign(sector_code=np.nan, industry_code=np.nan)
    bundle = train_models(nan_codes, CUTOFF, GBDTS)
    assert not set(CATEGORICAL_FEATURES) & set(bundle.gbdt_features)
    assert "categorical" not in bundle.facts["members"]["gbdt"]
    assert bundle.members["gbdt"].categories == {} and bundle.members["gbdt_rank"].categories == {}
    save_bundle(bundle, tmp_path / "b")
    assert not (tmp_path / "b" / "gbdt" / gbdt.CATEGORIES_FILE).exists()
    assert json.loads((tmp_path / "b" / "gbdt_rank" / gbdt.RANK_FILE).read_text())["categories"] == {}
    assert "[categorical_feature: ]" in (tmp_path / "b" / "gbdt" / "h1.txt").read_text()
    # the same panel and registry without the code columns at all (what every bundle before them saw)
    registry = pipeline.feature_columns()
    without_codes = lambda: [c for c in registry if c not in CATEGORICAL_FEATURES]  # noqa: E731
    monkeypatch.setattr(pipeline, "feature_columns", without_codes)
    monkeypatch.setattr(training, "feature_columns", without_codes)  # training imports it at its top
    without = train_models(plain.drop(columns=[c for c in CATEGORICAL_FEATURES if c in plain]), CUTOFF, GBDTS)
    origins = origin_rows(plain, SYMBOLS, [pd.Timestamp("2012-07-02"), pd.Timestamp("2012-07-03")])
    pd.testing.assert_frame_equal(forecast(load_bundle(tmp_path / "b"), nan_codes, origins), forecast(without, plain, origins))
    # a TFT trained without codes has no static covariates (and so writes no static.json)
    assert neural.static_vocabulary("tft", nan_codes, list(CATEGORICAL_FEATURES)) == {}
