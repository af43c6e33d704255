"""Pure numpy drift statistics (no alibi-detect, no torch): Benjamini-Hochberg, PSI and tabular CUSUM."""

from __future__ import annotations

import numpy as np

PSI_SHARE_FLOOR = 1e-4


def finite(values: np.ndarray) -> np.ndarray:
    """The finite values of a 1-d array as float64."""
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def benjamini_hochberg(p_values: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Benjamini-Hochberg step-up: (rejected mask in input order, alpha * k_max / m or 0.0 if none rejected)."""
    p = np.asarray(p_values, dtype=float).ravel()
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool), 0.0
    order = np.argsort(p, kind="mergesort")
    critical = alpha * np.arange(1, m + 1) / m
    below = np.nonzero(p[order] <= critical)[0]
    if below.size == 0:
        return np.zeros(m, dtype=bool), 0.0
    k_max = int(below.max()) + 1
    rejected = np.zeros(m, dtype=bool)
    rejected[order[:k_max]] = True
    return rejected, float(alpha * k_max / m)


def quantile_cuts(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior PSI bin edges: the reference's inner quantiles (1/bins .. (bins-1)/bins), deduplicated."""
    ref = finite(reference)
    inner = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(inner)


def bin_shares(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Shares of values in the bins (-inf, c0), [c0, c1), ..., [c_last, +inf), floored at PSI_SHARE_FLOOR."""
    vals = finite(values)
    idx = np.searchsorted(np.asarray(cuts, dtype=float), vals, side="right")
    counts = np.bincount(idx, minlength=len(cuts) + 1).astype(float)
    return np.maximum(counts / max(vals.size, 1), PSI_SHARE_FLOOR)


def psi_value(reference: np.ndarray, recent: np.ndarray, cuts: np.ndarray) -> float:
    """Population Stability Index sum((q - p) * ln(q / p)) with p/q the reference/recent bin shares for `cuts`."""
    p = bin_shares(reference, cuts)
    q = bin_shares(recent, cuts)
    return float(np.sum((q - p) * np.log(q / p)))


def cusum_path(x: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided tabular CUSUM paths (S+, S-) of a standardized series with reference value k, starting at 0."""
    xs = np.asarray(x, dtype=float).ravel()
    s_plus = np.empty(xs.size)
    s_minus = np.empty(xs.size)
    hi = lo = 0.0
    for t, value in enumerate(xs):
        hi = max(0.0, hi + value - k)
        lo = max(0.0, lo - value - k)
        s_plus[t] = hi
        s_minus[t] = lo
    return s_plus, s_minus
