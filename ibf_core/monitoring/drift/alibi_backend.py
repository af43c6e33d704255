"""The drift backend: the only module that calls alibi-detect (BSL-1.1); swap this file to change it.

Two kinds of functions:

* ``univariate_scores`` and ``mmd_permutation`` run alibi-detect's own detectors (``KSDrift``, ``CVMDrift``,
  ``MMDDrift(backend="pytorch")``) on one reference/recent pair. They are the reference implementation.
* ``ks_scores``, ``cvm_scores`` and ``mmd_permutation_batch`` compute the same tests for many pairs at once (every
  symbol of a session), which is what scoring uses: building one alibi detector per symbol, feature and session,
  and alibi's permutation loop (a Python loop over 200 permutations, each indexing the full kernel matrix), cost
  about 0.1 s per symbol-day, 50 s per session for 500 symbols.

  - KS: the statistic and ``kstwo.sf`` p-value of ``scipy.stats.ks_2samp(..., mode="asymp")`` as ``KSDrift``
    computes them, rounded to float32 as ``KSDrift`` stores them: equal to alibi's values.
  - CVM: ``scipy.stats.cramervonmises_2samp(method="auto")`` over equal-sized pairs at once (``axis=-1``), float32
    as ``CVMDrift``: equal to alibi's values.
  - MMD: ``MMDDrift``'s test (Gaussian RBF kernel, bandwidth by the median heuristic on the reference, unbiased
    MMD^2 with a zeroed diagonal, the same ``torch.randperm`` draws from the same seed), with every permutation's
    MMD^2 taken from indicator-vector products of the kernel matrix in float64, batched over symbols, instead of
    permuting and summing the float32 matrix 200 times per symbol. The statistic agrees with alibi's to float32
    rounding of its sums; a p-value can differ by one permutation (1/200) where a permuted MMD^2 ties the
    observed one within that rounding (``tests/core/monitoring/test_drift.py`` checks both against alibi).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import numpy as np

# Heavy imports (alibi_detect, scipy, torch) stay inside the functions that need them:
# importing this module loads none of them.


def univariate_scores(
    method: Literal["ks", "cvm"],
    reference_columns: list[np.ndarray],
    recent_columns: list[np.ndarray],
    alpha: float,
    correction: Literal["bonferroni", "fdr"],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-feature (p-values, statistics) from KSDrift/CVMDrift and the corrected batch threshold alibi uses."""
    from alibi_detect.cd import CVMDrift, KSDrift

    detector_cls = {"ks": KSDrift, "cvm": CVMDrift}[method]
    m = len(reference_columns)
    p_values = np.empty(m)
    statistics = np.empty(m)
    # One detector per feature: the windows may hold a different number of finite values per feature.
    for i, (ref, rec) in enumerate(zip(reference_columns, recent_columns)):
        detector = detector_cls(np.asarray(ref, dtype=float).reshape(-1, 1), p_val=alpha, correction=correction)
        p, stat = detector.score(np.asarray(rec, dtype=float).reshape(-1, 1))
        p_values[i], statistics[i] = float(p[0]), float(stat[0])
    return p_values, statistics, corrected_threshold(p_values, alpha, correction)


def corrected_threshold(p_values: np.ndarray, alpha: float, correction: Literal["bonferroni", "fdr"]) -> float:
    """The p-value threshold of a batch of feature tests, as alibi's BaseUnivariateDrift.predict(drift_type="batch")."""
    m = len(p_values)
    if m == 0:
        return float(alpha)
    if correction == "bonferroni":
        return float(alpha / m)
    from alibi_detect.utils.statstest import fdr

    _, fdr_threshold = fdr(np.asarray(p_values, dtype=float), q_val=alpha)
    return float(fdr_threshold) if np.ndim(fdr_threshold) == 0 else 0.0


