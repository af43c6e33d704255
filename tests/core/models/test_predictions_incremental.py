"""predictions forecasts the new session, not the month to date: an origin whose inputs (every universe symbol's
panel rows over the model's look-back, the model version) are unchanged since its rows were stored is carried; a
month predicted day by day equals one full prediction; a changed input re-forecasts exactly the origins that read
it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers.messy_bars import messy_bars
from ibf_core.features.pipeline import compute_features
from ibf_core.features.table import features_spec
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel
from ibf_core.models.inference import predict_rectangle, storable
from ibf_core.models.registry import RegisteredModel
from ibf_core.models.training import train_models
from ibf_core.storage.tables import MARKET_BARS, PREDICTIONS
from ibf_core.storage.warehouse import Warehouse

CONFIG = ModelConfig(members=("lstm", "gbdt"), max_steps=4, val_check_steps=2, gbdt_rounds=30)
KEY = ["symbol", "date", "horizon"]


@pytest.fixture(scope="module")
def world():
    bars = messy_bars(n_symbols=6, sessions=330, vendor_missing=2, gaps=1, seed=11).assign(source="csv")
    features = compute_features(bars, benchmark=None)
    days = [pd.Timestamp(d) for d in np.sort(bars["date"].unique())]
    bundle = train_models(build_panel(bars, features, CONFIG.horizons), days[-30].date(), CONFIG)
    return SimpleNamespace(
        bars=bars, features=features, bundle=bundle, symbols=sorted(bars["symbol"].unique()), month=days[-8:],
        version=RegisteredModel("m", "1", bundle.cutoff, "run", "src", "0" * 64),
    )


def _store(folder, world) -> Warehouse:
    """A warehouse holding the world's bars and features."""
    store = Warehouse(folder)
    lo, hi = world.bars["date"].min().date(), world.bars["date"].max().date()
    store.replace_slice(MARKET_BARS, world.bars, world.symbols, lo, hi)
    store.replace_slice(features_spec(), world.features, world.symbols, lo, hi)
    return store


def _run(store, bundle, versions, symbols, start, end):
    stored = store.read(PREDICTIONS, symbols, start, end)
    result = predict_rectangle(store, versions, lambda _: bundle, symbols, symbols, start, end, stored)
    if result.changed:
        store.replace_slice(PREDICTIONS, storable(result.frame), symbols, start, end)
    return result


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.assign(date=pd.to_datetime(frame["date"]))
    return out[PREDICTIONS.column_names].sort_values(KEY).reset_index(drop=True)


def test_a_month_predicted_day_by_day_carries_the_stored_origins_and_equals_one_full_prediction(world, tmp_path):
    bars, bundle, symbols, version, month = world.bars, world.bundle, world.symbols, world.version, world.month
    store = _store(tmp_path / "daily", world)
    for i, day in enumerate(month):
        result = _run(store, bundle, [version], symbols, month[0].date(), day.date())
        # each day forecasts its new session and carries the ones before
        assert (result.forecast_origins, result.carried_origins) == (1, i)
    daily = _sorted(store.read(PREDICTIONS, symbols, month[0].date(), month[-1].date()))
    assert daily["inputs_digest"].notna().all()

    fresh = _store(tmp_path / "fresh", world)
    full = _run(fresh, bundle, [version], symbols, month[0].date(), month[-1].date())
    assert (full.forecast_origins, full.carried_origins) == (len(month), 0)
    whole = _sorted(fresh.read(PREDICTIONS, symbols, month[0].date(), month[-1].date()))
    assert len(daily) == len(whole) == sum(bars["date"].isin(month)) * len(CONFIG.horizons)
    # The same digests, the same ranks, the same forecasts (batch composition may move the last float bits).
    assert (daily["inputs_digest"] == whole["inputs_digest"]).all()
    assert (daily["rank"] == whole["rank"]).all()
    numbers = [c for c in PREDICTIONS.column_names if whole[c].dtype.kind == "f"]
    np.testing.assert_allclose(daily[numbers].to_numpy(float), whole[numbers].to_numpy(float), rtol=1e-5, atol=1e-9)

    # Run again with nothing new: nothing forecast, nothing written.
    stamp = store.table_stamp(PREDICTIONS)
    again = _run(store, bundle, [version], symbols, month[0].date(), month[-1].date())
    assert (again.forecast_origins, again.carried_origins, again.changed) == (0, len(month), False)
    assert store.table_stamp(PREDICTIONS) == stamp


def test_a_changed_input_or_a_new_model_version_reforecasts_exactly_the_origins_that_read_it(world, tmp_path):
    features, bundle, symbols, version, month = world.features, world.bundle, world.symbols, world.version, world.month
    store = _store(tmp_path / "wh", world)
    _run(store, bundle, [version], symbols, month[0].date(), month[-1].date())
    before = _sorted(store.read(PREDICTIONS, symbols, month[0].date(), month[-1].date()))

    # One symbol's feature on the 5th origin is rewritten: that origin and every later one read it (their
    # look-back covers it), the four before do not.
    changed = features.copy()
    at = (changed["symbol"] == symbols[2]) & (changed["date"] == month[4])
    changed.loc[at, "rsi_14"] = changed.loc[at, "rsi_14"] + 7.0
    store.replace_slice(features_spec(), changed[changed["date"] == month[4]], symbols, month[4].date(), month[4].date())
    result = _run(store, bundle, [version], symbols, month[0].date(), month[-1].date())
    assert (result.forecast_origins, result.carried_origins) == (4, 4)
    after = _sorted(store.read(PREDICTIONS, symbols, month[0].date(), month[-1].date()))
    early = pd.to_datetime(after["date"]) < month[4]
    pd.testing.assert_frame_equal(after[early], before[early])
    assert (after.loc[~early, "inputs_digest"] != before.loc[~early, "inputs_digest"]).all()

    # A newer registered version whose cut-off precedes the last two origins re-forecasts those two only.
    newer = RegisteredModel("m", "2", month[5].date(), "run", "src", "1" * 64)
    result = _run(store, bundle, [version, newer], symbols, month[0].date(), month[-1].date())
    assert (result.forecast_origins, result.carried_origins) == (2, 6)
    final = _sorted(store.read(PREDICTIONS, symbols, month[0].date(), month[-1].date()))
    assert set(final.loc[pd.to_datetime(final["date"]) > month[5], "model_version"]) == {"2"}
    assert set(final.loc[pd.to_datetime(final["date"]) <= month[5], "model_version"]) == {"1"}
