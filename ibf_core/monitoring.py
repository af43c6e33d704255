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


def served_order(outcomes: pd.DataFrame) -> pd.DataFrame:
    """``outcomes`` with ``served_order``: what ``rank`` ordered (``rank_score``; ``pred_return`` in rows written
    before the ranking was chosen apart from the point forecast), so the monitored rank IC is the served ranking's."""
    order = outcomes["pred_return"]
    if "rank_score" in outcomes.columns:
        order = pd.to_numeric(outcomes["rank_score"], errors="coerce").fillna(order)
    return outcomes.assign(served_order=order)


# The same outcome columns as ``matured_outcomes``, always current, for SQL users (a view: nothing to refresh).
# Declared here, gathered by ``ibf_core.catalog``; a change of the SQL reaches existing warehouses (its version).
FORECAST_OUTCOMES = ViewSpec(
    name="forecast_outcomes",
    description="Matured forecasts with the realized price and return (the columns of matured_outcomes); rank_score is "
    "what rank ordered (NULL in rows written before the ranking was chosen apart from pred_return).",
    sql="""
SELECT p.symbol, p.date, p.horizon, p.target_date, p.model_version, p.pred_return, p.pred_price, p.rank_score,
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
        ic = cross_sectional_ic(served_order(part), "served_order", "realized_return", "spearman")
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
    return feature_drift_rows_many([reference], [recent], features, policy, seed)[0]


def feature_drift_rows_many(
    references: list[np.ndarray], recents: list[np.ndarray], features: list[str], policy: DriftPolicy, seed: int = 0
) -> list[list[dict]]:
    """``feature_drift_rows`` of many (reference, recent) pairs judged on the same day (one seed): each test runs
    once over all pairs (``ibf_core.drift``'s batched detectors), not once per symbol."""
    from ibf_core import drift

    out: list[list[dict]] = [[] for _ in references]
    tested = [i for i, ref in enumerate(references) if len(ref)]
    for i, ref in enumerate(references):
        if not len(ref):
            reason = "no reference window (the symbol was not in the model's training data)"
            out[i] = [_row(d, None, None, None, None, False, 0, reason) for d in ("ks", "cvm", "psi", "mmd")]
    if not tested:
        return out
    refs = [references[i] for i in tested]
    recs = [recents[i] for i in tested]
    for method in ("ks", "cvm"):
        batch = drift.univariate_tests_many(refs, recs, features, method=method, alpha=policy.ks_alpha)
        for i, rows in zip(tested, batch):
            n = len(recents[i])
            out[i] += [_row(r.detector, r.feature, r.statistic, r.p_value, r.threshold, r.breached, n, r.skipped_reason) for r in rows]
    for i, rows in zip(tested, drift.psi_many(refs, recs, features, threshold=policy.psi_threshold)):
        out[i] += [_row(r.detector, r.feature, r.statistic, r.p_value, r.threshold, r.breached, len(recents[i]), r.skipped_reason) for r in rows]
    mmd = drift.mmd_tests(refs, recs, alpha=policy.mmd_alpha, n_permutations=policy.mmd_permutations, seed=seed)
    for i, r in zip(tested, mmd):
        out[i].append(_row("mmd", None, r.statistic, r.p_value, r.threshold, r.breached, len(recents[i]), r.skipped_reason))
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
    return _performance_rows(symbols, window_outcomes(outcomes, as_of, policy), as_of, policy)


def _performance_rows(symbols, part: pd.DataFrame, as_of, policy: DriftPolicy) -> dict[str, list[dict]]:
    """``performance_rows_many`` from the window's outcomes (``window_outcomes``)."""
    from ibf_core import drift
    from ibf_core.evaluation.metrics import cross_sectional_ic

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
            _row("perf_mase", None, value("mase"), None, policy.mase_threshold, reason is None and value("mase") > policy.mase_threshold, n, reason),
            _row("perf_mae", None, value("mae"), None, None, False, n, reason),
            _row("perf_mape", None, value("mape"), None, None, False, n, reason),
            _row("perf_rmse", None, value("rmse"), None, None, False, n, reason),
            _row("perf_da", None, value("da"), None, None, False, n, reason),
        ]
        for level in (80, 95):
            cov, off = coverage[level]
            why = reason if reason else (None if n_pooled >= policy.min_matured else "too few pooled forecasts")
            rows.append(_row(f"perf_coverage_{level}", None, cov, None, policy.coverage_tolerance, off, n_pooled, why))
        rows.append(_row("perf_rank_ic", None, ic, None, None, False, n_pooled, reason))
        # CUSUM on standardized residuals: the 80% interval's half-width / z(0.9) is the forecast's own sigma.
        if n:
            sigma = (own["upper_80"] - own["lower_80"]) / (2 * Z80)
            r = drift.cusum((own["realized_return"] - own["pred_return"]) / sigma, h=policy.cusum_h)
            rows.append(_row("cusum", None, r.statistic, None, r.threshold, r.breached, n, r.skipped_reason))
        else:
            rows.append(_row("cusum", None, None, None, policy.cusum_h, False, 0, reason))
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


# What a drift row is computed from besides its inputs: bump when the scoring itself changes, and every stored row
# is rescored by the next run (its digest no longer matches).
SCORING_VERSION = "3"  # 3: the monitored rank IC is the served ranking's (``served_order``)
_OUTCOME_DIGEST_COLUMNS = [
    "symbol", "date", "target_date", "pred_return", "pred_price", "lower_80", "upper_80", "lower_95", "upper_95",
    "rank_score", "realized_price", "realized_return",
]


@dataclass(frozen=True)
class RectangleScores:
    """The drift rows of a rectangle, and how many (symbol, session) pairs were scored, carried or dropped."""

    frame: pd.DataFrame
    scored: int
    carried: int
    dropped: int  # stored pairs the rectangle no longer has (a session without features any more)

    @property
    def changed(self) -> bool:
        """Whether the rows differ from the stored ones (False: nothing to write)."""
        return bool(self.scored or self.dropped)


def recent_lookback(policy: DriftPolicy) -> int:
    """Sessions before an evaluated day that its recent feature window and its performance window may reach."""
    return policy.feature_window + policy.window + policy.horizon + 5


def _digest(*parts: bytes | str) -> bytes:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def _array_digest(values: np.ndarray) -> bytes:
    values = np.ascontiguousarray(values, dtype=np.float64)
    return _digest(str(values.shape), values.tobytes())


class _ScoringInputs:
    """Everything scoring reads for ``universe`` up to ``end``, read once: the drift features of every stored
    session (recent windows and reference windows come from the same rows), and the matured forecasts."""

    def __init__(self, store, universe: list[str], start: dt.date, end: dt.date, policy: DriftPolicy):
        from ibf_core.calendar import lookback_start
        from ibf_core.features.table import features_spec
        from ibf_core.storage.tables import MARKET_BARS, PREDICTIONS

        self.policy = policy
        end_ts = pd.Timestamp(end)
        first = pd.Timestamp(lookback_start(start, recent_lookback(policy)))
        features = _frame(store.read_partitions(features_spec(), universe, ["symbol", "date", "warmup", *policy.features]))
        features = features[features["date"] <= end_ts].sort_values(["symbol", "date"], kind="stable")
        self.sessions = features[["symbol", "date"]]  # every stored session (warm-up too) decides the days scored
        usable = features[~features["warmup"].astype(bool)]
        names = usable["symbol"].to_numpy()
        keys, starts = np.unique(names, return_index=True)
        stops = [*starts[1:], len(names)]
        dates = usable["date"].to_numpy()
        values = usable[list(policy.features)].to_numpy(dtype=np.float64)
        self.usable = {k: (dates[a:b], values[a:b]) for k, a, b in zip(keys, starts, stops)}
        self.empty = (dates[:0], values[:0])

        columns = ["symbol", "date", "horizon", "target_date", "pred_return", "pred_price", "lower_80", "upper_80", "lower_95", "upper_95", "rank_score"]
        predictions = _frame(store.read_partitions(PREDICTIONS, universe, columns))
        predictions = predictions[(predictions["horizon"] == policy.horizon) & predictions["date"].between(first, end_ts)]
        predictions = predictions.assign(target_date=pd.to_datetime(predictions["target_date"]))
        bars = _frame(store.read_partitions(MARKET_BARS, universe, ["symbol", "date", "close", "adj_close"]))
        bars = bars[bars["date"].between(first, end_ts)].sort_values(["symbol", "date"], kind="stable")
        # Matured by ``end``; each day then keeps the forecasts matured by itself (``window_outcomes``).
        self.outcomes = matured_outcomes(predictions.sort_values(["symbol", "date"], kind="stable"), bars, end)
        self.references: dict[str, tuple[dict[str, np.ndarray], dict[str, bytes]]] = {}

    def recent(self, symbol: str, day: pd.Timestamp, first: pd.Timestamp) -> np.ndarray:
        """The symbol's last ``feature_window`` usable rows up to ``day``, none before ``first``."""
        dates, values = self.usable.get(symbol, self.empty)
        hi = int(dates.searchsorted(day.to_datetime64(), side="right"))
        lo = max(int(dates.searchsorted(first.to_datetime64(), side="left")), hi - self.policy.feature_window)
        return values[lo:hi]

    def reference(self, version) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        """The version's reference windows (``reference_windows`` of its cut-off) and their digests, per symbol."""
        if version.version not in self.references:
            cutoff = pd.Timestamp(version.cutoff)
            first = pd.Timestamp(reference_start(version.cutoff, self.policy)).to_datetime64()
            windows, digests = {}, {}
            for symbol, (dates, values) in self.usable.items():
                hi = int(dates.searchsorted(cutoff.to_datetime64(), side="right"))
                lo = max(int(dates.searchsorted(first, side="left")), hi - self.policy.reference_sessions)
                if hi > lo:
                    windows[symbol] = values[lo:hi]
                    digests[symbol] = _array_digest(values[lo:hi])
            self.references[version.version] = (windows, digests)
        return self.references[version.version]


def _frame(table) -> pd.DataFrame:
    frame = table.to_pandas()
    return frame.assign(date=pd.to_datetime(frame["date"]))


def _version_key(version) -> str:
    if version is None:
        return "none"
    return f"{version.version}|{version.cutoff}|{getattr(version, 'manifest_sha256', '')}"


def _score(store, versions: list, universe: list[str], symbols, start: dt.date, end: dt.date, policy: DriftPolicy,
           stored: pd.DataFrame | None) -> RectangleScores:
    """Score ``symbols`` x the sessions in [start, end], carrying the ``stored`` rows whose digest still matches."""
    from ibf_core.calendar import lookback_start
    from ibf_core.models.registry import newest_before
    from ibf_core.storage.tables import DRIFT_SCORES

    symbols = list(symbols)
    inputs = _ScoringInputs(store, list(universe), start, end, policy)
    mine = inputs.sessions[inputs.sessions["symbol"].isin(symbols)]
    days = sorted(d for d in mine["date"].unique() if pd.Timestamp(start) <= d <= pd.Timestamp(end))
    policy_key = _digest(SCORING_VERSION, repr(policy))
    known: dict[tuple[str, pd.Timestamp], str] = {}
    if stored is not None and len(stored) and "inputs_digest" in stored.columns:
        pairs = stored[["symbol", "date", "inputs_digest"]].drop_duplicates()
        pairs = pairs[~pairs.duplicated(["symbol", "date"], keep=False) & pairs["inputs_digest"].notna()]
        known = {(s, pd.Timestamp(d)): h for s, d, h in pairs.itertuples(index=False)}
    frames: list[pd.DataFrame] = []
    carried: list[tuple[str, pd.Timestamp]] = []
    rescored: set[tuple[str, pd.Timestamp]] = set()
    scored = 0
    for day in days:
        day = pd.Timestamp(day)
        version = newest_before(versions, day.date())
        refs, ref_digests = inputs.reference(version) if version is not None else (None, {})
        label = version.version if version is not None else ""
        first = pd.Timestamp(lookback_start(day.date(), recent_lookback(policy)))
        part = window_outcomes(inputs.outcomes, day, policy)
        day_key = _digest(
            policy_key, _version_key(version), str(day.date()),
            pd.util.hash_pandas_object(part[_OUTCOME_DIGEST_COLUMNS], index=False).to_numpy().tobytes() if len(part) else b"",
        )
        recents, todo, digests = {}, [], {}
        for symbol in symbols:
            recent = inputs.recent(symbol, day, first)
            digest = _digest(day_key, ref_digests.get(symbol, b""), _array_digest(recent)).hex()
            if known.get((symbol, day)) == digest:
                carried.append((symbol, day))
                continue
            recents[symbol], digests[symbol] = recent, digest
            todo.append(symbol)
        if not todo:
            continue
        scored += len(todo)
        rescored.update((s, day) for s in todo)
        if refs is None:
            reason = f"no model trained before {day.date()}: no reference window"
            drift_rows = {s: [_row(d, None, None, None, None, False, 0, reason) for d in ("ks", "cvm", "psi", "mmd")] for s in todo}
        else:
            empty = np.empty((0, len(policy.features)))
            batch = feature_drift_rows_many([refs.get(s, empty) for s in todo], [recents[s] for s in todo],
                                            list(policy.features), policy, seed=drift_seed(day))
            drift_rows = dict(zip(todo, batch))
        perf_rows = _performance_rows(todo, part, day, policy)
        rows = [
            {"symbol": s, "date": day, **row, "model_version": label, "inputs_digest": digests[s]}
            for s in todo for row in (*drift_rows[s], *perf_rows[s])
        ]
        frames.append(pd.DataFrame(rows, columns=DRIFT_SCORES.column_names))
    if carried:
        at = pd.MultiIndex.from_arrays([stored["symbol"], pd.to_datetime(stored["date"])])
        frames.insert(0, stored[at.isin(pd.MultiIndex.from_tuples(carried))][DRIFT_SCORES.column_names])
    before = set()
    if stored is not None and len(stored):
        before = set(stored[["symbol", "date"]].drop_duplicates().itertuples(index=False, name=None))
    dropped = len({(s, pd.Timestamp(d)) for s, d in before} - set(carried) - rescored)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DRIFT_SCORES.column_names)
    return RectangleScores(frame, scored, len(carried), dropped)