def ks_scores(reference_columns: list[np.ndarray], recent_columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(p-values, statistics) of two-sided asymptotic KS tests of many (reference, recent) 1-d pairs, as KSDrift.

    The statistic is computed as ``scipy.stats.ks_2samp`` does; the p-values come from one vectorized
    ``kstwo.sf`` call (the call ks_2samp makes per pair).
    """
    from scipy.stats import kstwo

    k = len(reference_columns)
    d = np.empty(k)
    en = np.empty(k)
    for i, (ref, rec) in enumerate(zip(reference_columns, recent_columns)):
        data1, data2 = np.sort(ref), np.sort(rec)
        n1, n2 = data1.shape[0], data2.shape[0]
        data_all = np.concatenate([data1, data2])
        cddiffs = np.searchsorted(data1, data_all, side="right") / n1 - np.searchsorted(data2, data_all, side="right") / n2
        min_s = np.clip(-cddiffs[np.argmin(cddiffs)], 0, 1)
        max_s = cddiffs[np.argmax(cddiffs)]
        d[i] = min_s if min_s > max_s else max_s
        m, n = sorted([float(n1), float(n2)], reverse=True)
        en[i] = np.round(m * n / (m + n))
    if not k:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32)
    # The statistic takes few distinct values (multiples of 1/lcm(n1, n2)): evaluate kstwo.sf once per value.
    unique, inverse = np.unique(np.stack([d, en]), axis=1, return_inverse=True)
    p = np.clip(kstwo.sf(unique[0], unique[1]), 0, 1)[np.asarray(inverse).reshape(-1)]
    return np.asarray(p, dtype=np.float32), d.astype(np.float32)


def cvm_scores(reference_columns: list[np.ndarray], recent_columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(p-values, statistics) of two-sample Cramer-von Mises tests (method "auto") of many 1-d pairs, as CVMDrift;
    pairs of equal sizes in one ``cramervonmises_2samp(axis=-1)`` call."""
    from scipy.stats import cramervonmises_2samp

    k = len(reference_columns)
    p = np.empty(k, dtype=np.float32)
    stat = np.empty(k, dtype=np.float32)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (ref, rec) in enumerate(zip(reference_columns, recent_columns)):
        groups[(len(ref), len(rec))].append(i)
    for rows in groups.values():
        x = np.stack([np.asarray(reference_columns[i], dtype=float) for i in rows])
        y = np.stack([np.asarray(recent_columns[i], dtype=float) for i in rows])
        result = cramervonmises_2samp(x, y, method="auto", axis=-1)
        p[rows] = np.asarray(result.pvalue, dtype=np.float64).reshape(-1)
        stat[rows] = np.asarray(result.statistic, dtype=np.float64).reshape(-1)
    return p, stat


def mmd_permutation(
    reference: np.ndarray,
    recent: np.ndarray,
    alpha: float,
    n_permutations: int,
    seed: int,
) -> tuple[float, float]:
    """(p-value, MMD^2) from MMDDrift(backend="pytorch") with seeded torch permutations on CPU unless CUDA exists."""
    import torch
    from alibi_detect.cd import MMDDrift

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            detector = MMDDrift(
                np.ascontiguousarray(reference, dtype=np.float32),
                backend="pytorch",
                p_val=alpha,
                n_permutations=n_permutations,
                device=device,
            )
            p_value, mmd2, _ = detector.score(np.ascontiguousarray(recent, dtype=np.float32))
    finally:
        torch.set_num_threads(previous_threads)
    return float(p_value), float(mmd2)


MMD_CHUNK = 64  # symbols per batched kernel: 64 x 310 x 310 float64 is 49 MB


def mmd_permutation_batch(
    references: list[np.ndarray], recents: list[np.ndarray], n_permutations: int, seed: int
) -> list[tuple[float, float]]:
    """(p-value, MMD^2) of MMDDrift's permutation test for many (reference, recent) pairs of complete rows.

    Every pair draws the permutations alibi draws (``torch.manual_seed(seed)``, then ``torch.randperm(n + m)``
    ``n_permutations`` times), so pairs of equal sizes share them: one indicator matrix ``A`` (row i, column p:
    position i lands in the reference part under permutation p) gives every permuted MMD^2 from ``K @ A``.
    """
    import torch

    out: list[tuple[float, float]] = [(np.nan, np.nan)] * len(references)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (ref, rec) in enumerate(zip(references, recents)):
        groups[(len(ref), len(rec))].append(i)
    previous_threads = torch.get_num_threads()
    # One thread: these are memory-bound batched ops, and on a busy 2-core machine a second thread spends its time
    # waiting at barriers (measured 1.6x slower than one thread for 500 symbols, 7x for small batches).
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for (n, m), rows in groups.items():
                torch.manual_seed(seed)
                perms = torch.stack([torch.randperm(n + m) for _ in range(n_permutations)])  # (P, N)
                indicator = torch.zeros(n + m, n_permutations + 1, dtype=torch.float64)
                indicator[:n, 0] = 1.0  # column 0: the observed split
                indicator[perms[:, :n].T, torch.arange(1, n_permutations + 1)] = 1.0
                for lo in range(0, len(rows), MMD_CHUNK):
                    chunk = rows[lo : lo + MMD_CHUNK]
                    mmd2 = _mmd2_splits(
                        torch.from_numpy(np.stack([np.ascontiguousarray(references[i], dtype=np.float32) for i in chunk])),
                        torch.from_numpy(np.stack([np.ascontiguousarray(recents[i], dtype=np.float32) for i in chunk])),
                        indicator,
                    )
                    observed, permuted = mmd2[:, :1], mmd2[:, 1:]
                    # alibi: (mmd2 <= mmd2_permuted).float().mean(), a float32 share
                    counts = (observed <= permuted).sum(dim=1).numpy()
                    shares = counts.astype(np.float32) / np.float32(n_permutations)
                    for j, i in enumerate(chunk):
                        out[i] = (float(shares[j]), float(np.float32(observed[j, 0].item())))
    finally:
        torch.set_num_threads(previous_threads)
    return out


def _squared_distances(x, y):
    """alibi's squared_pairwise_distance, batched: |x|^2 + |y|^2 - 2 x.y, clamped at 1e-30."""
    import torch

    x2 = x.pow(2).sum(dim=-1, keepdim=True)
    y2 = y.pow(2).sum(dim=-1, keepdim=True)
    return torch.baddbmm(y2.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x2).clamp_min_(1e-30)


def _mmd2_splits(reference, recent, indicator):
    """MMD^2 of every split in ``indicator`` (columns; 1 = reference part) for a batch of pairs: (B, splits)."""
    import torch

    batch, n, m = reference.shape[0], reference.shape[1], recent.shape[1]
    z = torch.cat([reference, recent], dim=1)
    dist = _squared_distances(z, z)  # (B, N, N) float32, as alibi computes each block
    # Bandwidth: alibi's sigma_median on the reference against itself (the median of the off-diagonal distances).
    n_median = n + (n * n - n) // 2 - 1
    sigma = (0.5 * dist[:, :n, :n].reshape(batch, -1).kthvalue(n_median + 1, dim=1).values) ** 0.5  # (B,)
    gamma = 1.0 / (2.0 * sigma**2)
    kernel = dist.mul_(-gamma[:, None, None]).exp_().to(torch.float64)
    kernel.diagonal(dim1=1, dim2=2).zero_()
    ka = torch.matmul(kernel, indicator)  # (B, N, S): K a for every split a
    s_xx = torch.einsum("bns,ns->bs", ka, indicator)  # a' K a
    columns = kernel.sum(dim=1)  # 1' K, (B, N)
    s_xa = columns @ indicator  # 1' K a
    total = columns.sum(dim=1, keepdim=True)  # 1' K 1
    s_xy = s_xa - s_xx  # b' K a, b = 1 - a (the recent part)
    s_yy = total - 2.0 * s_xa + s_xx  # b' K b
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)
