"""Forecasts that do no harm: shrinkage towards the random walk, factor members, the ranking chosen on rank IC."""

import numpy as np
import pandas as pd
import pytest

from ibf_core.calendar import all_sessions
from ibf_core.models import ensemble
from ibf_core.models.bundle import load_bundle, save_bundle
from ibf_core.models.config import ModelConfig
from ibf_core.models.factors import FACTOR_BY_NAME, centred_scores, fit_factor, stein_weight
from ibf_core.models.predict import forecast, predictions_table
from ibf_core.models.training import train_models

FACTOR_MEMBERS = ("reversal_1", "reversal_5", "momentum_20", "momentum_12_1")


def reversal_panel(n_symbols: int = 30, n_sessions: int = 700, kappa: float = 0.5, seed: int = 3) -> pd.DataFrame:
    """Close-only bars through the real feature pipeline; the next-day return reverses the last five shocks
    (correlation with the 5-day reversal about kappa / sqrt(5) ~ 0.22: a strong, planted effect)."""
    from ibf_core.features.pipeline import compute_features
    from ibf_core.models.dataset import build_panel

    rng = np.random.default_rng(seed)
    days = all_sessions()
    days = days[days >= pd.Timestamp("2016-01-04")][:n_sessions]
    shocks = rng.normal(0, 0.015, (n_sessions, n_symbols))
    cumulative = np.vstack([np.zeros((1, n_symbols)), np.cumsum(shocks, axis=0)])
    past = np.array([cumulative[d] - cumulative[max(d - 5, 0)] for d in range(n_sessions)]) / 5.0
    returns = rng.normal(0.0003, 0.008, (n_sessions, 1)) + shocks - kappa * past
    close = 50.0 * np.exp(np.cumsum(returns, axis=0))
    bars = pd.DataFrame({
        "symbol": np.tile([f"S{i:02d}" for i in range(n_symbols)], n_sessions),
        "date": np.repeat(days.to_numpy(), n_symbols),
        "open": np.nan, "high": np.nan, "low": np.nan,
        "close": close.ravel(), "adj_close": close.ravel(), "volume": np.nan,
    }).sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    return build_panel(bars, compute_features(bars, benchmark=None), (1, 5, 20))


def test_shrinkage_serves_the_random_walk_without_evidence():
    rng = np.random.default_rng(0)
    dates = np.repeat(np.arange(200), 30)
    realized = rng.normal(0, 0.02, len(dates))
    noise = rng.normal(0, 0.01, len(dates))
    unrelated = ensemble.shrinkage(noise, realized, dates, h=1, min_independent=10)
    assert unrelated["lambda"] == 0.0 and "random walk" in unrelated["reason"]
    signal = realized * 0.5 + rng.normal(0, 0.01, len(dates))  # a forecast that moves with the outcome
    strong = ensemble.shrinkage(signal, realized, dates, h=1, min_independent=10)
    assert strong["t"] > 10 and 0.9 < strong["lambda"] <= 1.0  # capped at 1: never amplified
    short = np.repeat(np.arange(60), 30)
    few = ensemble.shrinkage(signal[: len(short)], realized[: len(short)], short, h=20, min_independent=10)
    assert few["lambda"] == 0.0 and few["independent_targets"] == 3.0 and "too few" in few["reason"]


def test_a_shrink_of_zero_is_the_random_walk_even_where_members_are_missing():
    frame = pd.DataFrame({"a": [0.01, np.nan, 0.03], "b": [0.02, 0.01, np.nan]})
    choice = {"weights": {"a": 0.5, "b": 0.5}, "shrink": 0.0}
    assert np.array_equal(ensemble.combine(frame, choice), np.zeros(3))
    half = ensemble.combine(frame, {**choice, "shrink": 0.5})
    np.testing.assert_allclose(half, [0.0075, 0.005, 0.015])
    legacy = ensemble.combine(frame, {"weights": {"a": 0.5, "b": 0.5}})  # bundles saved before the shrinkage
    np.testing.assert_allclose(legacy, [0.015, 0.01, 0.03])


