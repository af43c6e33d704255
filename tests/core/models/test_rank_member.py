"""The cross-sectional rank member ``gbdt_rank``: ranks per session, rank IC, returns, save/load, no look-ahead."""

import datetime as dt
import json
import time

import numpy as np
import pandas as pd
import pytest

from ibf_core.evaluation.metrics import mean_rank_ic

from ibf_core.calendar import all_sessions, trading_days
from ibf_core.features.pipeline import compute_features
from ibf_core.models import gbdt
from ibf_core.models.bundle import load_bundle, save_bundle
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel
from ibf_core.models.members import Inputs, member_class
from ibf_core.models.predict import forecast, origin_rows
from ibf_core.models.training import train_models
from ibf_core.sources.sample import load_sample_bars

SYMBOLS = ["AAPL", "GOOG", "IBM", "MSFT"]
CUTOFF = dt.date(2012, 6, 29)
RANKED = ModelConfig(members=("gbdt", "gbdt_rank"), gbdt_rounds=40)
FEATURES = ["signal", "noise_level", "noise"]


def drifting_panel(n_symbols: int = 20, n_sessions: int = 500, seed: int = 0) -> pd.DataFrame:
    """Next-session returns follow the cross-sectional rank of ``signal``, whose level drifts far over time."""
    rng = np.random.default_rng(seed)
    sessions = all_sessions()
    first = int(sessions.searchsorted(pd.Timestamp("2015-01-02")))
    session = np.arange(first, first + n_sessions)
    level = 0.02 * np.arange(n_sessions) + np.cumsum(rng.normal(0, 0.05, n_sessions))  # 0 -> ~10: out of range later
    z = rng.normal(size=(n_sessions, n_symbols))
    u = z.argsort(axis=1).argsort(axis=1) / (n_symbols - 1) - 0.5  # the rank of z that session, in [-0.5, 0.5]
    market = rng.normal(0, 0.003, (n_sessions, 1))
    ret = 0.01 * u + market + rng.normal(0, 0.01, (n_sessions, n_symbols))
    frames = [
        pd.DataFrame(
            {
                "symbol": f"S{i:02d}",
                "date": sessions[session],
                "session": session,
                "signal": level + z[:, i],
                "noise_level": level + rng.normal(size=n_sessions),
                "noise": rng.normal(size=n_sessions),
                "target_1": ret[:, i],
            }
        )
        for i in range(n_symbols)
    ]
    return pd.concat(frames, ignore_index=True).sort_values(["symbol", "session"]).reset_index(drop=True)


def held_out_rank_ic(pred: np.ndarray, rows: pd.DataFrame) -> float:
    """Mean per-session Spearman correlation of ``pred`` with the realized 1-day return (a constant session: 0)."""
    frame = pd.DataFrame({"s": rows["session"].to_numpy(), "p": pred, "r": rows["target_1"].to_numpy()})
    ics = frame.groupby("s").apply(lambda g: g["p"].corr(g["r"], method="spearman"), include_groups=False)
    return float(ics.fillna(0.0).mean())


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    sample = load_sample_bars()
    bars = sample[sample["symbol"].isin(SYMBOLS) & (sample["date"] >= "2010-01-01")].reset_index(drop=True)
    return build_panel(bars, compute_features(bars, benchmark=None), RANKED.horizons)


@pytest.fixture(scope="module")
def ranked_bundle(panel):
    return train_models(panel, CUTOFF, RANKED)


def test_centred_ranks_per_session():
    values = pd.DataFrame({"a": [3.0, 1.0, 2.0, np.nan, 5.0, 7.0], "b": [1.0, 1.0, 1.0, 2.0, np.nan, 9.0]})
    sessions = np.array([0, 0, 0, 0, 1, 2])
    out = gbdt.centred_rank(values, sessions)
    np.testing.assert_allclose(out["a"].to_numpy()[:3], [0.5, -0.5, 0.0])  # rank among the finite values
    assert np.isnan(out["a"].iloc[3])  # NaN stays NaN
    assert out["a"].iloc[4] == 0.0 and out["a"].iloc[5] == 0.0  # alone that session: 0
    np.testing.assert_allclose(out["b"].to_numpy()[:4], [-1 / 6, -1 / 6, -1 / 6, 0.5])  # ties share the mean rank
    assert np.isnan(out["b"].iloc[4])
    rows = pd.DataFrame({"session": [0, 0, 0, 1, 1], "target_1": [0.01, -0.02, 0.0, 0.03, -0.01]})
    label = gbdt.rank_label(rows, 1)
    np.testing.assert_allclose(label[:3], [0.5, -0.5, 0.0])
    assert np.isnan(label[3:]).all()  # two symbols cannot be ranked: no label, left out of fitting
    # the early-stopping metric is the mean per-session Spearman correlation (sessions with 3+ pairs)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"s": np.repeat(np.arange(30), 7), "p": rng.normal(size=210), "y": rng.normal(size=210)})
    frame.loc[frame.index % 7 > 1, "p"] += frame["y"]
    expected = frame.groupby("s").apply(lambda g: g["p"].corr(g["y"], method="spearman"), include_groups=False).mean()
    assert mean_rank_ic(frame["p"].to_numpy(), frame["y"].to_numpy(), frame["s"].to_numpy()) == pytest.approx(expected)


