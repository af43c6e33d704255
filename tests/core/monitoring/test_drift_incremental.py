"""drift_scores scores the new session, not the month to date: a month scored day by day (carrying the unchanged
sessions) equals one full rescoring, and every rewritten input rescores exactly the sessions that read it. Also:
the batched detectors equal alibi-detect's per-pair ones, and the batched performance rows equal
``rolling_performance``."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from helpers.bars import make_bars
from ibf_core.calendar import trading_days
from ibf_core.monitoring.drift import alibi_backend
from ibf_core.features.table import features_spec
from ibf_core.models.registry import RegisteredModel
from ibf_core.monitoring.scores import DriftPolicy, performance_rows_many, symbol_drift_rows
from ibf_core.monitoring.outcomes import matured_outcomes, rolling_performance
from ibf_core.monitoring.rectangle import refresh_rectangle, score_rectangle
from ibf_core.storage.tables import DRIFT_SCORES, MARKET_BARS, PREDICTIONS
from ibf_core.storage.warehouse import Warehouse

SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE")
START, END = "2024-05-01", "2024-10-31"
MONTH = (dt.date(2024, 10, 1), dt.date(2024, 10, 31))
POLICY = DriftPolicy(reference_sessions=40, feature_window=25, window=15, horizon=1, mmd_permutations=50, min_matured=5)
KEY = ["symbol", "date", "detector", "feature"]


def _version(number: str, cutoff: str, digest: str = "x") -> RegisteredModel:
    return RegisteredModel("ibf", number, dt.date.fromisoformat(cutoff), "run", "src", digest)


VERSIONS = [_version("1", "2024-08-30"), _version("2", "2024-10-15")]


def _upstream() -> dict[str, pd.DataFrame]:
    """Bars, features (the four drift features, the rest NaN, 10 warm-up rows) and 1/5-session predictions."""
    rng = np.random.default_rng(7)
    bars = make_bars(SYMBOLS, START, END, seed=3).assign(source="csv")
    bars["date"] = pd.to_datetime(bars["date"])
    spec = features_spec()
    rows = []
    for symbol, part in bars.groupby("symbol"):
        n = len(part)
        frame = pd.DataFrame({c: np.nan for c in spec.column_names if c not in ("symbol", "date", "warmup")}, index=range(n))
        shift = np.where(part["date"].to_numpy() >= np.datetime64("2024-09-16"), 0.8 if symbol == "AAA" else 0.0, 0.0)
        for name in POLICY.features:
            frame[name] = rng.normal(size=n) + shift
        frame["symbol"], frame["date"], frame["warmup"] = symbol, part["date"].to_numpy(), np.arange(n) < 10
        rows.append(frame)
    features = pd.concat(rows, ignore_index=True)
    sessions = trading_days(START, "2024-12-31")
    closes = bars.set_index(["symbol", "date"])["close"]
    preds = []
    for (symbol, day), close in closes[closes.index.get_level_values("date") >= "2024-07-01"].items():
        at = sessions.searchsorted(day)
        for h in (1, 5):
            ret = rng.normal(0, 0.01 * np.sqrt(h))
            width = rng.uniform(0.01, 0.03) * np.sqrt(h)
            lo80, hi80, lo95, hi95 = ret - width, ret + width, ret - 1.6 * width, ret + 1.6 * width
            preds.append({
                "symbol": symbol, "date": day, "horizon": h, "target_date": sessions[at + h], "close": close,
                "pred_return": ret, "pred_price": close * np.exp(ret),
                "lower_80": lo80, "upper_80": hi80, "lower_95": lo95, "upper_95": hi95,
                "price_lower_80": close * np.exp(lo80), "price_upper_80": close * np.exp(hi80),
                "price_lower_95": close * np.exp(lo95), "price_upper_95": close * np.exp(hi95),
                "pred_drift": 0.0, "rank": 1, "member_used": "gbdt", "model_version": "1", "model_cutoff": dt.date(2024, 6, 28),
            })
    return {"bars": bars, "features": features, "predictions": pd.DataFrame(preds)}


def _write(store: Warehouse, data: dict[str, pd.DataFrame], lo, hi) -> None:
    lo, hi = pd.Timestamp(lo), pd.Timestamp(hi)
    for spec, frame in ((MARKET_BARS, data["bars"]), (features_spec(), data["features"]), (PREDICTIONS, data["predictions"])):
        part = frame[frame["date"].between(lo, hi)]
        store.replace_slice(spec, part, SYMBOLS, lo.date(), hi.date())


def _refresh(store: Warehouse, versions=VERSIONS):
    result = refresh_rectangle(store, versions, list(SYMBOLS), SYMBOLS, *MONTH, POLICY)
    if result.changed:
        store.replace_slice(DRIFT_SCORES, result.frame, SYMBOLS, *MONTH)
    return result


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(date=pd.to_datetime(frame["date"]), feature=frame["feature"].fillna(""))
    return frame[DRIFT_SCORES.column_names].sort_values(KEY).reset_index(drop=True)


def _stored_pairs(store: Warehouse) -> dict[tuple[str, pd.Timestamp], str]:
    stored = store.read(DRIFT_SCORES, SYMBOLS, *MONTH)
    return {(s, pd.Timestamp(d)): h for s, d, h in stored[["symbol", "date", "inputs_digest"]].drop_duplicates().itertuples(index=False)}


@pytest.fixture(scope="module")
def data():
    return _upstream()


@pytest.fixture(scope="module")
def scored_month(tmp_path_factory, data):
    """A warehouse whose October drift rows were scored day by day, as the daily runs of the month partition do."""
    store = Warehouse(tmp_path_factory.mktemp("month") / "wh")
    store.ensure_all_tables()
    _write(store, data, START, "2024-09-30")
    days = trading_days(*MONTH)
    for i, day in enumerate(days):
        _write(store, data, day, day)
        result = _refresh(store)
        assert (result.scored, result.carried, result.dropped) == (len(SYMBOLS), len(SYMBOLS) * i, 0), day
    return store.home


@pytest.fixture
def month(scored_month, tmp_path):
    """A copy of the day-by-day scored warehouse for one test to change."""
    import shutil

    return Warehouse(shutil.copytree(scored_month, tmp_path / "wh"))


def test_month_scored_day_by_day_equals_one_full_rescoring(month):
    incremental = _sorted(month.read(DRIFT_SCORES, SYMBOLS, *MONTH))
    full = _sorted(score_rectangle(month, VERSIONS, list(SYMBOLS), SYMBOLS, *MONTH, POLICY))
    assert len(full) == len(SYMBOLS) * len(trading_days(*MONTH)) * 22
    assert incremental["inputs_digest"].notna().all()
    pd.testing.assert_frame_equal(incremental, full, check_exact=True, check_dtype=False)
    # The detectors ran (not skipped): the test is about values, not skip rows.
    ran = full[full["skipped_reason"].isna()]
    assert {"ks", "cvm", "psi", "mmd", "perf_mase", "cusum", "perf_rank_ic"} <= set(ran["detector"])
    assert full.loc[(full["detector"] == "mmd") & (full["symbol"] == "AAA"), "breached"].any()  # the planted shift
    # An unchanged month is carried whole and not written again.
    again = refresh_rectangle(month, VERSIONS, list(SYMBOLS), SYMBOLS, *MONTH, POLICY)
    assert (again.scored, again.dropped, again.changed) == (0, 0, False)


def _rescored_after(store: Warehouse, change) -> set[tuple[str, pd.Timestamp]]:
    before = _stored_pairs(store)
    change()
    result = _refresh(store)
    after = _stored_pairs(store)
    full = _sorted(score_rectangle(store, VERSIONS, list(SYMBOLS), SYMBOLS, *MONTH, POLICY))
    pd.testing.assert_frame_equal(_sorted(store.read(DRIFT_SCORES, SYMBOLS, *MONTH)), full, check_exact=True, check_dtype=False)
    changed = {pair for pair in after if before.get(pair) != after[pair]}
    assert result.scored == len(changed)
    return changed


def _sessions(first: str, count: int | None = None, last: str = "2024-10-31") -> list[pd.Timestamp]:
    days = [pd.Timestamp(d) for d in trading_days(first, last)]
    return days[:count] if count else days


def test_rewritten_feature_session_rescored(month, data):
    features = data["features"].copy()
    hit = (features["symbol"] == "BBB") & (features["date"] == "2024-10-10")
    features.loc[hit, "logret_1"] += 0.5
    changed = _rescored_after(month, lambda: month.replace_slice(features_spec(), features[hit], ["BBB"], "2024-10-10", "2024-10-10"))
    # BBB's recent window (25 sessions) holds 2024-10-10 on every later October session; no other symbol reads it.
    assert changed == {("BBB", d) for d in _sessions("2024-10-10")}


def test_rewrite_with_identical_values_rescores_nothing(month, data):
    assert _rescored_after(month, lambda: _write(month, data, "2024-09-01", "2024-10-31")) == set()


def test_rewritten_prediction_rescored_for_every_symbol(month, data):
    preds = data["predictions"].copy()
    hit = (preds["symbol"] == "CCC") & (preds["date"] == "2024-10-07")
    preds.loc[hit, "pred_return"] += 0.02
    changed = _rescored_after(month, lambda: month.replace_slice(PREDICTIONS, preds[hit], ["CCC"], "2024-10-07", "2024-10-07"))
    # The 1-session forecast of 10-07 matures on 10-08 and sits in the 15-session performance window of
    # 10-08 .. 10-28; the pooled metrics read it for every symbol. (The 5-session one is not read: horizon 1.)
    assert changed == {(s, d) for s in SYMBOLS for d in _sessions("2024-10-08", 15)}


def test_corrected_bar_rescored(month, data):
    bars = data["bars"].copy()
    hit = (bars["symbol"] == "DDD") & (bars["date"] == "2024-10-09")
    bars.loc[hit, "adj_close"] *= 1.01
    changed = _rescored_after(month, lambda: month.replace_slice(MARKET_BARS, bars[hit], ["DDD"], "2024-10-09", "2024-10-09"))
    # DDD's 10-09 bar is the realized price of the forecast made 10-08 (target 10-09) and the origin of the one
    # made 10-09 (target 10-10): the 15-session windows holding either target are those of 10-09 .. 10-30.
    assert changed == {(s, d) for s in SYMBOLS for d in _sessions("2024-10-09", 16)}


def test_new_model_version_rescores_the_sessions_after_its_cutoff(month):
    versions = [*VERSIONS, _version("3", "2024-10-22")]
    before = _stored_pairs(month)
    result = refresh_rectangle(month, versions, list(SYMBOLS), SYMBOLS, *MONTH, POLICY)
    month.replace_slice(DRIFT_SCORES, result.frame, SYMBOLS, *MONTH)
    after = _stored_pairs(month)
    changed = {pair for pair in after if before[pair] != after[pair]}
    assert changed == {(s, d) for s in SYMBOLS for d in _sessions("2024-10-23")}
    full = _sorted(score_rectangle(month, versions, list(SYMBOLS), SYMBOLS, *MONTH, POLICY))
    pd.testing.assert_frame_equal(_sorted(month.read(DRIFT_SCORES, SYMBOLS, *MONTH)), full, check_exact=True, check_dtype=False)
    assert set(full.loc[full["date"] > "2024-10-22", "model_version"]) == {"3"}
    # A re-registered version (same number, another bundle) counts as a new model.
    rebuilt = [*VERSIONS, _version("3", "2024-10-22", digest="y")]
    assert refresh_rectangle(month, rebuilt, list(SYMBOLS), SYMBOLS, *MONTH, POLICY).scored == len(changed)


def test_batched_rows_equal_the_per_symbol_path(month, data):
    """score_rectangle (batched over symbols) gives the rows symbol_drift_rows (the policy backtest's path) gives."""
    day = pd.Timestamp("2024-10-24")
    full = _sorted(score_rectangle(month, VERSIONS, list(SYMBOLS), SYMBOLS, day.date(), day.date(), POLICY))
    features = month.read(features_spec(), SYMBOLS, "2024-05-01", day.date())
    usable = features[~features["warmup"].astype(bool)]
    from ibf_core.monitoring.scores import reference_windows

    refs = reference_windows(features, VERSIONS[1].cutoff, POLICY)
    outcomes = matured_outcomes(month.read(PREDICTIONS, SYMBOLS, "2024-06-01", day.date()), month.read(MARKET_BARS, SYMBOLS), day)
    rows = []
    for symbol in SYMBOLS:
        rows += symbol_drift_rows(symbol, day, usable[usable["symbol"] == symbol], refs, outcomes, POLICY, "2")
    single = _sorted(pd.DataFrame(rows).assign(inputs_digest=full["inputs_digest"].iloc[0]))
    pd.testing.assert_frame_equal(single.drop(columns="inputs_digest"), full.drop(columns="inputs_digest"), check_exact=True, check_dtype=False)


def test_performance_rows_equal_rolling_performance(data):
    bars = data["bars"]
    outcomes = matured_outcomes(data["predictions"], bars, "2024-10-31")
    day = pd.Timestamp("2024-10-17")
    reference = rolling_performance(outcomes, day, POLICY.window, POLICY.horizon).set_index("symbol")
    rows = performance_rows_many(list(SYMBOLS), outcomes, day, POLICY)
    names = {"perf_mase": "mase", "perf_mae": "mae", "perf_mape": "mape", "perf_rmse": "rmse", "perf_da": "da"}
    for symbol in SYMBOLS:
        got = {r["detector"]: r for r in rows[symbol]}
        for detector, column in names.items():
            assert got[detector]["statistic"] == reference.loc[symbol, column], (symbol, detector)
        assert got["perf_coverage_80"]["statistic"] == reference.loc["*", "coverage_80"]
        assert got["perf_rank_ic"]["statistic"] == reference.loc["*", "rank_ic"]
        assert got["cusum"]["n"] == reference.loc[symbol, "n"]  # only forecasts matured by the day


def test_batched_tests_equal_alibi_detect():
    rng = np.random.default_rng(11)
    refs = [rng.normal(size=int(n)) for n in (250, 250, 60, 23)] + [np.round(rng.normal(size=80), 1)]
    recs = [rng.normal(0.3 * i, 1, size=int(n)) for i, n in enumerate((60, 60, 60, 21))] + [np.round(rng.normal(size=40), 1)]
    for method, scores in (("ks", alibi_backend.ks_scores), ("cvm", alibi_backend.cvm_scores)):
        p, stat = scores(refs, recs)
        for i in range(len(refs)):
            p_alibi, stat_alibi, _ = alibi_backend.univariate_scores(method, [refs[i]], [recs[i]], 0.05, "bonferroni")
            assert (float(p[i]), float(stat[i])) == (p_alibi[0], stat_alibi[0]), (method, i)
    refs2 = [rng.normal(size=(120, 4)), rng.normal(size=(120, 4)), rng.normal(size=(40, 4))]
    recs2 = [rng.normal(size=(30, 4)), rng.normal(0.5, 1, size=(30, 4)), rng.normal(size=(25, 4))]
    batch = alibi_backend.mmd_permutation_batch(refs2, recs2, 50, 123)
    for (ref, rec), (p, mmd2) in zip(zip(refs2, recs2), batch):
        p_alibi, mmd2_alibi = alibi_backend.mmd_permutation(ref, rec, 0.01, 50, 123)
        assert abs(p - p_alibi) <= 1 / 50 + 1e-9  # equal but for a permuted MMD^2 tying the observed one
        assert mmd2 == pytest.approx(mmd2_alibi, rel=1e-3, abs=1e-6)