def test_ranking_weights_follow_validation_rank_ic_then_the_prior_then_equal():
    rng = np.random.default_rng(1)
    dates = np.repeat(np.arange(120), 40)
    realized = rng.normal(0, 0.02, len(dates))
    frame = pd.DataFrame({
        "date": dates, "realized": realized,
        "good": realized + rng.normal(0, 0.04, len(dates)),  # rank IC ~ 0.45
        "backwards": -realized + rng.normal(0, 0.04, len(dates)),
        "noise": rng.normal(0, 0.02, len(dates)),
    })
    chosen = ensemble.choose_ranking(frame, ["good", "backwards", "noise"], h=1, min_independent=10)
    assert chosen["source"].startswith("validation rank IC")
    assert chosen["weights"]["good"] > 0.9 and "backwards" not in chosen["weights"]  # never reversed on a hunch
    assert chosen["validation"]["backwards"]["rank_ic"] < -0.3
    # h = 20 over 120 dates: 6 independent targets, the validation window cannot judge -> the factors' training IC
    prior = {"noise": {"mean": 0.04, "t": 3.0}, "good": {"mean": None, "t": None}}
    fallback = ensemble.choose_ranking(frame, ["good", "backwards", "noise"], h=20, min_independent=10, prior=prior)
    assert fallback["source"] == "training-window factor rank IC" and fallback["weights"] == {"noise": 1.0}
    assert "too few" in fallback["reason"]
    equal = ensemble.choose_ranking(frame, ["good", "noise"], h=20, min_independent=10)
    assert equal["source"] == "equal (no evidence)" and equal["weights"] == {"good": 0.5, "noise": 0.5}


def test_stein_weight():
    assert stein_weight(0.05, 2.0) == pytest.approx(0.05 * 0.75)
    assert stein_weight(0.05, 0.9) == 0.0 and stein_weight(-0.05, 5.0) == 0.0 and stein_weight(None, 3.0) == 0.0


def test_rank_score_orders_by_the_weighted_member_ranks():
    wide = pd.DataFrame({"a": [1.0, 2.0, 3.0, 5.0, 4.0], "b": [3.0, 2.0, 1.0, np.nan, 1.0]})
    dates = np.array([0, 0, 0, 1, 1])
    score = ensemble.rank_score(wide, dates, {"weights": {"a": 1.0}})
    np.testing.assert_allclose(score, [-0.5, 0.0, 0.5, 0.5, -0.5])
    mixed = ensemble.rank_score(wide, dates, {"weights": {"a": 0.5, "b": 0.5}})
    np.testing.assert_allclose(mixed[:3], [0.0, 0.0, 0.0])  # opposite orders cancel
    np.testing.assert_allclose(mixed[3:], [0.5, -0.25])  # b alone on date 1 is one symbol: centred 0 (neutral)
    assert np.array_equal(ensemble.rank_score(wide, dates, None), np.zeros(5))


def test_factor_member_fits_the_planted_reversal_and_reads_no_later_row():
    panel = reversal_panel()
    reversal = FACTOR_BY_NAME["reversal_5"]
    train = panel[panel["session"] < panel["session"].min() + 500]
    scales, facts = fit_factor(train, reversal, (1, 5, 20))
    assert scales[1] > 0 and facts["training_rank_ic"]["1"]["t"] > 5  # the planted effect, found
    momentum = FACTOR_BY_NAME["momentum_12_1"]
    _, none = fit_factor(train[train["session"] < train["session"].min() + 200], momentum, (1,))
    assert none["rows_with_value"] == 0 and "253 sessions" in none["note"]
    # no look-ahead: scrambling every row after an origin changes nothing at or before it
    day = int(panel["session"].min()) + 600
    before = centred_scores(panel[panel["session"] <= day], reversal)
    scrambled = panel.copy()
    later = scrambled["session"] > day
    scrambled.loc[later, "adj_close"] = np.random.default_rng(9).permutation(scrambled.loc[later, "adj_close"].to_numpy())
    after = centred_scores(scrambled, reversal).loc[before.index]
    pd.testing.assert_series_equal(before, after)


@pytest.fixture(scope="module")
def factor_bundle():
    panel = reversal_panel()
    cutoff = all_sessions()[int(panel["session"].min()) + 560].date()
    config = ModelConfig(members=FACTOR_MEMBERS, horizons=(1, 5, 20), validation_sessions=60)
    return panel, train_models(panel, cutoff, config, importance=False)


