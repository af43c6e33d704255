"""Drift scores: the policy, feature-drift and performance rows of one symbol and session, and the retrain decision."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.evaluation.metrics import cross_sectional_ic
from ibf_core.monitoring import drift
from ibf_core.monitoring.drift import benjamini_hochberg
from ibf_core.monitoring.outcomes import served_order, window_start
from ibf_core.settings import Settings

# Heavy imports (scipy) stay inside the functions that need them: importing this module loads none of them.

# Near-iid daily quantities: a two-sample test assumes independent draws, and overlapping-window features
# (60-day volatility, moving-average ratios) are so autocorrelated that a 60-session window of them is a
# handful of independent points, which makes KS/MMD fire on stationary data.
DRIFT_FEATURES: tuple[str, ...] = ("logret_1", "intraday_ret", "gap_overnight", "hl_range")
Z80 = 1.2815515655446004  # standard-normal 90% quantile: half-width of an 80% interval in sigmas


def _default(name: str) -> Any:
    """The default of setting ``name``: every monitoring default is written once, in ``Settings``."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds of every detector and of the retraining rule (``IBF_DRIFT_*`` settings)."""

    window: int = _default("drift_performance_sessions")  # sessions of matured forecasts in the rolling metrics
    horizon: int = _default("drift_horizon")
    feature_window: int = _default("drift_feature_window")
    reference_sessions: int = _default("drift_reference_sessions")
    mase_threshold: float = _default("drift_mase_threshold")
    consecutive: int = _default("drift_consecutive")
    lookback_days: int = _default("drift_lookback_days")  # calendar days
    ks_alpha: float = _default("drift_ks_alpha")
    mmd_alpha: float = _default("drift_mmd_alpha")
    psi_threshold: float = _default("drift_psi_threshold")
    cusum_h: float = _default("drift_cusum_h")
    coverage_tolerance: float = _default("drift_coverage_tolerance")
    min_matured: int = 10
    features: tuple[str, ...] = DRIFT_FEATURES
    mmd_permutations: int = 200  # p = 0 means "below 1/200": small enough for BH at 0.01 over the universe

    @classmethod
    def from_settings(cls, settings: Any) -> "DriftPolicy":
        return cls(
            window=settings.drift_performance_sessions,
            horizon=settings.drift_horizon,
            feature_window=settings.drift_feature_window,
            reference_sessions=settings.drift_reference_sessions,
            mase_threshold=settings.drift_mase_threshold,
            consecutive=settings.drift_consecutive,
            lookback_days=settings.drift_lookback_days,
            ks_alpha=settings.drift_ks_alpha,
            mmd_alpha=settings.drift_mmd_alpha,
            psi_threshold=settings.drift_psi_threshold,
            cusum_h=settings.drift_cusum_h,
            coverage_tolerance=settings.drift_coverage_tolerance,
        )


def drift_row(detector: str, feature: str | None, statistic, p_value, threshold, breached: bool, n: int, reason: str | None = None) -> dict:
    def clean(v):
        return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v)

    return {
        "detector": detector,
        "feature": feature,
        "statistic": clean(statistic),
        "p_value": clean(p_value),
        "threshold": clean(threshold),
        "breached": bool(breached) and reason is None,
        "skipped_reason": reason,
        "n": int(n),
    }


def feature_drift_rows(reference: np.ndarray, recent: np.ndarray, features: list[str], policy: DriftPolicy, seed: int = 0) -> list[dict]:
    """KS and CVM per feature (Bonferroni over the features), PSI per feature, MMD on the joint matrix.

    The MMD row carries the raw permutation p-value against ``mmd_alpha``; the correction over the universe's
    symbols (Benjamini-Hochberg) is applied by ``retrain_decision`` on all symbols of a day at once.
    """
    return feature_drift_rows_many([reference], [recent], features, policy, seed)[0]


def feature_drift_rows_many(
    references: list[np.ndarray], recents: list[np.ndarray], features: list[str], policy: DriftPolicy, seed: int = 0
) -> list[list[dict]]:
    """``feature_drift_rows`` of many (reference, recent) pairs judged on the same day (one seed): each test runs
    once over all pairs (``ibf_core.monitoring.drift``'s batched detectors), not once per symbol."""
    out: list[list[dict]] = [[] for _ in references]
    tested = [i for i, ref in enumerate(references) if len(ref)]
    for i, ref in enumerate(references):
        if not len(ref):
            reason = "no reference window (the symbol was not in the model's training data)"
            out[i] = [drift_row(d, None, None, None, None, False, 0, reason) for d in ("ks", "cvm", "psi", "mmd")]
    if not tested:
        return out
    refs = [references[i] for i in tested]
    recs = [recents[i] for i in tested]
    for method in ("ks", "cvm"):
        batch = drift.univariate_tests_many(refs, recs, features, method=method, alpha=policy.ks_alpha)
        for i, rows in zip(tested, batch):
            n = len(recents[i])
            out[i] += [drift_row(r.detector, r.feature, r.statistic, r.p_value, r.threshold, r.breached, n, r.skipped_reason) for r in rows]
    for i, rows in zip(tested, drift.psi_many(refs, recs, features, threshold=policy.psi_threshold)):
        out[i] += [drift_row(r.detector, r.feature, r.statistic, r.p_value, r.threshold, r.breached, len(recents[i]), r.skipped_reason) for r in rows]
    mmd = drift.mmd_tests(refs, recs, alpha=policy.mmd_alpha, n_permutations=policy.mmd_permutations, seed=seed)
    for i, r in zip(tested, mmd):
        out[i].append(drift_row("mmd", None, r.statistic, r.p_value, r.threshold, r.breached, len(recents[i]), r.skipped_reason))
    return out