def test_rank_member_beats_gbdt_on_held_out_rank_ic_when_levels_drift():
    """The feature's level leaves the training range; its cross-sectional rank keeps predicting the returns."""
    data = drifting_panel()
    config = ModelConfig(horizons=(1,), members=("gbdt", "gbdt_rank"), gbdt_rounds=200)
    cut = int(data["session"].min()) + 400
    train = data[data["session"] < cut - 1]  # the last training target ends before the held-out origins
    test = data[data["session"] >= cut]
    inputs = Inputs(config, None, 0.01, FEATURES)
    ic, seconds, preds = {}, {}, {}
    for name in ("gbdt", "gbdt_rank"):
        member = member_class(name)(inputs)
        started = time.perf_counter()
        facts = member.fit(train)
        seconds[name] = time.perf_counter() - started
        preds[name] = member.predict(data, test)["h1"].to_numpy()
        ic[name] = held_out_rank_ic(preds[name], test)
    print(f"held-out rank IC {ic}, fit seconds {seconds}")
    assert ic["gbdt_rank"] > 0.15 and ic["gbdt_rank"] > ic["gbdt"] + 0.1
    # the output is an h-day return: centred per session, dispersion of the true cross-sectional effect (0.01 x u)
    scale = facts["return_scale"]["1"]
    assert scale > 0 and not facts["unranked_horizons"]
    per_session = pd.Series(preds["gbdt_rank"]).groupby(test["session"].to_numpy()).mean()
    assert per_session.abs().max() < 1e-3
    assert 0.3 * 0.0029 < preds["gbdt_rank"].std() < 3 * 0.0029


def test_it_joins_the_ensemble_and_round_trips_exactly(tmp_path, panel, ranked_bundle):
    assert list(ranked_bundle.members) == ["naive", "drift", "gbdt", "gbdt_rank"]
    for h, choice in ranked_bundle.ensemble.items():
        assert set(choice["weights"]) == {"gbdt", "gbdt_rank"}
    table = pd.DataFrame(ranked_bundle.validation)
    assert set(table["member"]) == {"naive", "drift", "gbdt", "gbdt_rank", "ensemble"}
    facts = ranked_bundle.facts["members"]["gbdt_rank"]
    assert set(facts["return_scale"]) == {str(h) for h in RANKED.horizons} and not facts["unranked_horizons"]
    save_bundle(ranked_bundle, tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "b" / "gbdt_rank").iterdir())
    assert files == sorted([*(f"h{h}.txt" for h in RANKED.horizons), "rank.json"])
    meta = json.loads((tmp_path / "b" / "gbdt_rank" / "rank.json").read_text())
    assert meta["scales"] == facts["return_scale"] and meta["min_symbols"] == gbdt.MIN_RANK_SYMBOLS
    loaded = load_bundle(tmp_path / "b")
    origins = origin_rows(panel, SYMBOLS, trading_days("2012-07-02", "2012-07-31"))
    pd.testing.assert_frame_equal(forecast(ranked_bundle, panel, origins), forecast(loaded, panel, origins))
    pred = forecast(loaded, panel, origins)
    rank = pred[pred["member"] == "gbdt_rank"]
    assert np.isfinite(rank["pred"]).all() and rank["pred"].abs().max() < 0.5


def test_scrambling_data_after_the_cutoff_changes_no_forecast_before_it(panel, ranked_bundle):
    future = panel["date"] > pd.Timestamp(CUTOFF)
    poisoned = panel.copy()
    rng = np.random.default_rng(3)
    numeric = [c for c in panel.columns if c not in ("symbol", "date", "session") and panel[c].dtype != bool]
    poisoned.loc[future, numeric] = rng.normal(size=(int(future.sum()), len(numeric)))
    again = train_models(poisoned, CUTOFF, RANKED)
    origins = origin_rows(panel, SYMBOLS, trading_days("2012-06-01", "2012-06-29"))
    # the poisoned panel feeds both the retrained bundle and the ranks of every origin's session
    pd.testing.assert_frame_equal(forecast(ranked_bundle, panel, origins), forecast(again, poisoned, origins))


def test_one_symbol_scores_zero_and_a_universe_too_small_to_rank_forecasts_zero(panel, ranked_bundle):
    member = ranked_bundle.members["gbdt_rank"]
    alone = origin_rows(panel, ["IBM"], [pd.Timestamp("2012-07-02")])
    one = member.predict(panel[panel["symbol"] == "IBM"], alone)
    assert (one.to_numpy() == 0.0).all()  # one symbol that session: nothing to rank against
    pair = panel[panel["symbol"].isin(["AAPL", "IBM"]) & (panel["date"] <= "2012-06-29")]
    small = member_class("gbdt_rank")(member.inputs)
    facts = small.fit(pair)
    assert set(facts["unranked_horizons"]) == {str(h) for h in RANKED.horizons} and not small.boosters
    assert "no cross-section to rank" in facts["unranked_horizons"]["1"]
    rows = pair.tail(4)
    assert (small.predict(pair, rows).to_numpy() == 0.0).all()
