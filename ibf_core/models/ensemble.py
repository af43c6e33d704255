"""Ensemble weights chosen on validation, and conformal intervals calibrated on validation.

The ensemble does no harm by construction: per horizon it makes two choices on the validation window (every
member's forecasts there are out of sample: members are fitted before it), each recorded with its reasons in
``bundle.ensemble[str(h)]`` (bundle.json, the ``trained_models`` metadata, MLflow):

1. **The point forecast** (``pred_return``, chosen on squared error). Candidates: *equal*, *inverse validation MSE*
   and *stacking* (non-negative least squares of the realized return on the members' forecasts, normalized to
   sum to 1) over the members forecasting at least half the rows. Each is cross-fitted (weights from one half of
   the validation dates forecast the other half, both ways) and the lowest cross-fitted MSE wins; its weights are
   then refitted on the whole window. The combination is multiplied by a shrinkage ``lambda`` in [0, 1] towards
   the random walk (``shrinkage``): the slope of the realized return on the cross-fitted forecast (at most 1),
   times 1 - 1/t^2 with t its date-clustered, Newey-West, HLN-corrected t-statistic, and 0 unless t >= 2 and
   the window holds at least ``min_independent_targets`` independent targets (dates / h: overlapping 20-day
   targets of 60 origins are 3 observations). With lambda = 0 the ensemble *is* the random walk.
2. **The ranking** (``rank``, chosen on rank IC, ``choose_ranking``): the members' centred cross-sectional ranks
   alike, weighted by their validation rank IC shrunk the same way, or all on the best member, whichever ranks
   better cross-fitted; without evidence there, by the factor members' training-window rank IC; without that, equally.

Intervals are split-conformal and volatility-scaled: the score of a validation forecast is
(realized - forecast) / (trailing daily volatility x sqrt(h)); its empirical quantiles (with the (n+1)
finite-sample correction) set the 80% and 95% bounds for every later origin.

A member without a forecast for an origin (a neural member whose input window has too few observed sessions)
leaves the ensemble to the other members there: their weights are renormalized (``combine``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.evaluation.metrics import dense_rank_ics, ic_summary, newey_west_variance
from ibf_core.models.factors import stein_weight
from ibf_core.models.gbdt import centred_rank

# Heavy imports (scipy) stay inside the functions that need them: importing this module loads none of them.

LEVELS = {80: (0.10, 0.90), 95: (0.025, 0.975)}
METHODS = ("equal", "inverse_error", "stacking")


def _weights(method: str, preds: np.ndarray, realized: np.ndarray, members: list[str]) -> dict[str, float]:
    from scipy.optimize import nnls

    m = len(members)
    if method == "equal" or len(realized) < m + 2:
        w = np.full(m, 1.0 / m)
    elif method == "inverse_error":
        mse = np.mean((preds - realized[:, None]) ** 2, axis=0)
        inv = 1.0 / np.maximum(mse, 1e-12)
        w = inv / inv.sum()
    elif method == "stacking":
        w, _ = nnls(preds, realized)
        w = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)
    else:
        raise ValueError(method)
    return {name: float(v) for name, v in zip(members, w)}


def _combine(preds: np.ndarray, weights: dict[str, float], members: list[str]) -> np.ndarray:
    return preds @ np.array([weights[m] for m in members])


MIN_COVERAGE = 0.5  # a member forecasting fewer of the validation rows is left out of the choice
MIN_INDEPENDENT_TARGETS = 10  # ModelConfig.min_independent_targets' default
MIN_SHRINK_T = 2.0  # the point forecast leaves the random walk only on significant evidence


def independent_targets(n_dates: int, h: int) -> float:
    """Validation dates / h: consecutive origins' h-day targets overlap, so about one in h is independent."""
    return n_dates / max(int(h), 1)


def hln(t: float, n: int, h: int) -> float:
    """The Harvey-Leybourne-Newbold small-sample correction of a Newey-West t over n overlapping h-step targets."""
    factor = (n + 1 - 2 * h + h * (h - 1) / n) / n if n > 0 else 0.0
    return t * math.sqrt(factor) if factor > 0 and math.isfinite(t) else float("nan")


