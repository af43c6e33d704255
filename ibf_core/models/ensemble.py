"""Ensemble weights chosen on validation, and conformal intervals calibrated on validation.

Weights per horizon: *equal*, *inverse validation MSE* and *stacking* (non-negative least squares of the
realized return on the members' forecasts, normalized to sum to 1). Every choice is a convex combination of
the members, so the ensemble keeps a cross-sectional ordering to rank by; whether it beats the random walk
is what the validation table and ``ibf evaluate`` report. Inverse-error and stacking weights are fitted on the first half of the validation dates and
all three are compared on the second half; the winner is refitted on the whole validation window.

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


def choose_weights(validation: pd.DataFrame, members: list[str]) -> dict[str, Any]:
    """``validation``: one horizon's rows with ``date``, ``realized`` and one column per member."""
    frame = validation.dropna(subset=["realized", *members])
    dates = np.sort(frame["date"].unique())
    half = dates[len(dates) // 2] if len(dates) > 1 else dates[-1]
    first, second = frame[frame["date"] < half], frame[frame["date"] >= half]
    scores: dict[str, float | None] = {}
    for method in METHODS:
        w = _weights(method, first[members].to_numpy(), first["realized"].to_numpy(), members)
        error = _combine(second[members].to_numpy(), w, members) - second["realized"].to_numpy()
        scores[method] = float(np.mean(error**2)) if len(error) else None
    valid = {k: v for k, v in scores.items() if v is not None}
    chosen = min(valid, key=lambda k: valid[k]) if valid else "equal"
    weights = _weights(chosen, frame[members].to_numpy(), frame["realized"].to_numpy(), members)
    return {"method": chosen, "weights": weights, "second_half_mse": scores, "rows": len(frame)}


def combine(frame: pd.DataFrame, choice: dict[str, Any]) -> np.ndarray:
    """The weighted forecast per row; where members have no forecast (NaN) the weights of the others are renormalized.

    A row whose forecasting members all carry weight 0 gets their equal-weighted mean; a row no member
    forecasts is NaN.
    """
    members = list(choice["weights"])
    preds = frame[members].to_numpy(dtype=np.float64)
    weights = np.array([choice["weights"][m] for m in members])
    present = np.isfinite(preds)
    if present.all():
        return _combine(preds, choice["weights"], members)
    filled = np.where(present, preds, 0.0)
    mass = present @ weights
    weighted = np.divide(filled @ weights, mass, out=np.full(len(preds), np.nan), where=mass > 0)
    count = present.sum(axis=1)
    equal = np.divide(filled.sum(axis=1), count, out=np.full(len(preds), np.nan), where=count > 0)
    return np.where(mass > 0, weighted, equal)


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
