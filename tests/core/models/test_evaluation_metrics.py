"""Hand-checked tests of ibf_core.evaluation.metrics and the markdown evaluation report."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ibf_core.evaluation.metrics import (
    cross_sectional_ic,
    diebold_mariano,
    directional_accuracy,
    ic_summary,
    interval_coverage,
    member_metrics,
    newey_west_variance,
    skill_verdict,
    topk_spread,
    winkler_score,
)
from ibf_core.evaluation.report import write_report

REQUIRED_KEYS = {
    "n", "mae", "rmse", "rel_mae_vs_naive", "oos_r2", "da", "da_pvalue", "dm_stat", "dm_pvalue", "ic_mean",
    "rank_ic_mean", "rank_ic_t", "coverage_80", "coverage_95", "topk_spread_net", "oos_r2_vs_drift",
    "dm_stat_sq", "dm_pvalue_sq", "da_n", "da_ci_low", "da_ci_high", "ic_std", "icir", "ic_t", "rank_ic_std",
    "rank_ic_positive_share", "n_dates", "winkler_80", "winkler_95", "topk_spread_gross", "topk_turnover",
}  # fmt: skip


# ---------------------------------------------------------------- Newey-West


def test_newey_west_variance_matches_hand_formula():
    # x = 1..5, mean 3, deviations [-2, -1, 0, 1, 2]
    # gamma_0 = (4 + 1 + 0 + 1 + 4) / 5 = 2.0
    # gamma_1 = ((-1)(-2) + 0(-1) + 1*0 + 2*1) / 5 = 4 / 5 = 0.8
    # lags = 1: Bartlett weight 1 - 1/2 = 0.5 -> 2.0 + 2 * 0.5 * 0.8 = 2.8
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert newey_west_variance(x, 1) == pytest.approx(2.8)
    assert newey_west_variance(x, 0) == pytest.approx(2.0)
    assert newey_west_variance(x, -3) == pytest.approx(np.var(x))
    # lags = 2: gamma_2 = ((0)(-2) + 1(-1) + 2*0) / 5 = -0.2, weight 1 - 2/3 = 1/3, gamma_1 weight 2/3
    assert newey_west_variance(x, 2) == pytest.approx(2.0 + 2 * (2 / 3) * 0.8 + 2 * (1 / 3) * (-0.2))


# ---------------------------------------------------------------- Diebold-Mariano


def test_diebold_mariano_matches_manual_computation():
    loss_model = np.array([1.0, 2.0, 1.0, 3.0, 1.0, 2.0])
    loss_base = np.array([2.0, 2.0, 3.0, 3.0, 2.0, 4.0])
    h = 2
    # d = [-1, 0, -2, 0, -1, -2], T = 6, mean -1, deviations [0, 1, -1, 1, 0, -1]
    # gamma_0 = 4/6, gamma_1 = (0 - 1 - 1 + 0 + 0) / 6 = -1/3, NW(1 lag) = 2/3 + 2 * 0.5 * (-1/3) = 1/3
    # DM = -1 / sqrt((1/3) / 6) = -sqrt(18); HLN factor = (6 + 1 - 4 + 2/6) / 6 = 5/9; DM* = -sqrt(10)
    d = loss_model - loss_base
    T = len(d)
    dev = d - d.mean()
    gamma0 = np.sum(dev * dev) / T
    gamma1 = np.sum(dev[1:] * dev[:-1]) / T
    lrv = gamma0 + 2 * (1 - 1 / 2) * gamma1
    dm = d.mean() / np.sqrt(lrv / T)
    hln = np.sqrt((T + 1 - 2 * h + h * (h - 1) / T) / T)
    expected_stat = dm * hln
    expected_p = stats.t.cdf(expected_stat, T - 1)

    stat, pvalue = diebold_mariano(loss_model, loss_base, h)
    assert expected_stat == pytest.approx(-math.sqrt(10))
    assert stat == pytest.approx(expected_stat)
    assert pvalue == pytest.approx(expected_p)
    assert pvalue < 0.05  # the model's loss is smaller: one-sided p is small

    # swapping the roles flips the sign; the one-sided p is then large
    stat_rev, p_rev = diebold_mariano(loss_base, loss_model, h)
    assert stat_rev == pytest.approx(-stat)
    assert p_rev == pytest.approx(1 - pvalue)


def test_diebold_mariano_degenerate_cases_are_nan():
    losses = np.array([0.3, 0.1, 0.5, 0.2, 0.4])
    # identical losses: d == 0, zero variance -> (nan, nan) by definition
    stat, pvalue = diebold_mariano(losses, losses.copy(), 1)
    assert math.isnan(stat) and math.isnan(pvalue)
    # fewer than 3 finite pairs after dropping NaN
    stat, pvalue = diebold_mariano(np.array([1.0, np.nan, 2.0]), np.array([0.5, 1.0, np.nan]), 1)
    assert math.isnan(stat) and math.isnan(pvalue)


def test_diebold_mariano_drops_nan_pairs():
    loss_model = np.array([1.0, 2.0, np.nan, 1.0, 3.0, 1.0, 2.0])
    loss_base = np.array([2.0, 2.0, 9.0, 3.0, 3.0, 2.0, 4.0])
    clean = diebold_mariano(np.array([1.0, 2.0, 1.0, 3.0, 1.0, 2.0]), np.array([2.0, 2.0, 3.0, 3.0, 2.0, 4.0]), 2)
    assert diebold_mariano(loss_model, loss_base, 2) == pytest.approx(clean)


# ---------------------------------------------------------------- directional accuracy


def test_directional_accuracy_seven_of_ten():
    pred = np.array([1.0] * 10 + [0.0, np.nan, 2.0])
    real = np.array([0.5] * 7 + [-0.5] * 3 + [1.0, 1.0, 0.0])  # last three rows excluded (zero / NaN)
    out = directional_accuracy(pred, real)
    assert out["da"] == pytest.approx(0.7)
    assert out["da_n"] == 10
    assert out["da_pvalue"] == pytest.approx(stats.binom.sf(6, 10, 0.5))
    # Wilson 95%: (p + z^2/2n) / (1 + z^2/n) -+ z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    z, p, n = stats.norm.ppf(0.975), 0.7, 10
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert out["da_ci_low"] == pytest.approx(centre - half)
    assert out["da_ci_high"] == pytest.approx(centre + half)
    assert out["da_ci_low"] == pytest.approx(0.3968, abs=1e-4)
    assert out["da_ci_high"] == pytest.approx(0.8922, abs=1e-4)

    # a training up-rate of 0.6 raises the bar; one below 0.5 is floored at 0.5
    assert directional_accuracy(pred, real, p0=0.6)["da_pvalue"] == pytest.approx(stats.binom.sf(6, 10, 0.6))
    assert directional_accuracy(pred, real, p0=0.4)["da_pvalue"] == pytest.approx(stats.binom.sf(6, 10, 0.5))
    assert directional_accuracy(pred, real, p0=0.6)["da_pvalue"] > out["da_pvalue"]


def test_directional_accuracy_empty():
    out = directional_accuracy(np.zeros(4), np.ones(4))
    assert out == {"da": None, "da_n": 0, "da_pvalue": None, "da_ci_low": None, "da_ci_high": None}


# ---------------------------------------------------------------- cross-sectional IC


def _ic_frame() -> pd.DataFrame:
    symbols = ["A", "B", "C", "D"]
    rows = []
    # d1: monotone (Spearman 1); Pearson by hand: x dev [-1.5,-.5,.5,1.5], y [1,2,3,10] dev [-3,-2,-1,6]
    #     sxy = 4.5 + 1 - 0.5 + 9 = 14, sxx = 5, syy = 50 -> r = 14 / sqrt(250)
    # d2: reversed (Spearman -1, Pearson -1)
    # d3: real ranks [1,3,2,4]: Spearman = 1 - 6 * 2 / (4 * 15) = 0.8
    data = {
        "2024-01-02": ([1, 2, 3, 4], [1, 2, 3, 10]),
        "2024-01-03": ([1, 2, 3, 4], [4, 3, 2, 1]),
        "2024-01-04": ([1, 2, 3, 4], [10, 30, 20, 40]),
        "2024-01-05": ([1, 1, 1, 1], [1, 2, 3, 4]),  # constant prediction -> dropped
    }
    for date, (pred, real) in data.items():
        rows += [{"date": date, "symbol": s, "p": p, "r": r} for s, p, r in zip(symbols, pred, real)]
    rows += [{"date": "2024-01-01", "symbol": s, "p": p, "r": r} for s, p, r in zip("AB", [1, 2], [1, 2])]  # < 3
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1.0, random_state=1)  # row order must not matter


def test_cross_sectional_ic_spearman_and_pearson():
    frame = _ic_frame()
    rank_ic = cross_sectional_ic(frame, "p", "r", "spearman")
    assert list(rank_ic.index) == ["2024-01-02", "2024-01-03", "2024-01-04"]
    np.testing.assert_allclose(rank_ic.to_numpy(), [1.0, -1.0, 0.8])
    ic = cross_sectional_ic(frame, "p", "r", "pearson")
    third = np.corrcoef([1, 2, 3, 4], [10, 30, 20, 40])[0, 1]
    np.testing.assert_allclose(ic.to_numpy(), [14 / math.sqrt(250), -1.0, third])


def test_ic_summary_t_stat_with_h1():
    ic = pd.Series([0.1, -0.05, 0.2, 0.05])
    out = ic_summary(ic, h=1)
    # mean 0.075; population variance = (0.025^2 + 0.125^2 + 0.125^2 + 0.025^2) / 4 = 0.008125
    values = ic.to_numpy()
    std_pop = np.sqrt(np.mean((values - values.mean()) ** 2))
    assert std_pop**2 == pytest.approx(0.008125)
    assert out["mean"] == pytest.approx(0.075)
    assert out["t"] == pytest.approx(0.075 / (std_pop / math.sqrt(4)))
    assert out["std"] == pytest.approx(np.std(values, ddof=1))
    assert out["icir"] == pytest.approx(0.075 / np.std(values, ddof=1))
    assert out["positive_share"] == pytest.approx(0.75)
    assert out["n_dates"] == 4
    single = ic_summary(pd.Series([0.1]), h=1)
    assert single["std"] is None and single["t"] is None and single["icir"] is None and single["n_dates"] == 1


# ---------------------------------------------------------------- intervals


def test_interval_coverage_and_winkler():
    real = np.array([1.0, 5.0, -1.0, 3.0, np.nan])
    lower = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    upper = np.array([2.0, 4.0, 2.0, 3.0, 1.0])
    # inside: 1 in [0,2] yes, 5 in [0,4] no, -1 in [0,2] no, 3 in [0,3] yes -> 2/4 (NaN row dropped)
    assert interval_coverage(real, lower, upper) == pytest.approx(0.5)
    # alpha 0.2 -> penalty factor 10: scores [2, 4 + 10*1, 2 + 10*1, 3] = [2, 14, 12, 3], mean 31/4
    assert winkler_score(real, lower, upper, 0.2) == pytest.approx(7.75)
    assert interval_coverage(np.array([np.nan]), np.array([0.0]), np.array([1.0])) is None


# ---------------------------------------------------------------- top-k spread


def _topk_frame() -> pd.DataFrame:
    rows = [
        # date 1: long A (pred 4), short D (pred 1): gross 0.02 - (-0.01) = 0.03
        ("d1", "A", 4, 0.02), ("d1", "B", 3, 0.00), ("d1", "C", 2, 0.05), ("d1", "D", 1, -0.01),
        # date 2: long A, short C: gross 0.01 - 0.03 = -0.02; long kept, short changed -> turnover 0.5
        ("d2", "A", 4, 0.01), ("d2", "B", 3, 0.00), ("d2", "C", 1, 0.03), ("d2", "D", 2, 0.00),
        # date 3: long B, short A: gross 0.00 - 0.01 = -0.01; both changed -> turnover 1.0
        ("d3", "A", 1, 0.01), ("d3", "B", 4, 0.00), ("d3", "C", 3, 0.02), ("d3", "D", 2, 0.04),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["date", "symbol", "pred", "real"])


def test_topk_spread_by_hand():
    out = topk_spread(_topk_frame(), "pred", "real", h=1, k=1, cost_bps=10.0)
    # cost = turnover * 2 legs * 2 sides * 10 / 1e4 = turnover * 0.004
    gross = [0.03, -0.02, -0.01]
    turnover = [1.0, 0.5, 1.0]
    net = [g - t * 0.004 for g, t in zip(gross, turnover)]  # [0.026, -0.022, -0.014]
    assert out["topk_periods"] == 3
    assert out["topk_spread_gross"] == pytest.approx(0.0, abs=1e-12)
    assert out["topk_turnover"] == pytest.approx(2.5 / 3)
    assert out["topk_spread_net"] == pytest.approx(np.mean(net))
    assert out["topk_spread_net"] == pytest.approx(-0.01 / 3)


def test_topk_spread_non_overlapping_and_edge_cases():
    # h = 2: rebalance on d1 and d3 only; d3 vs d1: long B (was A), short A (was D) -> turnover 1
    out = topk_spread(_topk_frame(), "pred", "real", h=2, k=1, cost_bps=10.0)
    assert out["topk_periods"] == 2
    assert out["topk_spread_gross"] == pytest.approx((0.03 - 0.01) / 2)
    assert out["topk_turnover"] == pytest.approx(1.0)
    assert out["topk_spread_net"] == pytest.approx((0.03 - 0.01) / 2 - 0.004)
    # k = 3 needs 6 symbols: nothing qualifies
    none = topk_spread(_topk_frame(), "pred", "real", h=1, k=3, cost_bps=10.0)
    assert none == {"topk_spread_gross": None, "topk_spread_net": None, "topk_turnover": None, "topk_periods": 0}
    # ties broken by symbol name: ranking (pred desc, symbol asc) = A, B, C, E, D -> long A, B; short E, D
    tied = pd.DataFrame(
        {
            "date": "d",
            "symbol": ["D", "B", "A", "C", "E"],
            "pred": [0.1, 0.5, 0.5, 0.5, 0.2],
            "real": [0.4, 0.2, 0.1, 0.3, 0.6],
        }
    )
    out = topk_spread(tied, "pred", "real", h=1, k=2, cost_bps=0.0)
    assert out["topk_spread_gross"] == pytest.approx((0.1 + 0.2) / 2 - (0.6 + 0.4) / 2)
    # a constant cross-section carries no ranking: the date is skipped
    flat = tied.assign(pred=0.5)
    assert topk_spread(flat, "pred", "real", h=1, k=1, cost_bps=0.0)["topk_periods"] == 0


# ---------------------------------------------------------------- member metrics


def _member_frame(n_dates: int = 20, n_symbols: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2024-01-01", periods=n_dates)
    frame = pd.DataFrame(
        [(d, f"S{i}") for d in dates for i in range(n_symbols)], columns=["date", "symbol"]
    )
    frame["realized"] = rng.normal(0, 0.02, len(frame))
    frame["lower_80"] = -0.0256
    frame["upper_80"] = 0.0256
    frame["lower_95"] = -0.0392
    frame["upper_95"] = 0.0392
    return frame


def _assert_json_ready(metrics: dict) -> None:
    json.dumps(metrics, allow_nan=False)
    for value in metrics.values():
        assert value is None or isinstance(value, (int, float)) and not isinstance(value, np.generic)


def test_member_metrics_naive_member():
    frame = _member_frame()
    frame["pred"] = 0.0
    metrics = member_metrics(frame, h=1)
    assert REQUIRED_KEYS <= set(metrics)
    _assert_json_ready(metrics)
    assert metrics["n"] == len(frame)
    assert metrics["rel_mae_vs_naive"] == pytest.approx(1.0)
    assert metrics["oos_r2"] == pytest.approx(0.0)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(frame["realized"])))
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(frame["realized"] ** 2)))
    for key in ("da", "da_pvalue", "dm_stat", "dm_pvalue", "ic_mean", "rank_ic_mean", "rank_ic_t", "topk_spread_net"):
        assert metrics[key] is None, key
    assert metrics["oos_r2_vs_drift"] is None  # no drift_pred column
    real = frame["realized"].to_numpy()
    assert metrics["coverage_80"] == pytest.approx(np.mean(np.abs(real) <= 0.0256))
    assert metrics["coverage_95"] == pytest.approx(np.mean(np.abs(real) <= 0.0392))


def test_member_metrics_perfect_forecaster():
    frame = _member_frame()
    frame["pred"] = frame["realized"]
    frame.loc[frame.index[:3], "pred"] = np.nan  # dropped rows
    metrics = member_metrics(frame, h=5)
    assert REQUIRED_KEYS <= set(metrics)
    _assert_json_ready(metrics)
    assert metrics["n"] == len(frame) - 3
    assert metrics["mae"] == pytest.approx(0.0)
    assert metrics["oos_r2"] == pytest.approx(1.0)
    assert metrics["rank_ic_mean"] == pytest.approx(1.0)
    assert metrics["ic_mean"] == pytest.approx(1.0)
    assert metrics["da"] == pytest.approx(1.0)
    # non-overlapping origins with h=5 over 20 dates: dates 0, 5, 10, 15 x 6 symbols (3 NaN rows on date 0)
    assert metrics["da_n"] == 4 * 6 - 3
    assert metrics["dm_stat"] < 0 and metrics["dm_pvalue"] < 0.05
    assert metrics["topk_spread_gross"] > 0
    assert metrics["topk_k"] == 1  # round(0.2 * 6)


def test_member_metrics_dm_uses_per_date_mean_loss_differential():
    frame = _member_frame(seed=3)
    rng = np.random.default_rng(7)
    frame["pred"] = 0.3 * frame["realized"] + rng.normal(0, 0.01, len(frame))
    frame["drift_pred"] = 0.001
    metrics = member_metrics(frame, h=3)
    error = frame["pred"] - frame["realized"]
    per_date = (error.abs() - frame["realized"].abs()).groupby(frame["date"]).mean().sort_index()
    stat, pvalue = diebold_mariano(per_date.to_numpy(), np.zeros(len(per_date)), 3)
    assert metrics["dm_stat"] == pytest.approx(stat)
    assert metrics["dm_pvalue"] == pytest.approx(pvalue)
    sse = float((error**2).sum())
    assert metrics["oos_r2_vs_drift"] == pytest.approx(1 - sse / float(((0.001 - frame["realized"]) ** 2).sum()))
    _assert_json_ready(metrics)


# ---------------------------------------------------------------- skill verdict


def test_skill_verdict_needs_both_conditions():
    results = {
        "naive": {"dm_pvalue": None, "rank_ic_t": None},
        "gbdt": {"dm_pvalue": 0.01, "rank_ic_t": 2.6},
        "lstm": {"dm_pvalue": 0.01, "rank_ic_t": 1.5},  # IC not significant
        "tft": {"dm_pvalue": 0.2, "rank_ic_t": 3.0},  # DM not significant
    }
    verdict = skill_verdict(results, h=5)
    assert verdict["skilled_members"] == ["gbdt"]
    assert verdict["statement"] == "h=5: gbdt beats the random walk (DM p=0.01, rank-IC t=2.6)."

    del results["gbdt"]
    verdict = skill_verdict(results, h=5)
    assert verdict["skilled_members"] == []
    assert verdict["statement"].startswith("h=5: no member shows an edge over the random walk")
    assert "best DM p=0.01 by lstm" in verdict["statement"]
    assert "best rank-IC t=3.0 by tft" in verdict["statement"]
    # a stricter alpha or t threshold removes skill
    assert skill_verdict({"gbdt": {"dm_pvalue": 0.01, "rank_ic_t": 2.6}}, alpha=0.005, h=1)["skilled_members"] == []
    assert skill_verdict({"gbdt": {"dm_pvalue": 0.01, "rank_ic_t": 2.6}}, min_t=3.0, h=1)["skilled_members"] == []


# ---------------------------------------------------------------- report


def test_write_report_writes_markdown_and_plots(tmp_path):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    frames = []
    for h in (1, 5):
        base = _member_frame(n_dates=15, n_symbols=5, seed=h)
        for member, pred in {
            "naive": np.zeros(len(base)),
            "drift": np.full(len(base), 0.001),
            "lstm": 0.2 * base["realized"] + rng.normal(0, 0.02, len(base)),
        }.items():
            frames.append(base.assign(member=member, horizon=h, pred=pred))
    forecasts = pd.concat(frames, ignore_index=True)
    results = {
        "horizons": {
            str(h): {
                member: member_metrics(group, h=h)
                for member, group in forecasts[forecasts["horizon"] == h].groupby("member", sort=False)
            }
            for h in (1, 5)
        },
        "config": {"symbols": 5, "origins": "every day", "members": ["naive", "drift", "lstm"]},
    }
    json.dumps(results, allow_nan=False)
    path = tmp_path / "reports" / "walkforward.md"
    out = write_report(results, forecasts, path, extra_sections=["## Appendix\n\nextra text here"])
    assert out == path and path.exists()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ibf walk-forward evaluation")
    assert "## Configuration" in text and "origins" in text
    assert "## Horizon h=1" in text and "## Horizon h=5" in text
    assert text.index("## Horizon h=1") < text.index("## Horizon h=5")
    assert "–" in text  # naive member's undefined metrics
    assert re.search(r"\*\*h=1: .*random walk.*\*\*", text)
    assert "How to read this" in text and "arcsin(IC)/pi" in text
    assert text.rstrip().endswith("extra text here")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 6  # scatter, cumulative rank IC and calibration per horizon
    for link in links:
        assert not link.startswith("/") and link.startswith("walkforward_plots/")
        png = path.parent / link
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def test_one_rank_ic_in_every_shape():
    """Long format, dense matrices and the frame form are one computation: per date, Spearman across symbols."""
    from ibf_core.evaluation.metrics import cross_sectional_ic, dense_rank_ics, mean_rank_ic, rank_ics

    rng = np.random.default_rng(3)
    dates, symbols = 40, 9
    pred = rng.normal(size=(dates, symbols))
    real = pred * 0.3 + rng.normal(size=(dates, symbols))
    pred[rng.random((dates, symbols)) < 0.2] = np.nan  # missing forecasts
    pred[5] = 1.0  # a constant side: no IC that date
    real[7, 2:] = np.nan  # two pairs only: no IC that date
    pred[9, :4] = 0.5  # ties share the mean rank
    expected = np.array([
        pd.Series(pred[d]).corr(pd.Series(real[d]), method="spearman") if d not in (5, 7) else np.nan for d in range(dates)
    ])
    np.testing.assert_allclose(dense_rank_ics(pred, real), expected, equal_nan=True)
    long_dates = np.repeat(pd.date_range("2024-01-01", periods=dates), symbols)
    unique, ics = rank_ics(pred.ravel(), real.ravel(), long_dates)
    assert len(unique) == dates
    np.testing.assert_allclose(ics, expected, equal_nan=True)
    frame = pd.DataFrame({"date": long_dates, "p": pred.ravel(), "r": real.ravel()})
    np.testing.assert_allclose(cross_sectional_ic(frame, "p", "r", "spearman").to_numpy(), expected[np.isfinite(expected)])
    assert mean_rank_ic(pred, real) == pytest.approx(np.nanmean(expected))
    assert mean_rank_ic(pred.ravel(), real.ravel(), long_dates) == pytest.approx(np.nanmean(expected))
