"""Data-drift (KS/CVM/MMD/PSI) and residual-drift (CUSUM) detectors; alibi-detect is only imported lazily."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ibf_core.monitoring.drift import alibi_backend
from ibf_core.monitoring.drift.stats import benjamini_hochberg, cusum_path, finite, psi_value

__all__ = ["DriftRow", "benjamini_hochberg", "cusum", "mmd_test", "mmd_tests", "psi", "psi_many", "univariate_tests", "univariate_tests_many"]


@dataclass(frozen=True)
class DriftRow:
    """One detector outcome; a set skipped_reason means statistic/p_value are None and breached is False."""

    detector: str
    feature: str | None
    statistic: float | None
    p_value: float | None
    threshold: float | None
    breached: bool
    skipped_reason: str | None = None


def _as_2d(values: np.ndarray, name: str) -> np.ndarray:
    """A float64 (n, k) array; a 1-d input becomes a single column."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (rows, features) array, got shape {arr.shape}")
    return arr


def _check_features(reference: np.ndarray, recent: np.ndarray, features: list[str]) -> None:
    """Raise when the two windows and the feature names disagree on the number of columns."""
    if reference.shape[1] != len(features) or recent.shape[1] != len(features):
        raise ValueError(
            f"{len(features)} feature names for reference {reference.shape} and recent {recent.shape} arrays"
        )


def _too_few(n_ref: int, n_recent: int, min_points: int, unit: str = "points") -> str | None:
    """The skip reason when either window is shorter than min_points, else None."""
    if n_ref < min_points:
        return f"reference window has {n_ref} {unit} (< {min_points})"
    if n_recent < min_points:
        return f"recent window has {n_recent} {unit} (< {min_points})"
    return None


def _skipped(detector: str, feature: str | None, threshold: float | None, reason: str) -> DriftRow:
    """A skipped row."""
    return DriftRow(detector, feature, None, None, threshold, False, reason)


def univariate_tests(
    reference: np.ndarray,
    recent: np.ndarray,
    features: list[str],
    method: Literal["ks", "cvm"],
    alpha: float = 0.05,
    correction: Literal["bonferroni", "fdr"] = "bonferroni",
    min_points: int = 20,
) -> list[DriftRow]:
    """Per-feature KS or CVM two-sample tests (alibi-detect's) with a Bonferroni/FDR threshold over tested features."""
    return univariate_tests_many([reference], [recent], features, method, alpha, correction, min_points)[0]


def univariate_tests_many(
    references: list[np.ndarray],
    recents: list[np.ndarray],
    features: list[str],
    method: Literal["ks", "cvm"],
    alpha: float = 0.05,
    correction: Literal["bonferroni", "fdr"] = "bonferroni",
    min_points: int = 20,
) -> list[list[DriftRow]]:
    """``univariate_tests`` of many (reference, recent) pairs (e.g. every symbol of a session) in one batch."""
    if method not in ("ks", "cvm"):
        raise ValueError(f"method must be 'ks' or 'cvm', got {method!r}")
    if correction not in ("bonferroni", "fdr"):
        raise ValueError(f"correction must be 'bonferroni' or 'fdr', got {correction!r}")
    plans: list[tuple[dict[int, str], list[int]]] = []
    ref_cols: list[np.ndarray] = []
    rec_cols: list[np.ndarray] = []
    for reference, recent in zip(references, recents):
        ref2, rec2 = _as_2d(reference, "reference"), _as_2d(recent, "recent")
        _check_features(ref2, rec2, features)
        reasons: dict[int, str] = {}
        tested: list[int] = []
        for j in range(len(features)):
            r, c = finite(ref2[:, j]), finite(rec2[:, j])
            reason = _too_few(r.size, c.size, min_points)
            if reason is None and np.ptp(r) == 0 and np.ptp(c) == 0 and r[0] == c[0]:
                reason = "constant in both windows"
            if reason is not None:
                reasons[j] = reason
                continue
            tested.append(j)
            ref_cols.append(r)
            rec_cols.append(c)
        plans.append((reasons, tested))

    p_all = stat_all = np.empty(0, dtype=np.float32)
    if ref_cols:
        scores = alibi_backend.ks_scores if method == "ks" else alibi_backend.cvm_scores
        p_all, stat_all = scores(ref_cols, rec_cols)
    out: list[list[DriftRow]] = []
    at = 0
    for reasons, tested in plans:
        p_values = np.asarray([float(p) for p in p_all[at : at + len(tested)]], dtype=float)
        statistics = [float(s) for s in stat_all[at : at + len(tested)]]
        at += len(tested)
        threshold: float | None = None
        results: dict[int, tuple[float, float]] = {}
        if tested:
            threshold = alibi_backend.corrected_threshold(p_values, alpha, correction)
            results = {j: (statistics[i], float(p_values[i])) for i, j in enumerate(tested)}
        rows: list[DriftRow] = []
        for j, name in enumerate(features):
            if j in reasons:
                rows.append(_skipped(method, name, threshold, reasons[j]))
                continue
            stat, p = results[j]
            rows.append(DriftRow(method, name, stat, p, threshold, bool(p < threshold)))  # type: ignore[operator]
        out.append(rows)
    return out


