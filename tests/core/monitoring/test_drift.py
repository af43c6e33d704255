"""Drift detectors: KS/CVM/MMD (alibi-detect backend), PSI, CUSUM, Benjamini-Hochberg, lazy backend import."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from ibf_core.monitoring.drift import DriftRow, benjamini_hochberg, cusum, mmd_test, psi, univariate_tests
from ibf_core.monitoring.drift.stats import cusum_path, psi_value

FEATURES = [f"f{i}" for i in range(5)]


@pytest.fixture(scope="module")
def windows() -> dict[str, np.ndarray]:
    """Seeded reference (500x5) and recent (200x5) windows: same distribution, mean shift, variance change."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(500, 5))
    same = rng.normal(size=(200, 5))
    shifted = same.copy()
    shifted[:, [1, 3]] += 1.0
    return {"reference": reference, "same": same, "shifted": shifted, "wide": same * 2.0}


def test_import_does_not_load_alibi_or_torch():
    code = (
        "import sys, ibf_core.monitoring.drift\n"
        "bad = [m for m in ('alibi_detect', 'torch', 'tensorflow') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_same_distribution_no_breach(windows):
    ref, rec = windows["reference"], windows["same"]
    for method in ("ks", "cvm"):
        rows = univariate_tests(ref, rec, FEATURES, method)
        assert [r.feature for r in rows] == FEATURES
        assert not any(r.breached for r in rows), method
        assert all(r.skipped_reason is None and 0.0 <= r.p_value <= 1.0 for r in rows)
    mmd = mmd_test(ref, rec)
    assert mmd.detector == "mmd" and mmd.feature is None and not mmd.breached and mmd.p_value > 0.05
    assert all(r.statistic < 0.1 and not r.breached and r.p_value is None for r in psi(ref, rec, FEATURES))


def test_mean_shift_in_two_features(windows):
    ref, rec = windows["reference"], windows["shifted"]
    ks = univariate_tests(ref, rec, FEATURES, "ks", alpha=0.05, correction="bonferroni")
    assert [r.feature for r in ks if r.breached] == ["f1", "f3"]
    assert all(r.threshold == pytest.approx(0.05 / 5) for r in ks)
    mmd = mmd_test(ref, rec, alpha=0.01)
    assert mmd.breached and mmd.p_value < 0.01 and mmd.statistic > 0 and mmd.threshold == 0.01
    rows = {r.feature: r for r in psi(ref, rec, FEATURES)}
    assert rows["f1"].statistic > 0.25 and rows["f3"].statistic > 0.25
    assert [f for f, r in rows.items() if r.breached] == ["f1", "f3"]


def test_variance_change_caught_by_mmd_and_cvm(windows):
    ref, rec = windows["reference"], windows["wide"]
    assert mmd_test(ref, rec).breached
    cvm = univariate_tests(ref, rec, FEATURES, "cvm")
    assert all(r.breached for r in cvm)


def test_bonferroni_threshold_skips_untestable_features(windows):
    ref = windows["reference"].copy()
    rec = windows["shifted"].copy()
    rec[:, 0] = np.nan
    rec[:188, 2] = np.nan  # 12 finite points left
    ref[:, 4] = 3.0
    rec[:, 4] = 3.0
    rows = {r.feature: r for r in univariate_tests(ref, rec, FEATURES, "ks", alpha=0.05)}
    assert rows["f0"].skipped_reason == "recent window has 0 points (< 20)"
    assert rows["f2"].skipped_reason == "recent window has 12 points (< 20)"
    assert rows["f4"].skipped_reason == "constant in both windows"
    for name in ("f0", "f2", "f4"):
        assert rows[name].statistic is None and rows[name].p_value is None and not rows[name].breached
    tested = [rows["f1"], rows["f3"]]
    assert all(r.threshold == pytest.approx(0.05 / 2) and r.breached for r in tested)


def test_nan_rows_dropped_per_feature(windows):
    ref, rec = windows["reference"], windows["same"].copy()
    rec[:50, 0] = np.nan
    full = univariate_tests(ref, windows["same"][50:], FEATURES, "ks")[0]
    masked = univariate_tests(ref, rec, FEATURES, "ks")[0]
    assert masked.p_value == pytest.approx(full.p_value)
    assert univariate_tests(ref, rec, FEATURES, "ks")[1].p_value == pytest.approx(
        univariate_tests(ref, windows["same"], FEATURES, "ks")[1].p_value
    )


def test_fdr_threshold_matches_benjamini_hochberg(windows):
    ref, rec = windows["reference"], windows["shifted"]
    rows = univariate_tests(ref, rec, FEATURES, "cvm", alpha=0.05, correction="fdr")
    rejected, threshold = benjamini_hochberg(np.array([r.p_value for r in rows]), 0.05)
    assert rows[0].threshold == pytest.approx(threshold)
    assert [r.breached for r in rows] == list(rejected)
    assert [r.feature for r in rows if r.breached] == ["f1", "f3"]


def test_benjamini_hochberg_hand_example():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205])
    rejected, threshold = benjamini_hochberg(p, 0.05)
    assert rejected.tolist() == [True, True] + [False] * 6
    assert threshold == pytest.approx(0.05 * 2 / 8)
    shuffled, threshold2 = benjamini_hochberg(p[::-1], 0.05)
    assert shuffled.tolist() == rejected[::-1].tolist() and threshold2 == threshold
    none, zero = benjamini_hochberg(np.array([0.5, 0.9]), 0.05)
    assert not none.any() and zero == 0.0
    # step-up: p_(3) = 0.03 <= 3/4 * 0.05 rejects all three smallest even though p_(2) > 2/4 * 0.05
    step_up, thr = benjamini_hochberg(np.array([0.001, 0.03, 0.03, 0.9]), 0.05)
    assert step_up.tolist() == [True, True, True, False] and thr == pytest.approx(0.0375)


