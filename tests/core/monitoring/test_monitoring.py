"""Matured-forecast outcomes, rolling performance and the retrain rule, against hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from ibf_core.monitoring.scores import DriftPolicy, performance_rows, retrain_decision
from ibf_core.monitoring.outcomes import matured_outcomes, rolling_performance

DAYS = pd.to_datetime(["2012-06-01", "2012-06-04", "2012-06-05", "2012-06-06"])


def bars():
    adj = {"AAA": [100, 101, 99, 102], "BBB": [50, 50, 51, 52]}
    return pd.DataFrame([{"symbol": s, "date": d, "close": p, "adj_close": p} for s, ps in adj.items() for d, p in zip(DAYS, ps)])


def predictions():
    rows = []
    for s, pred in (("AAA", 0.02), ("BBB", -0.01)):
        for i in range(3):
            rows.append({"symbol": s, "date": DAYS[i], "horizon": 1, "target_date": DAYS[i + 1], "pred_return": pred,
                         "pred_price": 0.0, "lower_80": -0.015, "upper_80": 0.015, "lower_95": -0.03, "upper_95": 0.03})
    frame = pd.DataFrame(rows)
    close = bars().set_index(["symbol", "date"])["close"]
    frame["pred_price"] = [close[(s, d)] * np.exp(r) for s, d, r in zip(frame["symbol"], frame["date"], frame["pred_return"])]
    return frame


def test_matured_outcomes_by_hand():
    out = matured_outcomes(predictions(), bars(), DAYS[2])  # only targets up to 06-05 have matured
    assert len(out) == 4
    aaa = out[out["symbol"] == "AAA"].sort_values("date")
    np.testing.assert_allclose(aaa["realized_return"], [np.log(101 / 100), np.log(99 / 101)])
    np.testing.assert_allclose(aaa["abs_error"], [abs(0.02 - np.log(1.01)), abs(0.02 - np.log(99 / 101))])
    assert aaa["direction_hit"].tolist() == [1.0, 0.0]
    assert aaa["hit_80"].tolist() == [1.0, 0.0]  # +0.995% inside +-1.5%, -2.0% outside
    bbb = out[out["symbol"] == "BBB"].sort_values("date")
    assert np.isnan(bbb["direction_hit"].iloc[0])  # no move: no direction to hit
    np.testing.assert_allclose(bbb["pct_error"].iloc[1], abs(50 * np.exp(-0.01) - 51) / 51)


def test_rolling_performance_mase_and_rank_ic():
    out = matured_outcomes(predictions(), bars(), DAYS[3])
    perf = rolling_performance(out, DAYS[3], window=30, horizon=1).set_index("symbol")
    aaa = out[out["symbol"] == "AAA"]
    assert perf.loc["AAA", "n"] == 3
    np.testing.assert_allclose(perf.loc["AAA", "mase"], aaa["abs_error"].mean() / aaa["realized_return"].abs().mean())
    assert np.isnan(perf.loc["*", "rank_ic"])  # two symbols per date: too few for a cross-sectional IC


def test_no_matured_forecasts_is_a_skip_not_a_breach():
    rows = performance_rows("AAA", matured_outcomes(predictions(), bars(), DAYS[0]), DAYS[0], DriftPolicy())
    assert {r["detector"] for r in rows} >= {"perf_mase", "perf_coverage_80", "cusum"}
    assert all(r["skipped_reason"] and not r["breached"] and r["statistic"] is None for r in rows)


def history(flags, detector="perf_mase", skipped=()):
    days = pd.bdate_range("2012-06-01", periods=len(flags))
    return pd.DataFrame({"symbol": "AAA", "date": days, "detector": detector, "breached": flags, "p_value": None,
                         "skipped_reason": [("missing" if i in skipped else None) for i in range(len(flags))]}), days


@pytest.mark.parametrize(
    ("flags", "skipped", "due"),
    [([False, True, True, True], (), True), ([True, False, True, True], (), False), ([True, True, True, True], (3,), False)],
)
def test_performance_rule_needs_consecutive_real_breaches(flags, skipped, due):
    frame, days = history(flags, skipped=skipped)
    decision = retrain_decision(frame, days[-1], DriftPolicy(consecutive=3))
    assert decision["retrain"] is due
    if due:
        assert decision["episode_start"] == days[1].date().isoformat()


def test_mmd_confirmation_uses_benjamini_hochberg_over_the_universe():
    days = pd.bdate_range("2012-06-01", periods=3)
    rows = []
    for d in days:  # one of five symbols with p = 0.003: BH over 5 at 0.01 needs <= 0.002 -> not confirmed
        rows += [{"symbol": s, "date": d, "detector": "mmd", "breached": p < 0.01, "p_value": p, "skipped_reason": None}
                 for s, p in zip("ABCDE", [0.003, 0.4, 0.5, 0.6, 0.7])]
    assert not retrain_decision(pd.DataFrame(rows), days[-1], DriftPolicy())["retrain"]
    for row in rows:
        row["p_value"] = 0.0 if row["symbol"] in "AB" else row["p_value"]
    decision = retrain_decision(pd.DataFrame(rows), days[-1], DriftPolicy())
    assert decision["retrain"] and "A, B" in decision["reasons"][0]