def test_bundle_records_the_rules_and_serves_the_fallbacks(factor_bundle, tmp_path):
    panel, bundle = factor_bundle
    one, twenty = bundle.ensemble["1"], bundle.ensemble["20"]
    # h = 1: 60 independent targets and a real effect: the point forecast leaves the random walk and the
    # ranking follows the validation rank IC, led by the planted reversal
    assert one["shrink"] > 0 and one["evidence"]["independent_targets"] == 60.0
    assert one["ranking"]["source"].startswith("validation rank IC")
    assert max(one["ranking"]["weights"], key=one["ranking"]["weights"].get) in ("reversal_1", "reversal_5")
    # h = 20: 3 independent targets -> the random walk and the factors' training-window evidence
    assert twenty["shrink"] == 0.0 and "too few" in twenty["evidence"]["reason"]
    assert not twenty["ranking"]["source"].startswith("validation rank IC")
    assert set(bundle.facts["too_few_independent_targets"]) == {"20"}  # 60 / 5 = 12 >= 10 judges h=5
    assert "random walk" in bundle.facts["too_few_independent_targets"]["20"]
    save_bundle(bundle, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.ensemble == bundle.ensemble
    assert loaded.members["reversal_5"].scales == pytest.approx(bundle.members["reversal_5"].scales)
    origins = panel[panel["date"] == all_sessions()[int(panel["session"].min()) + 600]]
    long = forecast(loaded, panel[panel["date"] <= origins["date"].iloc[0]], origins)
    table = predictions_table(long, origins, loaded, "1")
    at20 = table[table["horizon"] == 20]
    assert (at20["pred_return"] == 0.0).all()  # the random walk is what is served at h = 20
    at1 = table[table["horizon"] == 1].sort_values("rank")
    assert at1["rank_score"].is_monotonic_decreasing  # rank orders the ranking choice, not pred_return
    assert set(at1["rank"]) == set(range(1, len(at1) + 1))
    validation = pd.DataFrame(loaded.validation)
    ens20 = validation[(validation["member"] == "ensemble") & (validation["horizon"] == 20)].iloc[0]
    assert ens20["rel_mae_vs_naive"] == pytest.approx(1.0) and ens20["rank_ic_mean"] is not None


def test_walk_forward_reports_the_ensemble_against_the_random_walk_and_the_best_factor(tmp_path):
    from ibf_core.evaluation.walkforward import walk_forward, write_outputs

    panel = reversal_panel(n_sessions=620)
    config = ModelConfig(members=FACTOR_MEMBERS, horizons=(1, 5, 20), validation_sessions=60)
    result = walk_forward(panel, config, test_days=60)
    one, twenty = result.results["horizons"]["1"]["ensemble"], result.results["horizons"]["20"]["ensemble"]
    # out of sample, on a planted reversal: the shrunk point forecast beats the random walk at h=1 ...
    assert one["rel_mae_vs_naive"] < 1.0 and one["rank_ic_t"] > 2
    # ... and at h=20 (3 independent validation targets) it is the random walk, exactly
    assert twenty["rel_mae_vs_naive"] == pytest.approx(1.0) and twenty["dm_pvalue"] is None
    versus = result.results["versus_factors"]
    assert versus["1"]["best_factor"] in ("reversal_1", "reversal_5") and not versus["1"]["below_by_more_than_noise"]
    fold = result.results["config"]["folds_detail"][0]["ensemble"]
    assert fold["20"]["shrink"] == 0.0 and "too few" in fold["20"]["shrink_reason"]
    from ibf_core.evaluation.walkforward import harm_line

    assert harm_line(result.results, "20").startswith("h=20 ensemble: MAE vs random walk 1.0000 (shrink 0.00)")
    _, report = write_outputs(result, tmp_path / "evaluation.json")
    text = report.read_text()
    assert "## Do no harm: the ensemble against the random walk and the best factor" in text


def test_dense_rank_ics_equal_the_grouped_cross_sectional_ic():
    """The ensemble's choice ranks on dense date x symbol grids; they must give cross_sectional_ic's values."""
    from ibf_core.evaluation.metrics import cross_sectional_ic, dense_rank_ics

    rng = np.random.default_rng(5)
    pred, real = rng.normal(size=(40, 25)), rng.normal(size=(40, 25))
    pred[rng.random(pred.shape) < 0.2] = np.nan
    pred[3, :] = 1.0  # a constant date: dropped by both
    pred[4, 2:] = np.nan  # two pairs: dropped by both
    frame = pd.DataFrame({"date": np.repeat(np.arange(40), 25), "p": pred.ravel(), "r": real.ravel()})
    grouped = cross_sectional_ic(frame, "p", "r", "spearman")
    dense = dense_rank_ics(pred, real)
    assert np.isnan(dense[[3, 4]]).all() and list(grouped.index) == [d for d in range(40) if d not in (3, 4)]
    np.testing.assert_allclose(dense[np.isfinite(dense)], grouped.to_numpy(), atol=1e-12)


def test_below_the_best_factor_counts_independent_targets_and_the_factors_it_was_picked_from():
    from scipy.stats import t as student

    from ibf_core.evaluation.walkforward import below_best_factor_p

    # 120 dates of 20-day targets hold 6 independent ones: t -2.8 on 5 degrees of freedom, best of 4 factors
    few = below_best_factor_p(-2.8, 6.0, 4)
    assert few == pytest.approx(4 * student.cdf(-2.8, 5)) and few > 0.05  # within noise
    # the same t over 120 independent daily targets against one factor is worse than noise
    assert below_best_factor_p(-2.8, 120.0, 1) < 0.01
    assert below_best_factor_p(-2.8, 120.0, 4) > below_best_factor_p(-2.8, 120.0, 1)  # picking the best costs
    assert below_best_factor_p(1.0, 50.0, 4) == 1.0  # capped