def test_psi_hand_computation():
    ref = np.array([0.0, 0.0, 0.0, 1.0])
    rec = np.array([0.0, 1.0, 1.0, 1.0])
    # shares p = (0.75, 0.25), q = (0.25, 0.75): 2 * 0.5 * ln 3
    assert psi_value(ref, rec, np.array([0.5])) == pytest.approx(math.log(3.0))
    # an empty recent bin is floored at 1e-4
    only_high = np.ones(4)
    expected = (1e-4 - 0.75) * math.log(1e-4 / 0.75) + (1.0 - 0.25) * math.log(1.0 / 0.25)
    assert psi_value(ref, only_high, np.array([0.5])) == pytest.approx(expected)
    assert psi_value(ref, ref, np.array([0.5])) == 0.0


def test_psi_skips(windows):
    ref, rec = windows["reference"].copy(), windows["same"][:30].copy()
    ref[:, 2] = 1.0
    rec[:15, 4] = np.nan
    rows = {r.feature: r for r in psi(ref, rec, FEATURES)}
    assert rows["f2"].skipped_reason == "constant in the reference window"
    assert rows["f4"].skipped_reason == "recent window has 15 points (< 20)"
    assert rows["f0"].skipped_reason is None and rows["f0"].threshold == 0.25


def test_cusum():
    # Two-sided k=0.5, h=5 false-alarms on roughly a third of 200-point N(0,1) series (ARL0 ~ 465 per side),
    # so the in-control check uses a fixed seed whose series stays below h.
    rng = np.random.default_rng(1)
    in_control = rng.normal(size=200)
    row = cusum(in_control, k=0.5, h=5.0)
    assert row.detector == "cusum" and row.threshold == 5.0 and not row.breached and row.statistic <= 5.0
    shifted = in_control.copy()
    shifted[100:] += 1.5
    assert cusum(shifted, k=0.5, h=5.0).breached
    assert cusum(-shifted, k=0.5, h=5.0).breached  # downward shift via S-
    s_plus, s_minus = cusum_path(np.array([1.0, 2.0, -1.0, 0.5, 3.0]), k=0.5)
    assert s_plus.tolist() == [0.5, 2.0, 0.5, 0.5, 3.0]
    assert s_minus.tolist() == [0.0, 0.0, 0.5, 0.0, 0.0]
    assert cusum(np.array([1.0, 2.0, -1.0, 0.5, 3.0, np.nan]), min_points=5).statistic == 3.0
    short = cusum(np.array([1.0, np.nan, 2.0]))
    assert short == DriftRow("cusum", None, None, None, 5.0, False, "residual series has 2 points (< 10)")


def test_mmd_deterministic_and_skips(windows):
    ref, rec = windows["reference"], windows["same"] + 0.15
    first = mmd_test(ref, rec, n_permutations=100, seed=3)
    second = mmd_test(ref, rec, n_permutations=100, seed=3)
    assert first == second and first.p_value is not None
    nan_rec = windows["same"][:30].copy()
    nan_rec[:15, 1] = np.nan
    skipped = mmd_test(ref, nan_rec)
    assert skipped.skipped_reason == "recent window has 15 complete rows (< 20)"
    assert skipped.statistic is None and not skipped.breached