def performance_rows(symbol: str, outcomes: pd.DataFrame, as_of, policy: DriftPolicy) -> list[dict]:
    """Rolling performance of the symbol's matured forecasts, the pooled rank IC, and a CUSUM on its residuals."""
    return performance_rows_many([symbol], outcomes, as_of, policy)[symbol]


def window_outcomes(outcomes: pd.DataFrame, as_of, policy: DriftPolicy) -> pd.DataFrame:
    """The outcomes the performance rows of ``as_of`` read: horizon ``policy.horizon``, target session in the
    ``policy.window`` sessions ending at ``as_of`` (in ``outcomes``' row order)."""
    if outcomes.empty:
        return outcomes
    first = window_start(as_of, policy.window)
    target = outcomes["target_date"]
    return outcomes[(outcomes["horizon"] == policy.horizon) & (target >= first) & (target <= pd.Timestamp(as_of))]


def _nanmean(values: np.ndarray) -> float:
    """``pandas.Series.mean`` exactly: NaN set to 0, the same pairwise sum, divided by the count of the others."""
    missing = np.isnan(values)
    count = values.size - int(missing.sum())
    if count == 0:
        return np.nan
    return (np.where(missing, 0.0, values) if count < values.size else values).sum() / count


def _metrics(part: dict[str, np.ndarray]) -> dict[str, float]:
    """The metrics of one ``rolling_performance`` row (same arithmetic, so the same values) from column arrays."""
    n = len(part["abs_error"])
    mae = _nanmean(part["abs_error"])
    naive = _nanmean(np.abs(part["realized_return"]))
    return {
        "n": n,
        "mae": mae,
        "mape": _nanmean(part["pct_error"]),
        "rmse": float(np.sqrt(_nanmean((part["pred_return"] - part["realized_return"]) ** 2))) if n else np.nan,
        "mase": mae / naive if naive and naive > 0 else np.nan,
        "da": _nanmean(part["direction_hit"]),
        "coverage_80": _nanmean(part["hit_80"]),
        "coverage_95": _nanmean(part["hit_95"]),
    }


_PERF_COLUMNS = ("abs_error", "pct_error", "pred_return", "realized_return", "direction_hit", "hit_80", "hit_95", "lower_80", "upper_80")


def performance_rows_many(symbols, outcomes: pd.DataFrame, as_of, policy: DriftPolicy) -> dict[str, list[dict]]:
    """``performance_rows`` of many symbols on one evaluated day: the window's outcomes are cut once, the pooled
    metrics, coverage tests and rank IC computed once, each symbol's metrics from its own slice (the values of
    ``rolling_performance``). The CUSUM reads the forecasts matured by ``as_of`` only."""
    return performance_part_rows(symbols, window_outcomes(outcomes, as_of, policy), as_of, policy)


