"""The only module that calls alibi-detect (BSL-1.1): swap this file to change the drift backend."""

from __future__ import annotations

from typing import Literal

import numpy as np


def univariate_scores(
    method: Literal["ks", "cvm"],
    reference_columns: list[np.ndarray],
    recent_columns: list[np.ndarray],
    alpha: float,
    correction: Literal["bonferroni", "fdr"],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-feature (p-values, statistics) from KSDrift/CVMDrift and the corrected batch threshold alibi uses."""
    from alibi_detect.cd import CVMDrift, KSDrift
    from alibi_detect.utils.statstest import fdr

    detector_cls = {"ks": KSDrift, "cvm": CVMDrift}[method]
    m = len(reference_columns)
    p_values = np.empty(m)
    statistics = np.empty(m)
    # One detector per feature: the windows may hold a different number of finite values per feature.
    for i, (ref, rec) in enumerate(zip(reference_columns, recent_columns)):
        detector = detector_cls(np.asarray(ref, dtype=float).reshape(-1, 1), p_val=alpha, correction=correction)
        p, stat = detector.score(np.asarray(rec, dtype=float).reshape(-1, 1))
        p_values[i], statistics[i] = float(p[0]), float(stat[0])
    if m == 0:
        return p_values, statistics, float(alpha)
    # Same corrections as alibi's BaseUnivariateDrift.predict(drift_type="batch").
    if correction == "bonferroni":
        threshold = alpha / m
    else:
        _, fdr_threshold = fdr(p_values, q_val=alpha)
        threshold = float(fdr_threshold) if np.ndim(fdr_threshold) == 0 else 0.0
    return p_values, statistics, float(threshold)


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
