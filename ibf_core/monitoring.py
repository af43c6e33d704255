"""Forecast monitoring: matured forecasts against what happened, and rolling performance per symbol and pooled."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.storage.tables import ViewSpec

POOLED = "*"  # the symbol value of the pooled (all-symbol) rows


def matured_outcomes(predictions: pd.DataFrame, bars: pd.DataFrame, as_of: dt.date | pd.Timestamp) -> pd.DataFrame:
    """Forecasts whose target session is on or before ``as_of``, with the realized price and return.

    Adds ``realized_price`` (close at the target session), ``realized_return`` (log total return from
    ``adj_close``), ``abs_error`` (of the log return), ``pct_error`` (|forecast price - realized| / realized),
    ``direction_hit`` (NaN when forecast or outcome is exactly 0), ``hit_80``, ``hit_95``.
    """
    if predictions.empty:
        return predictions.assign(realized_price=[], realized_return=[])
    p = predictions.copy()
    p["date"], p["target_date"] = pd.to_datetime(p["date"]), pd.to_datetime(p["target_date"])
    p = p[p["target_date"] <= pd.Timestamp(as_of)]
    prices = bars[["symbol", "date", "close", "adj_close"]].copy()
    prices["date"] = pd.to_datetime(prices["date"])
    origin = prices.rename(columns={"close": "_c0", "adj_close": "_a0"})
    target = prices.rename(columns={"date": "target_date", "close": "realized_price", "adj_close": "_a1"})
    out = p.merge(origin, on=["symbol", "date"], how="inner").merge(target, on=["symbol", "target_date"], how="inner")
    out["realized_return"] = np.log(out["_a1"] / out["_a0"])
    out["abs_error"] = (out["pred_return"] - out["realized_return"]).abs()
    out["pct_error"] = (out["pred_price"] - out["realized_price"]).abs() / out["realized_price"]
    signs = np.sign(out["pred_return"]) * np.sign(out["realized_return"])
    out["direction_hit"] = np.where(signs == 0, np.nan, (signs > 0).astype(float))
    for level in (80, 95):
        out[f"hit_{level}"] = out["realized_return"].between(out[f"lower_{level}"], out[f"upper_{level}"]).astype(float)
    return out.drop(columns=["_c0", "_a0", "_a1"]).reset_index(drop=True)


# The same outcome columns as ``matured_outcomes``, always current, for SQL users (a view: nothing to refresh).
# Declared here, gathered by ``ibf_core.catalog``; a change of the SQL reaches existing warehouses (its version).
FORECAST_OUTCOMES = ViewSpec(
    name="forecast_outcomes",
    description="Matured forecasts with the realized price and return (the columns of matured_outcomes).",
    sql="""
SELECT p.symbol, p.date, p.horizon, p.target_date, p.model_version, p.pred_return, p.pred_price,
       b.close AS realized_price, ln(b.adj_close / a.adj_close) AS realized_return,
       abs(p.pred_return - ln(b.adj_close / a.adj_close)) AS abs_error,
       abs(p.pred_price - b.close) / b.close AS pct_error,
       CASE WHEN p.pred_return = 0 OR b.adj_close = a.adj_close THEN NULL
            ELSE CAST(sign(p.pred_return) = sign(ln(b.adj_close / a.adj_close)) AS DOUBLE) END AS direction_hit,
       CAST(ln(b.adj_close / a.adj_close) BETWEEN p.lower_80 AND p.upper_80 AS DOUBLE) AS hit_80,
       CAST(ln(b.adj_close / a.adj_close) BETWEEN p.lower_95 AND p.upper_95 AS DOUBLE) AS hit_95