def performance_part_rows(symbols, part: pd.DataFrame, as_of, policy: DriftPolicy) -> dict[str, list[dict]]:
    """``performance_rows_many`` from the window's outcomes (``window_outcomes``)."""
    columns = {c: part[c].to_numpy(dtype=np.float64) for c in _PERF_COLUMNS} if len(part) else {c: np.empty(0) for c in _PERF_COLUMNS}
    pooled = _metrics(columns)
    ic = np.nan
    if len(part):
        ics = cross_sectional_ic(served_order(part), "served_order", "realized_return", "spearman")
        ic = ics.mean() if len(ics) else np.nan
    names = part["symbol"].to_numpy() if len(part) else np.empty(0, dtype=object)
    order = np.argsort(names, kind="stable")  # groupby order: each symbol's rows as they come in ``part``
    keys, starts = np.unique(names[order], return_index=True) if len(names) else (np.empty(0), np.empty(0, dtype=int))
    bounds = dict(zip(keys, zip(starts, [*starts[1:], len(order)])))
    dates = part["date"].to_numpy() if len(part) else np.empty(0, dtype="datetime64[ns]")

    # Pooled rows: the same for every symbol of the day. Off by more than the tolerance *and* significantly so
    # (two-sided binomial p < 0.01): with ~150 forecasts a 5-point miss is within noise, and noise must not
    # retrain models.
    n_pooled = pooled["n"]
    coverage = {}
    for level in (80, 95):
        cov = pooled[f"coverage_{level}"]
        off = False
        if n_pooled and abs(cov - level / 100) > policy.coverage_tolerance:
            from scipy.stats import binomtest

            off = binomtest(int(round(cov * n_pooled)), n_pooled, level / 100).pvalue < 0.01
        coverage[level] = (cov, off)

    out: dict[str, list[dict]] = {}
    for symbol in symbols:
        where = bounds.get(symbol)
        mine = None
        if where is not None:
            rows_at = order[where[0] : where[1]]
            rows_at = rows_at[np.argsort(dates[rows_at], kind="stable")] if len(rows_at) > 1 else rows_at
            own = {c: v[rows_at] for c, v in columns.items()}
            mine = _metrics(own)
        n = mine["n"] if mine else 0
        reason = None
        if n == 0:
            reason = f"no matured {policy.horizon}-session forecasts in the last {policy.window} sessions yet"
        elif n < policy.min_matured:
            reason = f"{n} matured forecasts (< {policy.min_matured})"
        value = (lambda k: mine[k]) if mine else (lambda k: None)
        rows = [
            drift_row("perf_mase", None, value("mase"), None, policy.mase_threshold, reason is None and value("mase") > policy.mase_threshold, n, reason),
            drift_row("perf_mae", None, value("mae"), None, None, False, n, reason),
            drift_row("perf_mape", None, value("mape"), None, None, False, n, reason),
            drift_row("perf_rmse", None, value("rmse"), None, None, False, n, reason),
            drift_row("perf_da", None, value("da"), None, None, False, n, reason),
        ]
        for level in (80, 95):
            cov, off = coverage[level]
            why = reason if reason else (None if n_pooled >= policy.min_matured else "too few pooled forecasts")
            rows.append(drift_row(f"perf_coverage_{level}", None, cov, None, policy.coverage_tolerance, off, n_pooled, why))
        rows.append(drift_row("perf_rank_ic", None, ic, None, None, False, n_pooled, reason))
        # CUSUM on standardized residuals: the 80% interval's half-width / z(0.9) is the forecast's own sigma.
        if n:
            sigma = (own["upper_80"] - own["lower_80"]) / (2 * Z80)
            r = drift.cusum((own["realized_return"] - own["pred_return"]) / sigma, h=policy.cusum_h)
            rows.append(drift_row("cusum", None, r.statistic, None, r.threshold, r.breached, n, r.skipped_reason))
        else:
            rows.append(drift_row("cusum", None, None, None, policy.cusum_h, False, 0, reason))
        out[symbol] = rows
    return out


def retrain_decision(history: pd.DataFrame, as_of, policy: DriftPolicy) -> dict[str, Any]:
    """Whether the drift rows up to ``as_of`` demand a retrain, why, and the episode (first day of the streak).

    ``history``: drift rows (``symbol, date, detector, breached, skipped_reason``) of every symbol over at least
    the lookback. Rules: ``perf_mase`` breached on ``consecutive`` consecutive evaluations within
    ``lookback_days``; pooled coverage off by more than the tolerance on ``consecutive`` consecutive
    evaluations; MMD p-values of a day's symbols rejected by Benjamini-Hochberg at ``mmd_alpha`` on
    ``consecutive`` consecutive evaluations (confirmed feature drift). Skipped rows never count.
    """
    as_of = pd.Timestamp(as_of)
    h = history[(pd.to_datetime(history["date"]) <= as_of) & (pd.to_datetime(history["date"]) > as_of - pd.Timedelta(days=policy.lookback_days))].copy()
    h["date"] = pd.to_datetime(h["date"])
    reasons, episodes = [], []
    evaluated = h[h["skipped_reason"].isna()]

    def streak(frame: pd.DataFrame) -> pd.Timestamp | None:
        """First date of the breach streak ending at as_of when it is at least ``consecutive`` long."""
        days = frame.sort_values("date")
        if days.empty or days["date"].iloc[-1] != as_of or not days["breached"].iloc[-1]:
            return None
        flags = days["breached"].to_numpy()[::-1]
        run = int(np.argmin(flags)) if not flags.all() else len(flags)
        return days["date"].iloc[len(days) - run] if run >= policy.consecutive else None

    for symbol, part in evaluated[evaluated["detector"] == "perf_mase"].groupby("symbol"):
        start = streak(part)
        if start is not None:
            reasons.append(f"{symbol}: MASE above {policy.mase_threshold} on {policy.consecutive}+ consecutive evaluations")
            episodes.append(start)
    for level in (80, 95):
        cov = evaluated[evaluated["detector"] == f"perf_coverage_{level}"].drop_duplicates("date")
        start = streak(cov)
        if start is not None:
            reasons.append(f"{level}% interval coverage off by more than {policy.coverage_tolerance:.0%} on {policy.consecutive}+ consecutive evaluations")
            episodes.append(start)
    mmd = evaluated[(evaluated["detector"] == "mmd") & evaluated["p_value"].notna()]
    confirmed = _mmd_confirmed(mmd, policy.mmd_alpha)
    by_day = pd.DataFrame({"date": list(confirmed), "breached": [bool(v) for v in confirmed.values()]})
    start = streak(by_day)
    if start is not None:
        # Confirmed = BH-rejected on `consecutive` evaluations in a row: returns and ranges cluster in
        # volatility, so a single day's rejection is often a passing storm, not a new world.
        episodes.append(start)
        reasons.append(
            f"feature drift confirmed by MMD (Benjamini-Hochberg over the universe at {policy.mmd_alpha}) on "
            f"{policy.consecutive}+ consecutive evaluations, today for {', '.join(confirmed[as_of])}"
        )
    return {"retrain": bool(reasons), "reasons": reasons, "episode_start": min(episodes).date().isoformat() if episodes else None}