def score_rectangle(store, versions: list, universe: list[str], symbols, start: dt.date, end: dt.date, policy: DriftPolicy) -> pd.DataFrame:
    """Every detector for ``symbols`` x the sessions in [start, end] that have features (``drift_scores`` rows),
    all scored afresh (``refresh_rectangle`` carries the unchanged stored rows instead).

    ``versions``: the registered model versions, oldest cut-off first; each day is judged against the
    reference of ``newest_before(versions, day)``. The universe's matured forecasts feed the pooled metrics.
    A day's rows read nothing after the day: its recent features, the forecasts matured by its close, the
    model version in force on it — the same rows whatever rectangle the day is scored in.
    """
    return _score(store, versions, universe, symbols, start, end, policy, None).frame


def refresh_rectangle(
    store, versions: list, universe: list[str], symbols, start: dt.date, end: dt.date, policy: DriftPolicy,
    stored: pd.DataFrame | None = None,
) -> RectangleScores:
    """``score_rectangle``, but a (symbol, session) whose stored rows were scored from the same inputs is carried,
    not rescored: the daily run of a month partition scores the new session, not the month to date.

    The rule: a drift row of (symbol, day) is a deterministic function of (a) the scoring code
    (``SCORING_VERSION``) and the policy, (b) the model version in force on the day (version, cut-off, manifest)
    and the symbol's reference window under it, (c) the symbol's recent feature window up to the day and (d) the
    universe's forecasts that matured in the performance window ending at the day, with their realized prices
    (the pooled metrics read every symbol's). ``inputs_digest`` stored with the rows hashes exactly those values.
    The rows are carried when the digest computed from the warehouse now equals the stored one, so identical
    inputs give identical rows; any rewrite that changes a value they read (features, predictions or bars of a
    session up to the day, a new or re-registered model version, a changed setting) changes the digest, and the
    pair is rescored. A rewrite with identical values keeps the digest: rescoring would give the same rows.
    Rows stored without a digest (before it existed) are rescored once.

    ``stored``: the rectangle's stored rows when the caller has read them already (else they are read here).
    """
    from ibf_core.storage.tables import DRIFT_SCORES

    if stored is None:
        stored = store.read(DRIFT_SCORES, list(symbols), start, end)
    return _score(store, versions, universe, symbols, start, end, policy, stored)


def retrain_status(
    store, universe: list[str], as_of: pd.Timestamp | None, policy: DriftPolicy, history: pd.DataFrame | None = None
) -> dict[str, Any]:
    """``retrain_decision`` over the stored drift rows of the universe in the look-back before ``as_of``
    (``history``: those rows when the caller has them, at least the look-back; else they are read)."""
    from ibf_core.storage.tables import DRIFT_SCORES

    if as_of is None:
        return {"retrain": False, "reasons": ["no drift rows in this run"], "episode_start": None}
    as_of = pd.Timestamp(as_of)
    if history is None:
        history = store.read(DRIFT_SCORES, universe, (as_of - pd.Timedelta(days=policy.lookback_days)).date(), as_of.date())
    return retrain_decision(history, as_of, policy)