FROM predictions p
JOIN market_bars a ON a.symbol = p.symbol AND a.date = p.date
JOIN market_bars b ON b.symbol = p.symbol AND b.date = p.target_date
""",
)


def window_start(as_of: dt.date | pd.Timestamp, sessions: int) -> pd.Timestamp:
    """The first session of the ``sessions``-session window ending at ``as_of``."""
    days = all_sessions()
    end = int(days.searchsorted(pd.Timestamp(as_of), side="right")) - 1
    return days[max(end - sessions + 1, 0)]


def rolling_performance(outcomes: pd.DataFrame, as_of: dt.date | pd.Timestamp, window: int, horizon: int) -> pd.DataFrame:
    """One row per symbol plus a pooled row (symbol ``*``): metrics of the forecasts at ``horizon`` that matured
    in the ``window`` sessions ending at ``as_of``.

    Columns: ``symbol, n, mae, mape, rmse, mase`` (MAE / the random walk's MAE, i.e. mean |realized|), ``da``,
    ``coverage_80, coverage_95, rank_ic`` (pooled row only: mean per-origin Spearman IC across symbols).
    """
    from ibf_core.evaluation.metrics import cross_sectional_ic

    first = window_start(as_of, window)
    part = outcomes[(outcomes["horizon"] == horizon) & (outcomes["target_date"] >= first) & (outcomes["target_date"] <= pd.Timestamp(as_of))]
    rows = []
    for symbol, group in [*part.groupby("symbol"), (POOLED, part)]:
        naive = group["realized_return"].abs().mean()
        rows.append(
            {
                "symbol": symbol,
                "n": len(group),
                "mae": group["abs_error"].mean(),
                "mape": group["pct_error"].mean(),
                "rmse": float(np.sqrt(np.mean((group["pred_return"] - group["realized_return"]) ** 2))) if len(group) else np.nan,
                "mase": group["abs_error"].mean() / naive if naive and naive > 0 else np.nan,
                "da": group["direction_hit"].mean(),
                "coverage_80": group["hit_80"].mean(),
                "coverage_95": group["hit_95"].mean(),
                "rank_ic": np.nan,
            }
        )
    out = pd.DataFrame(rows, columns=["symbol", "n", "mae", "mape", "rmse", "mase", "da", "coverage_80", "coverage_95", "rank_ic"])
    if len(part):
        ic = cross_sectional_ic(part, "pred_return", "realized_return", "spearman")
        out.loc[out["symbol"] == POOLED, "rank_ic"] = ic.mean() if len(ic) else np.nan
    return out


# ----- drift scoring -----------------------------------------------------------------------------------------

# Near-iid daily quantities: a two-sample test assumes independent draws, and overlapping-window features
# (60-day volatility, moving-average ratios) are so autocorrelated that a 60-session window of them is a
# handful of independent points, which makes KS/MMD fire on stationary data.
DRIFT_FEATURES: tuple[str, ...] = ("logret_1", "intraday_ret", "gap_overnight", "hl_range")
Z80 = 1.2815515655446004  # standard-normal 90% quantile: half-width of an 80% interval in sigmas


def _default(name: str) -> Any:
    """The default of setting ``name``: every monitoring default is written once, in ``Settings``."""
    from ibf_core.settings import Settings

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


def _row(detector: str, feature: str | None, statistic, p_value, threshold, breached: bool, n: int, reason: str | None = None) -> dict:
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
    from ibf_core import drift

    rows: list[dict] = []
    if len(reference) == 0:
        reason = "no reference window (the symbol was not in the model's training data)"
        return [_row(d, None, None, None, None, False, 0, reason) for d in ("ks", "cvm", "psi", "mmd")]
    for method in ("ks", "cvm"):
        for r in drift.univariate_tests(reference, recent, features, method=method, alpha=policy.ks_alpha):
            rows.append(_row(r.detector, r.feature, r.statistic, r.p_value, r.threshold, r.breached, len(recent), r.skipped_reason))
    for r in drift.psi(reference, recent, features, threshold=policy.psi_threshold):
        rows.append(_row(r.detector, r.feature, r.statistic, r.p_value, r.threshold, r.breached, len(recent), r.skipped_reason))
    r = drift.mmd_test(reference, recent, alpha=policy.mmd_alpha, n_permutations=policy.mmd_permutations, seed=seed)
    rows.append(_row("mmd", None, r.statistic, r.p_value, r.threshold, r.breached, len(recent), r.skipped_reason))
    return rows


def performance_rows(symbol: str, outcomes: pd.DataFrame, as_of, policy: DriftPolicy) -> list[dict]:
    """Rolling performance of the symbol's matured forecasts, the pooled rank IC, and a CUSUM on its residuals."""
    from ibf_core import drift

    perf = rolling_performance(outcomes, as_of, policy.window, policy.horizon) if len(outcomes) else pd.DataFrame()
    mine = perf[perf["symbol"] == symbol] if len(perf) else perf
    pooled = perf[perf["symbol"] == POOLED] if len(perf) else perf
    n = int(mine["n"].iloc[0]) if len(mine) else 0
    reason = None
    if n == 0:
        reason = f"no matured {policy.horizon}-session forecasts in the last {policy.window} sessions yet"
    elif n < policy.min_matured:
        reason = f"{n} matured forecasts (< {policy.min_matured})"
    value = (lambda k: mine[k].iloc[0]) if len(mine) else (lambda k: None)
    rows = [
        _row("perf_mase", None, value("mase"), None, policy.mase_threshold, reason is None and value("mase") > policy.mase_threshold, n, reason),
        _row("perf_mae", None, value("mae"), None, None, False, n, reason),
        _row("perf_mape", None, value("mape"), None, None, False, n, reason),
        _row("perf_rmse", None, value("rmse"), None, None, False, n, reason),
        _row("perf_da", None, value("da"), None, None, False, n, reason),
    ]
    for level in (80, 95):
        cov = pooled[f"coverage_{level}"].iloc[0] if len(pooled) else None
        n_pooled = int(pooled["n"].iloc[0]) if len(pooled) else 0
        why = reason if reason else (None if n_pooled >= policy.min_matured else "too few pooled forecasts")
        # Off by more than the tolerance *and* significantly so (two-sided binomial p < 0.01): with ~150
        # forecasts a 5-point miss is within noise, and noise must not retrain models.
        off = False
        if cov is not None and n_pooled and abs(cov - level / 100) > policy.coverage_tolerance:
            from scipy.stats import binomtest

            off = binomtest(int(round(cov * n_pooled)), n_pooled, level / 100).pvalue < 0.01
        rows.append(_row(f"perf_coverage_{level}", None, cov, None, policy.coverage_tolerance, off, n_pooled, why))
    ic = pooled["rank_ic"].iloc[0] if len(pooled) else None
    rows.append(_row("perf_rank_ic", None, ic, None, None, False, int(pooled["n"].iloc[0]) if len(pooled) else 0, reason))
    # CUSUM on standardized residuals: the 80% interval's half-width / z(0.9) is the forecast's own sigma.
    if n:
        first = window_start(as_of, policy.window)
        own = outcomes[(outcomes["symbol"] == symbol) & (outcomes["horizon"] == policy.horizon) & (outcomes["target_date"] >= first)].sort_values("date")
        sigma = (own["upper_80"] - own["lower_80"]) / (2 * Z80)
        r = drift.cusum(((own["realized_return"] - own["pred_return"]) / sigma).to_numpy(dtype=np.float64), h=policy.cusum_h)
        rows.append(_row("cusum", None, r.statistic, None, r.threshold, r.breached, len(own), r.skipped_reason))
    else:
        rows.append(_row("cusum", None, None, None, policy.cusum_h, False, 0, reason))
    return rows


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
    from ibf_core.drift import benjamini_hochberg

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
        drift_rows = [_row(d, None, None, None, None, False, 0, reason) for d in ("ks", "cvm", "psi", "mmd")]
    else:
        reference = references.get(symbol, np.empty((0, len(policy.features))))
        drift_rows = feature_drift_rows(reference, recent, list(policy.features), policy, seed=drift_seed(day))
    rows = [*drift_rows, *performance_rows(symbol, outcomes, day, policy)]
    return [{"symbol": symbol, "date": day, **row, "model_version": model_version} for row in rows]


def score_rectangle(store, versions: list, universe: list[str], symbols, start: dt.date, end: dt.date, policy: DriftPolicy) -> pd.DataFrame:
    """Every detector for ``symbols`` x the sessions in [start, end] that have features (``drift_scores`` rows).

    ``versions``: the registered model versions, oldest cut-off first; each day is judged against the
    reference of ``newest_before(versions, day)``. The universe's matured forecasts feed the pooled metrics.
    """
    from ibf_core.calendar import lookback_start
    from ibf_core.features.table import features_spec
    from ibf_core.models.registry import newest_before
    from ibf_core.storage.tables import DRIFT_SCORES, MARKET_BARS, PREDICTIONS

    first = lookback_start(start, policy.feature_window + policy.window + policy.horizon + 5)
    features = store.read(features_spec(), list(universe), first, end)
    bars = store.read(MARKET_BARS, list(universe), first, end)
    outcomes = matured_outcomes(store.read(PREDICTIONS, list(universe), first, end), bars, end)
    mine = features[features["symbol"].isin(list(symbols))]
    days = sorted(d for d in mine["date"].unique() if pd.Timestamp(start) <= d <= pd.Timestamp(end))
    usable = features[~features["warmup"].astype(bool)]
    by_symbol = {s: g for s, g in usable.groupby("symbol")}
    empty = usable.iloc[:0]
    references: dict[str, dict[str, np.ndarray]] = {}
    rows: list[dict] = []
    for day in days:
        version = newest_before(versions, pd.Timestamp(day).date())
        if version is not None and version.version not in references:
            window = store.read(features_spec(), list(universe), reference_start(version.cutoff, policy), version.cutoff)
            references[version.version] = reference_windows(window, version.cutoff, policy)
        refs = references[version.version] if version is not None else None
        label = version.version if version is not None else ""
        for symbol in symbols:
            rows += symbol_drift_rows(symbol, day, by_symbol.get(symbol, empty), refs, outcomes, policy, label)
    return pd.DataFrame(rows, columns=DRIFT_SCORES.column_names)


def retrain_status(store, universe: list[str], as_of: pd.Timestamp | None, policy: DriftPolicy) -> dict[str, Any]:
    """``retrain_decision`` over the stored drift rows of the universe in the look-back before ``as_of``."""
    from ibf_core.storage.tables import DRIFT_SCORES

    if as_of is None:
        return {"retrain": False, "reasons": ["no drift rows in this run"], "episode_start": None}
    as_of = pd.Timestamp(as_of)
    history = store.read(DRIFT_SCORES, universe, (as_of - pd.Timedelta(days=policy.lookback_days)).date(), as_of.date())
    return retrain_decision(history, as_of, policy)