def _mmd_confirmed(mmd: pd.DataFrame, alpha: float) -> dict[pd.Timestamp, list[str]]:
    """Per day: the symbols whose MMD p-value survives Benjamini-Hochberg over that day's symbols."""
    out = {}
    for day, part in mmd.groupby("date"):
        rejected, _ = benjamini_hochberg(part["p_value"].to_numpy(dtype=np.float64), alpha)
        out[pd.Timestamp(day)] = sorted(part["symbol"].to_numpy()[rejected])
    return out


# ----- drift scoring of a symbol x date rectangle (the drift_scores asset and the policy backtest) --------------


def drift_seed(day: dt.date | pd.Timestamp) -> int:
    """The MMD permutation seed of an evaluated day: the same day gives the same p-value wherever it is scored."""
    return int(pd.Timestamp(day).value % 2**31)


def reference_start(cutoff: dt.date, policy: DriftPolicy) -> dt.date:
    """The first session a model's reference window can need (a few sessions of slack for warm-up rows)."""
    sessions = all_sessions()
    end = int(sessions.searchsorted(pd.Timestamp(cutoff), side="right")) - 1
    return sessions[max(end - policy.reference_sessions - 10, 0)].date()


def reference_windows(features: pd.DataFrame, cutoff: dt.date, policy: DriftPolicy) -> dict[str, np.ndarray]:
    """Per symbol: the newest ``reference_sessions`` rows (past the warm-up) of the drift features up to ``cutoff``.

    Up to the cut-off, not the end of the fitting window: the model saw that data (fitting or calibration), and
    a retrain must reset the reference, or the window that triggered it would keep firing.
    """
    rows = features[~features["warmup"].astype(bool) & (pd.to_datetime(features["date"]) <= pd.Timestamp(cutoff))]
    rows = rows.sort_values(["symbol", "date"], kind="stable")
    return {s: g.tail(policy.reference_sessions)[list(policy.features)].to_numpy(dtype=np.float64) for s, g in rows.groupby("symbol")}


def symbol_drift_rows(
    symbol: str,
    day: pd.Timestamp,
    own_features: pd.DataFrame,
    references: dict[str, np.ndarray] | None,
    outcomes: pd.DataFrame,
    policy: DriftPolicy,
    model_version: str,
) -> list[dict]:
    """Every detector for one symbol on one evaluated day.

    ``own_features``: the symbol's feature rows past the warm-up, sorted by date (later rows are ignored);
    ``references``: the reference windows of the model the day is judged against, None when no model was
    trained before the day (the feature detectors are then skipped with that reason).
    """
    day = pd.Timestamp(day)
    own = own_features[pd.to_datetime(own_features["date"]) <= day]
    recent = own.tail(policy.feature_window)[list(policy.features)].to_numpy(dtype=np.float64)
    if references is None:
        reason = f"no model trained before {day.date()}: no reference window"
        drift_rows = [drift_row(d, None, None, None, None, False, 0, reason) for d in ("ks", "cvm", "psi", "mmd")]
    else:
        reference = references.get(symbol, np.empty((0, len(policy.features))))
        drift_rows = feature_drift_rows(reference, recent, list(policy.features), policy, seed=drift_seed(day))
    rows = [*drift_rows, *performance_rows(symbol, outcomes, day, policy)]
    return [{"symbol": symbol, "date": day, **row, "model_version": model_version} for row in rows]