def usable_members(frame: pd.DataFrame, members: list[str]) -> tuple[list[str], dict[str, str]]:
    """Members forecasting at least ``MIN_COVERAGE`` of the rows with a realized return; the others with why."""
    used, left_out = [], {}
    for m in members:
        share = float(np.isfinite(frame[m].to_numpy(dtype=np.float64)).mean()) if len(frame) else 0.0
        if share >= MIN_COVERAGE:
            used.append(m)
        else:
            left_out[m] = f"forecasts {share:.0%} of the validation rows (< {MIN_COVERAGE:.0%})"
    return used, left_out


def _halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    dates = np.sort(frame["date"].unique())
    half = dates[len(dates) // 2] if len(dates) > 1 else dates[-1]
    return frame[frame["date"] < half], frame[frame["date"] >= half]


def cross_fitted(method: str, frame: pd.DataFrame, members: list[str]) -> np.ndarray:
    """Forecasts of ``method`` for every row, each half's from weights fitted on the other half (out of sample)."""
    out = np.full(len(frame), np.nan)
    first, second = _halves(frame)
    position = pd.Series(np.arange(len(frame)), index=frame.index)
    for fit, score in ((first, second), (second, first)):
        if fit.empty or score.empty:
            continue
        w = _weights(method, fit[members].to_numpy(), fit["realized"].to_numpy(), members)
        out[position.loc[score.index].to_numpy()] = _combine(score[members].to_numpy(), w, members)
    return out


def shrinkage(pred: np.ndarray, realized: np.ndarray, dates: np.ndarray, h: int, min_independent: float) -> dict[str, Any]:
    """How far to trust ``pred`` over the random walk: lambda in [0, 1] and the evidence behind it.

    beta = sum(pred x realized) / sum(pred^2) (no intercept: the best multiple of the forecast under squared
    loss); its standard error clusters each date's cross-section and is Newey-West over dates with h-1 lags
    (overlapping targets), HLN-corrected. lambda = min(1, beta) x (1 - 1/t^2) (the slope, never above 1, shrunk
    towards 0 by its own noise as positive-part Stein does), and 0 unless t >= ``MIN_SHRINK_T`` (a one-sided
    test at about 2.5%) and the window holds at least ``min_independent`` independent targets (dates / h).
    """
    ok = np.isfinite(pred) & np.isfinite(realized)
    frame = pd.DataFrame({"date": dates[ok], "fy": pred[ok] * realized[ok], "ff": pred[ok] ** 2})
    per_date = frame.groupby("date", sort=True)[["fy", "ff"]].sum()
    n_dates = len(per_date)
    n_eff = independent_targets(n_dates, h)
    out: dict[str, Any] = {"n_dates": n_dates, "independent_targets": round(n_eff, 1), "beta": None, "t": None}
    total = float(per_date["ff"].sum())
    if n_eff < min_independent:
        return {**out, "lambda": 0.0, "reason": f"{n_eff:.1f} independent validation targets ({n_dates} dates / h={h}) < {min_independent:g}: too few to trust, the random walk is served"}
    if total <= 0:
        return {**out, "lambda": 0.0, "reason": "the forecasts are all zero: the random walk"}
    beta = float(per_date["fy"].sum()) / total
    scores = (per_date["fy"] - beta * per_date["ff"]).to_numpy()
    variance = n_dates * newey_west_variance(scores, h - 1) / total**2
    t = hln(beta / math.sqrt(variance), n_dates, h) if variance > 0 else float("nan")
    out.update(beta=round(beta, 4), t=round(t, 3) if math.isfinite(t) else None)
    if not (beta > 0 and math.isfinite(t) and t >= MIN_SHRINK_T):
        return {**out, "lambda": 0.0, "reason": f"the forecasts do not move with the outcome significantly (beta {beta:.3f}, t {t:.2f} < {MIN_SHRINK_T:g}): the random walk is served"}
    lam = min(1.0, beta) * (1.0 - 1.0 / t**2)
    return {**out, "lambda": round(lam, 4), "reason": f"beta {beta:.3f} with t {t:.2f}: the forecast is scaled by {lam:.3f} towards the random walk"}


def choose_weights(
    validation: pd.DataFrame,
    members: list[str],
    h: int = 1,
    min_independent: float = MIN_INDEPENDENT_TARGETS,
    prior: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The point forecast's weights and shrinkage, and the ranking's weights, of one horizon.

    ``validation``: one horizon's rows with ``date``, ``realized`` and one column per member (NaN: no forecast).
    ``prior``: member -> its training-window rank IC ``{"mean", "t"}`` (the factor members), which the ranking
    falls back on when the validation window cannot judge (``choose_ranking``).
    """
    frame = validation[np.isfinite(validation["realized"].to_numpy(dtype=np.float64))]
    used, left_out = usable_members(frame, members)
    ranking = choose_ranking(frame, used, h, min_independent, prior)
    if not used:
        return {"method": "equal", "weights": {m: 1.0 / len(members) for m in members}, "shrink": 0.0, "members_left_out": left_out,
                "evidence": {"lambda": 0.0, "reason": "no member forecasts enough validation rows: the random walk is served"},
                "cross_fitted_mse": {}, "rows": 0, "ranking": ranking}
    complete = frame.dropna(subset=used)
    scores: dict[str, float | None] = {}
    preds = {method: cross_fitted(method, complete, used) for method in METHODS}
    for method, pred in preds.items():
        error = pred - complete["realized"].to_numpy()
        scores[method] = float(np.nanmean(error**2)) if np.isfinite(error).any() else None
    valid = {k: v for k, v in scores.items() if v is not None}
    chosen = min(valid, key=lambda k: valid[k]) if valid else "equal"
    evidence = shrinkage(preds[chosen], complete["realized"].to_numpy(), complete["date"].to_numpy(), h, min_independent)
    weights = _weights(chosen, complete[used].to_numpy(), complete["realized"].to_numpy(), used) if len(complete) else {m: 1.0 / len(used) for m in used}
    weights = {m: weights.get(m, 0.0) for m in members}
    naive_mse = float(np.mean(complete["realized"].to_numpy() ** 2)) if len(complete) else None
    return {"method": chosen, "weights": weights, "shrink": evidence["lambda"], "evidence": evidence, "members_left_out": left_out,
            "cross_fitted_mse": {**scores, "naive": naive_mse}, "rows": len(complete), "ranking": ranking}


RANKING_RULES = ("equal", "ic_weighted", "best_member")


class _Grid:
    """One horizon's validation rows as dense ``dates x slots`` matrices: the realized return, each member's forecast
    and its centred rank within the date, so per-date rank ICs need no groupby."""

    def __init__(self, frame: pd.DataFrame, members: list[str]) -> None:
        di, self.dates = pd.factorize(frame["date"], sort=True)
        slot = frame.groupby(di, sort=False).cumcount().to_numpy()  # position within the date: no symbol needed
        shape = (len(self.dates), int(slot.max()) + 1 if len(slot) else 0)

        def dense(values: np.ndarray) -> np.ndarray:
            out = np.full(shape, np.nan)
            out[di, slot] = values
            return out

        self.realized = dense(frame["realized"].to_numpy(dtype=np.float64))
        self.values = {m: dense(frame[m].to_numpy(dtype=np.float64)) for m in members}
        self.ranks = {m: _centred_rows(v) for m, v in self.values.items()}

    def score(self, weights: dict[str, float], rows: np.ndarray) -> np.ndarray:
        """The ranking ``rank_score`` gives these date rows (0 where no weighted member forecasts)."""
        total = np.zeros((len(rows), self.realized.shape[1]))
        mass = np.zeros_like(total)
        for m, w in weights.items():
            r = self.ranks[m][rows]
            present = np.isfinite(r)
            total += w * np.where(present, r, 0.0)
            mass += w * present
        return np.divide(total, mass, out=np.zeros_like(total), where=mass > 0)


def _centred_rows(values: np.ndarray) -> np.ndarray:
    """Per row: percentile rank among the finite values in [-0.5, 0.5] (NaN stays NaN, alone: 0), as ``centred_rank``."""
    ranks = pd.DataFrame(values).rank(axis=1, method="average").to_numpy()
    counts = np.isfinite(values).sum(axis=1, keepdims=True).astype(np.float64)
    out = np.divide(ranks - 1.0, counts - 1.0, out=np.zeros_like(ranks), where=counts > 1) - 0.5
    return np.where(np.isfinite(values), np.where(counts > 1, out, 0.0), np.nan)


def _ic_evidence(grid: _Grid, rows: np.ndarray, members: list[str], h: int) -> dict[str, dict[str, Any]]:
    """member -> mean per-date rank IC over the date ``rows``, its HLN-corrected Newey-West t and the dates."""
    out = {}
    for m in members:
        ics = dense_rank_ics(grid.values[m][rows], grid.realized[rows])
        summary = ic_summary(pd.Series(ics[np.isfinite(ics)]), h)
        t = hln(summary["t"], summary["n_dates"], h) if summary["t"] is not None else float("nan")
        out[m] = {"rank_ic": summary["mean"], "t": round(t, 3) if math.isfinite(t) else None, "n_dates": summary["n_dates"]}
    return out


def _rule_weights(rule: str, evidence: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``equal``: the members with a positive rank IC alike; ``ic_weighted``: every member's Stein-shrunk IC;
    ``best_member``: all weight on the largest of them."""
    if rule == "equal":
        return {m: 1.0 for m, v in evidence.items() if (v["rank_ic"] or 0.0) > 0}
    shrunk = {m: stein_weight(v["rank_ic"], v["t"]) for m, v in evidence.items()}
    if rule == "best_member" and any(w > 0 for w in shrunk.values()):
        return {max(shrunk, key=shrunk.get): 1.0}
    return shrunk


def _cross_fitted_ic(rule: str, grid: _Grid, members: list[str], h: int) -> float | None:
    """Mean per-date rank IC of ``rule``'s ranking, each half of the dates ranked with weights from the other half."""
    n = len(grid.dates)
    first, second = np.arange(n // 2), np.arange(n // 2, n)
    ics = []
    for fit, score in ((first, second), (second, first)):
        if not len(fit) or not len(score):
            continue
        weights = _rule_weights(rule, _ic_evidence(grid, fit, members, h))
        if sum(weights.values()) <= 0:
            continue
        values = dense_rank_ics(grid.score(weights, score), grid.realized[score])
        ics.append(values[np.isfinite(values)])
    values = np.concatenate(ics) if ics else np.empty(0)
    return float(values.mean()) if len(values) else None


def choose_ranking(
    frame: pd.DataFrame, members: list[str], h: int, min_independent: float, prior: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The ranking's weights of one horizon, chosen on rank IC (not on squared error), and why.

    Three rules compete on their cross-fitted rank IC (weights from one half of the validation dates rank the
    other half, both ways): ``equal``, the members with a positive validation rank IC alike (a plain average is
    hard to beat when the evidence cannot tell members apart); ``ic_weighted``, every member weighted by its
    validation rank IC shrunk by its HLN-corrected Newey-West t (``stein_weight``: max(0, IC) x max(0, 1 - 1/t^2));
    and ``best_member``, all weight on the member with the largest of those (mixing a strong signal with a
    correlated weaker one dilutes it). The winner's weights are refitted on the whole window, when it holds at least ``min_independent``
    independent targets. Without such evidence the factor members' training-window rank IC (``prior``,
    parameter-free signals over the long history) is shrunk the same way; without that either, the members are
    weighted equally. The rank score is the weighted mean of the members' centred cross-sectional ranks
    (``rank_score``).
    """
    grid = _Grid(frame, members)
    validation = _ic_evidence(grid, np.arange(len(grid.dates)), members, h)
    n_dates = len(grid.dates)
    n_eff = independent_targets(n_dates, h)
    # with one member every rule ranks alike: nothing to compete on
    judged = n_eff >= min_independent and len(members) > 1
    scores = {rule: _cross_fitted_ic(rule, grid, members, h) for rule in RANKING_RULES} if judged else {}
    valid = {k: v for k, v in scores.items() if v is not None}
    rule = max(valid, key=lambda k: valid[k]) if valid else RANKING_RULES[0]
    weights = _rule_weights(rule, validation) if n_eff >= min_independent else {}
    source = f"validation rank IC ({rule})"
    reason = f"{n_eff:.1f} independent validation targets ({n_dates} dates / h={h})"
    if sum(weights.values()) <= 0:
        why = "no member's validation rank IC is distinguishable from zero" if n_eff >= min_independent else f"too few to judge ranks (< {min_independent:g})"
        weights = {m: stein_weight((prior or {}).get(m, {}).get("mean"), (prior or {}).get(m, {}).get("t")) for m in members}
        source = "training-window factor rank IC"
        reason = f"{reason}: {why}"
        if sum(weights.values()) <= 0:
            weights = {m: 1.0 for m in members}
            source = "equal (no evidence)"
            reason += "; no factor's training-window rank IC is distinguishable from zero either"
    total = sum(weights.values())
    weights = {m: round(w / total, 4) for m, w in weights.items() if w > 0} if total > 0 else {}
    return {"weights": weights, "source": source, "reason": reason, "validation": validation,
            "cross_fitted_rank_ic": {k: (round(v, 4) if v is not None else None) for k, v in scores.items()}}


def rank_score(wide: pd.DataFrame, dates: np.ndarray, ranking: dict[str, Any] | None) -> np.ndarray:
    """Per row: the ranking's weighted mean of the members' centred ranks within the row's date (0 where none forecasts)."""
    weights = {m: w for m, w in ((ranking or {}).get("weights") or {}).items() if m in wide.columns}
    if not weights:
        return np.zeros(len(wide))
    members = list(weights)
    ranks = centred_rank(wide[members].astype(np.float64), dates).to_numpy(dtype=np.float64)
    w = np.array([weights[m] for m in members])
    present = np.isfinite(ranks)
    mass = present @ w
    total = np.where(present, ranks, 0.0) @ w
    return np.divide(total, mass, out=np.zeros(len(wide)), where=mass > 0)


def combine(frame: pd.DataFrame, choice: dict[str, Any]) -> np.ndarray:
    """The weighted forecast per row, times the choice's shrinkage towards the random walk (``shrink``, 1 in bundles
    saved before it existed); where members have no forecast (NaN) the weights of the others are renormalized.

    A row whose forecasting members all carry weight 0 gets their equal-weighted mean; a row no member
    forecasts is NaN. A shrinkage of 0 is the random walk: 0 on every row.
    """
    shrink = float(choice.get("shrink", 1.0))
    if shrink == 0.0:
        return np.zeros(len(frame))
    members = list(choice["weights"])
    preds = frame[members].to_numpy(dtype=np.float64)
    weights = np.array([choice["weights"][m] for m in members])
    present = np.isfinite(preds)
    if present.all():
        return shrink * _combine(preds, choice["weights"], members)
    filled = np.where(present, preds, 0.0)
    mass = present @ weights
    weighted = np.divide(filled @ weights, mass, out=np.full(len(preds), np.nan), where=mass > 0)
    count = present.sum(axis=1)
    equal = np.divide(filled.sum(axis=1), count, out=np.full(len(preds), np.nan), where=count > 0)
    return shrink * np.where(mass > 0, weighted, equal)


def rule(choice: dict[str, Any]) -> dict[str, Any]:
    """What the ensemble decided at one horizon, in brief: the point forecast's method and shrinkage, and the ranking."""
    ranking = choice.get("ranking") or {}
    evidence = choice.get("evidence") or {}
    return {
        "method": choice.get("method"),
        "shrink": choice.get("shrink", 1.0),
        "independent_targets": evidence.get("independent_targets"),
        "shrink_reason": evidence.get("reason", "chosen before the shrinkage rule existed (no shrinkage)"),
        "ranking_source": ranking.get("source", "pred_return (before the ranking choice existed)"),
        "ranking_weights": ranking.get("weights"),
        "ranking_reason": ranking.get("reason"),
    }


def interval_scale(vol: np.ndarray, h: int, fallback: float) -> np.ndarray:
    """Trailing daily volatility x sqrt(h); the training-window volatility where the trailing one is missing."""
    v = np.where(np.isfinite(vol) & (vol > 0), vol, fallback)
    return v * math.sqrt(h)


def calibrate(realized: np.ndarray, pred: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """Conformal score quantiles ``q10, q90, q2.5, q97.5`` (keys ``lower_80`` ...) from validation forecasts."""
    ok = np.isfinite(realized) & np.isfinite(pred) & np.isfinite(scale)
    scores = np.sort((realized[ok] - pred[ok]) / scale[ok])
    n = len(scores)
    if n < 20:
        raise ValueError(f"only {n} validation forecasts: too few to calibrate intervals (need 20)")
    out = {}
    for level, (lo, hi) in LEVELS.items():
        # Split-conformal finite-sample correction: widen each tail to the (n+1)-adjusted order statistic.
        k_lo = max(int(math.floor(lo * (n + 1))) - 1, 0)
        k_hi = min(int(math.ceil(hi * (n + 1))) - 1, n - 1)
        out[f"lower_{level}"], out[f"upper_{level}"] = float(scores[k_lo]), float(scores[k_hi])
    return out


def intervals(pred: np.ndarray, scale: np.ndarray, quantiles: dict[str, float]) -> dict[str, np.ndarray]:
    return {key: pred + scale * q for key, q in quantiles.items()}