def mmd_test(
    reference: np.ndarray,
    recent: np.ndarray,
    alpha: float = 0.01,
    n_permutations: int = 200,
    seed: int = 0,
    min_points: int = 20,
    max_reference: int = 1000,
) -> DriftRow:
    """Multivariate MMD permutation test (alibi-detect's MMDDrift test, pytorch) on reference-standardized complete rows."""
    return mmd_tests([reference], [recent], alpha, n_permutations, seed, min_points, max_reference)[0]


def mmd_tests(
    references: list[np.ndarray],
    recents: list[np.ndarray],
    alpha: float = 0.01,
    n_permutations: int = 200,
    seed: int = 0,
    min_points: int = 20,
    max_reference: int = 1000,
) -> list[DriftRow]:
    """``mmd_test`` of many (reference, recent) pairs with the same seed, batched (``alibi_backend.mmd_permutation_batch``)."""
    out: list[DriftRow | None] = []
    todo: list[int] = []
    refs_z: list[np.ndarray] = []
    recs_z: list[np.ndarray] = []
    for reference, recent in zip(references, recents):
        ref2, rec2 = _as_2d(reference, "reference"), _as_2d(recent, "recent")
        if ref2.shape[1] != rec2.shape[1]:
            raise ValueError(f"reference has {ref2.shape[1]} columns, recent has {rec2.shape[1]}")
        ref2 = ref2[np.isfinite(ref2).all(axis=1)]
        rec2 = rec2[np.isfinite(rec2).all(axis=1)]
        reason = _too_few(len(ref2), len(rec2), min_points, unit="complete rows")
        if reason is not None:
            out.append(_skipped("mmd", None, alpha, reason))
            continue
        mean = ref2.mean(axis=0)
        std = ref2.std(axis=0)
        std[~(std > 0)] = 1.0
        ref_z = (ref2 - mean) / std
        rec_z = (rec2 - mean) / std
        if len(ref_z) > max_reference:
            keep = np.sort(np.random.default_rng(seed).choice(len(ref_z), size=max_reference, replace=False))
            ref_z = ref_z[keep]
        todo.append(len(out))
        out.append(None)
        refs_z.append(ref_z)
        recs_z.append(rec_z)
    if todo:
        for i, (p_value, mmd2) in zip(todo, alibi_backend.mmd_permutation_batch(refs_z, recs_z, n_permutations, seed)):
            out[i] = DriftRow("mmd", None, mmd2, p_value, alpha, bool(p_value < alpha))
    return out  # type: ignore[return-value]


def psi(
    reference: np.ndarray,
    recent: np.ndarray,
    features: list[str],
    bins: int = 10,
    threshold: float = 0.25,
    min_points: int = 20,
) -> list[DriftRow]:
    """Population Stability Index per feature on reference-quantile bins; breached when PSI > threshold."""
    return psi_many([reference], [recent], features, bins, threshold, min_points)[0]


def psi_many(
    references: list[np.ndarray],
    recents: list[np.ndarray],
    features: list[str],
    bins: int = 10,
    threshold: float = 0.25,
    min_points: int = 20,
) -> list[list[DriftRow]]:
    """``psi`` of many (reference, recent) pairs: the reference quantiles of equally long columns in one
    ``np.quantile(axis=1)`` call (the same values as one call per column)."""
    cells: dict[tuple[int, int], DriftRow] = {}
    todo: dict[int, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}  # finite reference length -> cells
    for i, (reference, recent) in enumerate(zip(references, recents)):
        ref2, rec2 = _as_2d(reference, "reference"), _as_2d(recent, "recent")
        _check_features(ref2, rec2, features)
        for j, name in enumerate(features):
            r, c = finite(ref2[:, j]), finite(rec2[:, j])
            reason = _too_few(r.size, c.size, min_points)
            if reason is None and np.ptp(r) == 0:
                reason = "constant in the reference window"
            if reason is not None:
                cells[(i, j)] = _skipped("psi", name, threshold, reason)
            else:
                todo.setdefault(r.size, []).append((i, j, r, c))
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    for group in todo.values():
        inner = np.quantile(np.stack([r for _, _, r, _ in group]), levels, axis=1)  # (levels, cells)
        for k, (i, j, r, c) in enumerate(group):
            value = psi_value(r, c, np.unique(inner[:, k]))
            cells[(i, j)] = DriftRow("psi", features[j], value, None, threshold, bool(value > threshold))
    return [[cells[(i, j)] for j in range(len(features))] for i in range(len(references))]


def cusum(residuals: np.ndarray, k: float = 0.5, h: float = 5.0, min_points: int = 10) -> DriftRow:
    """Two-sided tabular CUSUM on standardized residuals; statistic = max(S+, S-) over time, breached when > h."""
    x = finite(residuals)
    if x.size < min_points:
        return _skipped("cusum", None, h, f"residual series has {x.size} points (< {min_points})")
    s_plus, s_minus = cusum_path(x, k)
    statistic = float(max(s_plus.max(), s_minus.max()))
    return DriftRow("cusum", None, statistic, None, h, bool(statistic > h))
