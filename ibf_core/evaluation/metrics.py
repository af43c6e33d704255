"""Forecast-evaluation metrics of the ibf protocol (docs/evaluation-protocol.md), pure numpy/pandas/scipy."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd

# Heavy imports (scipy) stay inside the functions that need them: importing this module loads none of them.

# scipy.stats (~1.2 s to import) is imported by the two tests that need it: monitoring and the catalog read this
# module's rank IC on every import of ibf_core.
INTERVAL_LEVELS = (80, 95)
WILSON_Z = NormalDist().inv_cdf(0.975)


def _clean(value: object) -> float | None:
    """A python float, or None for None / NaN / infinity (JSON-ready)."""
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sorted_dates(dates: pd.Series) -> pd.Index:
    """Sorted unique non-null dates."""
    return pd.Index(dates.dropna().unique()).sort_values()


def newey_west_variance(x: np.ndarray, lags: int) -> float:
    """Long-run (Newey-West, Bartlett-weighted) variance of the demeaned finite values of ``x``; lags <= 0 is var/T."""
    values = np.asarray(x, dtype=float)
    values = values[np.isfinite(values)]
    size = len(values)
    if size == 0:
        return float("nan")
    dev = values - values.mean()
    variance = float(np.dot(dev, dev)) / size
    for j in range(1, min(max(int(lags), 0), size - 1) + 1):
        gamma = float(np.dot(dev[j:], dev[:-j])) / size
        variance += 2.0 * (1.0 - j / (lags + 1.0)) * gamma
    return variance


def diebold_mariano(loss_model: np.ndarray, loss_base: np.ndarray, h: int) -> tuple[float, float]:
    """HLN-corrected DM statistic of loss_model - loss_base and its one-sided p-value (alternative: model loss smaller).

    d = loss_model - loss_base over pairs where both are finite, T = len(d);
    DM = mean(d) / sqrt(newey_west_variance(d, h - 1) / T), DM* = DM * sqrt((T + 1 - 2h + h(h - 1)/T) / T) and
    p = t.cdf(DM*, T - 1), so a small p means the model's loss is significantly smaller. Returns (nan, nan) when
    T < 3, when the long-run variance is zero or not finite (identical losses included) or when the HLN factor is
    not positive (T too small for h).
    """
    model = np.asarray(loss_model, dtype=float)
    base = np.asarray(loss_base, dtype=float)
    keep = np.isfinite(model) & np.isfinite(base)
    d = model[keep] - base[keep]
    size = len(d)
    if size < 3:
        return float("nan"), float("nan")
    variance = newey_west_variance(d, h - 1)
    if not math.isfinite(variance) or variance <= 0:
        return float("nan"), float("nan")
    dm = float(d.mean()) / math.sqrt(variance / size)
    factor = (size + 1 - 2 * h + h * (h - 1) / size) / size
    if factor <= 0:
        return float("nan"), float("nan")
    dm_star = dm * math.sqrt(factor)
    from scipy import stats

    return dm_star, float(stats.t.cdf(dm_star, size - 1))


def directional_accuracy(pred: np.ndarray, real: np.ndarray, p0: float = 0.5) -> dict:
    """Sign hit rate over finite non-zero pairs, one-sided binomial p-value vs max(0.5, p0), Wilson 95% interval."""
    forecast = np.asarray(pred, dtype=float)
    actual = np.asarray(real, dtype=float)
    keep = np.isfinite(forecast) & np.isfinite(actual) & (forecast != 0) & (actual != 0)
    size = int(keep.sum())
    if size == 0:
        return {"da": None, "da_n": 0, "da_pvalue": None, "da_ci_low": None, "da_ci_high": None}
    hits = int((np.sign(forecast[keep]) == np.sign(actual[keep])).sum())
    share = hits / size
    from scipy import stats

    pvalue = stats.binomtest(hits, size, p=max(0.5, p0), alternative="greater").pvalue
    z2 = WILSON_Z**2
    centre = (share + z2 / (2 * size)) / (1 + z2 / size)
    half = WILSON_Z / (1 + z2 / size) * math.sqrt(share * (1 - share) / size + z2 / (4 * size**2))
    return {
        "da": float(share),
        "da_n": size,
        "da_pvalue": float(pvalue),
        "da_ci_low": float(max(0.0, centre - half)),
        "da_ci_high": float(min(1.0, centre + half)),
    }


MIN_IC_PAIRS = 3  # finite (forecast, outcome) pairs a date needs before its cross-sectional correlation counts


def _varies(values: np.ndarray, codes: np.ndarray, groups: int) -> np.ndarray:
    """Per group: not all values equal (exactly: a mean's rounding must not make a constant side look spread)."""
    low, high = np.full(groups, np.inf), np.full(groups, -np.inf)
    np.minimum.at(low, codes, values)
    np.maximum.at(high, codes, values)
    return high > low


def _grouped_correlation(x: np.ndarray, y: np.ndarray, codes: np.ndarray, groups: int, ranks: bool) -> np.ndarray:
    """Per group code ``0..groups-1``: the correlation of ``x`` and ``y`` (NaN under ``MIN_IC_PAIRS`` or a constant side).

    ``ranks``: x and y are average ranks, so a constant side is exactly equal ranks, centred exactly to zero; raw
    values need the min/max test, as a mean's rounding can leave a constant side a tiny spread."""
    n = np.bincount(codes, minlength=groups).astype(np.float64)
    safe = np.maximum(n, 1.0)
    xd = x - (np.bincount(codes, x, minlength=groups) / safe)[codes]
    yd = y - (np.bincount(codes, y, minlength=groups) / safe)[codes]
    xy = np.bincount(codes, xd * yd, minlength=groups)
    xx = np.bincount(codes, xd * xd, minlength=groups)
    yy = np.bincount(codes, yd * yd, minlength=groups)
    valid = (n >= MIN_IC_PAIRS) & (xx > 0) & (yy > 0)
    if not ranks:
        valid &= _varies(x, codes, groups) & _varies(y, codes, groups)
    out = np.full(groups, np.nan)
    out[valid] = np.clip(xy[valid] / np.sqrt(xx[valid] * yy[valid]), -1.0, 1.0)
    return out


def rank_ics(pred: np.ndarray, real: np.ndarray, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one rank IC: per date, the Spearman correlation of forecasts and outcomes across symbols.

    Long format (one row per symbol and date). Per date the finite pairs are ranked (average ties); a date with
    fewer than ``MIN_IC_PAIRS`` pairs or a constant side gets NaN. Returns (sorted unique dates, their ICs).
    """
    pred, real, dates = np.asarray(pred, dtype=np.float64), np.asarray(real, dtype=np.float64), np.asarray(dates)
    keep = np.isfinite(pred) & np.isfinite(real)
    uniques, codes = np.unique(dates[keep], return_inverse=True)
    if not len(codes):
        return uniques, np.empty(0)
    x = pd.Series(pred[keep]).groupby(codes).rank(method="average").to_numpy()
    y = pd.Series(real[keep]).groupby(codes).rank(method="average").to_numpy()
    return uniques, _grouped_correlation(x, y, codes, len(uniques), ranks=True)


def mean_rank_ic(pred: np.ndarray, real: np.ndarray, dates: np.ndarray | None = None) -> float:
    """Mean of ``rank_ics`` over the dates that count (NaN when none does); no ``dates``: dense matrices, a row a date."""
    ics = dense_rank_ics(pred, real) if dates is None else rank_ics(pred, real, dates)[1]
    ics = ics[np.isfinite(ics)]
    return float(ics.mean()) if len(ics) else float("nan")


def dense_rank_ics(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    """``rank_ics`` of dense ``dates x symbols`` matrices (NaN: no forecast or no realized return), one value per row.

    The same ranks and correlation as the long form; the rows are ranked in place (what permutation importance and the
    ensemble's choice compute many times over: a row-wise rank is ~3x faster than a grouped one)."""
    pred, real = np.asarray(pred, dtype=np.float64), np.asarray(real, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(real)
    x = pd.DataFrame(np.where(ok, pred, np.nan)).rank(axis=1, method="average").to_numpy()[ok]
    y = pd.DataFrame(np.where(ok, real, np.nan)).rank(axis=1, method="average").to_numpy()[ok]
    rows = np.broadcast_to(np.arange(pred.shape[0])[:, None], pred.shape)[ok]
    return _grouped_correlation(x, y, rows, pred.shape[0], ranks=True)


def cross_sectional_ic(
    frame: pd.DataFrame, pred: str, real: str, method: Literal["pearson", "spearman"]
) -> pd.Series:
    """Per-date correlation of ``pred`` and ``real`` across symbols (``rank_ics`` for spearman; the same rule on the
    raw values for pearson), indexed by date; dates that do not count are dropped."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', not {method!r}")
    x = pd.to_numeric(frame[pred], errors="coerce").to_numpy(dtype=np.float64)
    y = pd.to_numeric(frame[real], errors="coerce").to_numpy(dtype=np.float64)
    dates = frame["date"].to_numpy()
    if method == "spearman":
        uniques, ics = rank_ics(x, y, dates)
    else:
        keep = np.isfinite(x) & np.isfinite(y)
        uniques, codes = np.unique(dates[keep], return_inverse=True)
        ics = _grouped_correlation(x[keep], y[keep], codes, len(uniques), ranks=False) if len(codes) else np.empty(0)
    ic = pd.Series(ics, index=pd.Index(uniques, name="date"), name=f"{method}_ic", dtype=float)
    return ic[np.isfinite(ic.to_numpy())]


def ic_summary(ic: pd.Series, h: int) -> dict:
    """Mean, sample std, ICIR (mean/std), Newey-West t-stat (h-1 lags), share of dates with IC > 0 and date count."""
    values = np.asarray(pd.to_numeric(pd.Series(ic), errors="coerce"), dtype=float)
    values = values[np.isfinite(values)]
    size = len(values)
    out: dict = {"mean": None, "std": None, "icir": None, "t": None, "positive_share": None, "n_dates": size}
    if size == 0:
        return out
    mean = float(values.mean())
    out["mean"] = mean
    out["positive_share"] = float((values > 0).mean())
    if size < 2:
        return out
    std = float(values.std(ddof=1))
    out["std"] = _clean(std)
    out["icir"] = _clean(mean / std) if std > 0 else None
    variance = newey_west_variance(values, h - 1)
    if math.isfinite(variance) and variance > 0:
        out["t"] = _clean(mean / math.sqrt(variance / size))
    return out


def _interval_arrays(real, lower, upper) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    actual = np.asarray(real, dtype=float)
    low = np.asarray(lower, dtype=float)
    high = np.asarray(upper, dtype=float)
    keep = np.isfinite(actual) & np.isfinite(low) & np.isfinite(high)
    return actual[keep], low[keep], high[keep]


def interval_coverage(real: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float | None:
    """Share of finite rows with lower <= real <= upper; None when no row is finite."""
    actual, low, high = _interval_arrays(real, lower, upper)
    if len(actual) == 0:
        return None
    return float(((low <= actual) & (actual <= high)).mean())


def winkler_score(real: np.ndarray, lower: np.ndarray, upper: np.ndarray, alpha: float) -> float | None:
    """Mean Winkler score: width + (2/alpha)(lower - real) below the interval, + (2/alpha)(real - upper) above it."""
    actual, low, high = _interval_arrays(real, lower, upper)
    if len(actual) == 0:
        return None
    penalty = (2.0 / alpha) * (np.clip(low - actual, 0, None) + np.clip(actual - high, 0, None))
    score = (high - low) + penalty
    return float(score.mean())


def topk_spread(frame: pd.DataFrame, pred: str, real: str, h: int, k: int, cost_bps: float) -> dict:
    """Long top-k / short bottom-k spread on non-overlapping rebalance dates, gross and net of costs, with turnover.

    Rebalance dates are the sorted unique ``date`` values taken every h-th, starting with the first; a date
    qualifies when it has at least 2k symbols with finite ``pred`` and ``real`` and ``pred`` is not the same for
    all of them (a constant cross-section carries no ranking). Symbols are ranked by ``pred``
    descending, ties by symbol name ascending; the first k are held long and the last k short. Per period:
    gross = mean(real of long) - mean(real of short) (an h-day return of one unit long and one unit short);
    turnover = share of the 2k (symbol, side) positions not held at the previous qualifying rebalance
    (1.0 at the first one); cost = turnover * 2 legs * 2 sides (exit the old name, enter the new) * cost_bps / 1e4,
    so the first rebalance is charged one full round trip; net = gross - cost. Returned values are means over
    qualifying periods (None when none qualifies) and ``topk_periods`` is their count.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    data = frame[["symbol", "date", pred, real]].copy()
    data.columns = ["symbol", "date", "pred", "real"]
    data["pred"] = pd.to_numeric(data["pred"], errors="coerce")
    data["real"] = pd.to_numeric(data["real"], errors="coerce")
    data = data[np.isfinite(data["pred"]) & np.isfinite(data["real"])]
    rebalance = _sorted_dates(frame["date"])[:: max(int(h), 1)]
    data = data[data["date"].isin(rebalance)]
    gross_list: list[float] = []
    net_list: list[float] = []
    turnover_list: list[float] = []
    previous: tuple[set, set] | None = None
    for _, group in data.groupby("date", sort=True):
        if len(group) < 2 * k or group["pred"].nunique() < 2:
            continue
        ranked = group.assign(symbol=group["symbol"].astype(str)).sort_values(
            ["pred", "symbol"], ascending=[False, True], kind="mergesort"
        )
        longs, shorts = ranked.head(k), ranked.tail(k)
        gross = float(longs["real"].mean() - shorts["real"].mean())
        long_set, short_set = set(longs["symbol"]), set(shorts["symbol"])
        if previous is None:
            turnover = 1.0
        else:
            kept = len(long_set & previous[0]) + len(short_set & previous[1])
            turnover = 1.0 - kept / (2 * k)
        cost = turnover * 2 * 2 * cost_bps / 1e4
        gross_list.append(gross)
        turnover_list.append(turnover)
        net_list.append(gross - cost)
        previous = (long_set, short_set)
    if not gross_list:
        return {"topk_spread_gross": None, "topk_spread_net": None, "topk_turnover": None, "topk_periods": 0}
    return {
        "topk_spread_gross": float(np.mean(gross_list)),
        "topk_spread_net": float(np.mean(net_list)),
        "topk_turnover": float(np.mean(turnover_list)),
        "topk_periods": len(gross_list),
    }


MEMBER_KEYS = (
    "n", "mae", "rmse", "rel_mae_vs_naive", "oos_r2", "oos_r2_vs_drift",
    "da", "da_n", "da_pvalue", "da_ci_low", "da_ci_high",
    "dm_stat", "dm_pvalue", "dm_stat_sq", "dm_pvalue_sq",
    "ic_mean", "ic_std", "icir", "ic_t",
    "rank_ic_mean", "rank_ic_std", "rank_ic_t", "rank_ic_positive_share", "n_dates",
    "coverage_80", "coverage_95", "winkler_80", "winkler_95",
    "topk_spread_gross", "topk_spread_net", "topk_turnover", "topk_periods", "topk_k",
)  # fmt: skip


def member_metrics(
    frame: pd.DataFrame, h: int, p0: float = 0.5, k: int | None = None, cost_bps: float = 10.0, rank_by: str | None = None
) -> dict:
    """JSON-ready metrics of one member at one horizon versus the random walk (zero-return forecast).

    ``frame`` has ``symbol, date, pred, realized`` and optionally ``lower_80, upper_80, lower_95, upper_95`` and
    ``drift_pred``; rows with a NaN pred or realized are dropped. An all-zero forecast (the naive member) gets
    None for DA, DM, IC and top-k, which are undefined for it. ``rank_by``: a column that orders the cross-section
    instead of ``pred`` (the ensemble's ``rank_score``): IC, rank IC and top-k are measured on it.
    """
    out: dict = dict.fromkeys(MEMBER_KEYS)
    data = frame.copy()
    data["pred"] = pd.to_numeric(data["pred"], errors="coerce")
    data["realized"] = pd.to_numeric(data["realized"], errors="coerce")
    data = data[np.isfinite(data["pred"]) & np.isfinite(data["realized"])].reset_index(drop=True)
    out["n"] = len(data)
    out["n_dates"] = int(data["date"].nunique())
    out["da_n"] = 0
    out["topk_periods"] = 0
    if data.empty:
        return out
    pred = data["pred"].to_numpy(float)
    realized = data["realized"].to_numpy(float)
    error = pred - realized
    abs_real = float(np.mean(np.abs(realized)))
    sum_sq_real = float(np.sum(realized**2))
    sse = float(np.sum(error**2))
    out["mae"] = _clean(np.mean(np.abs(error)))
    out["rmse"] = _clean(math.sqrt(sse / len(error)))
    out["rel_mae_vs_naive"] = _clean(out["mae"] / abs_real) if abs_real > 0 else None
    out["oos_r2"] = _clean(1.0 - sse / sum_sq_real) if sum_sq_real > 0 else None
    if "drift_pred" in data.columns:
        drift = pd.to_numeric(data["drift_pred"], errors="coerce").to_numpy(float)
        keep = np.isfinite(drift)
        sse_drift = float(np.sum((drift[keep] - realized[keep]) ** 2))
        if keep.any() and sse_drift > 0:
            out["oos_r2_vs_drift"] = _clean(1.0 - float(np.sum(error[keep] ** 2)) / sse_drift)
    for level in INTERVAL_LEVELS:
        lower, upper = f"lower_{level}", f"upper_{level}"
        if lower in data.columns and upper in data.columns:
            low = pd.to_numeric(data[lower], errors="coerce").to_numpy(float)
            high = pd.to_numeric(data[upper], errors="coerce").to_numpy(float)
            out[f"coverage_{level}"] = _clean(interval_coverage(realized, low, high))
            out[f"winkler_{level}"] = _clean(winkler_score(realized, low, high, 1.0 - level / 100.0))
    ranked = rank_by if rank_by and rank_by in data.columns and data[rank_by].notna().any() else None
    if np.all(pred == 0) and ranked is None:
        return out
    if not np.all(pred == 0):
        _point_tests(out, data, pred, realized, error, h, p0)
    order = ranked or "pred"
    ic = ic_summary(cross_sectional_ic(data, order, "realized", "pearson"), h)
    rank_ic = ic_summary(cross_sectional_ic(data, order, "realized", "spearman"), h)
    out.update(ic_mean=ic["mean"], ic_std=ic["std"], icir=ic["icir"], ic_t=ic["t"])
    out.update(
        rank_ic_mean=rank_ic["mean"],
        rank_ic_std=rank_ic["std"],
        rank_ic_t=rank_ic["t"],
        rank_ic_positive_share=rank_ic["positive_share"],
    )

    n_symbols = int(data["symbol"].nunique())
    top_k = int(k) if k is not None else max(1, int(round(0.2 * n_symbols)))
    out["topk_k"] = top_k
    spread = topk_spread(data, order, "realized", h, top_k, cost_bps)
    out.update({key: (value if key == "topk_periods" else _clean(value)) for key, value in spread.items()})
    return {key: (_clean(value) if isinstance(value, float) else value) for key, value in out.items()}


def _point_tests(out: dict, data: pd.DataFrame, pred: np.ndarray, realized: np.ndarray, error: np.ndarray, h: int, p0: float) -> None:
    """Diebold-Mariano against the random walk (absolute and squared loss) and directional accuracy, into ``out``."""
    losses = pd.DataFrame(
        {
            "date": data["date"],
            "abs_model": np.abs(error),
            "abs_base": np.abs(realized),
            "sq_model": error**2,
            "sq_base": realized**2,
        }
    ).groupby("date", sort=True).mean()
    dm, dm_p = diebold_mariano(losses["abs_model"].to_numpy(), losses["abs_base"].to_numpy(), h)
    dm_sq, dm_p_sq = diebold_mariano(losses["sq_model"].to_numpy(), losses["sq_base"].to_numpy(), h)
    out.update(dm_stat=_clean(dm), dm_pvalue=_clean(dm_p), dm_stat_sq=_clean(dm_sq), dm_pvalue_sq=_clean(dm_p_sq))

    origins = _sorted_dates(data["date"])[:: max(int(h), 1)]
    at_origins = data[data["date"].isin(origins)]
    da = directional_accuracy(at_origins["pred"].to_numpy(float), at_origins["realized"].to_numpy(float), p0)
    out.update({key: (value if key == "da_n" else _clean(value)) for key, value in da.items()})


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def skill_verdict(
    results_for_horizon: dict[str, dict], alpha: float = 0.05, min_t: float = 2.0, *, h: int
) -> dict:
    """Members with DM p < alpha and rank-IC t > min_t, and a plain-English statement of the verdict at horizon h."""
    skilled: list[tuple[float, str, float, float]] = []
    best_p: tuple[float, str] | None = None
    best_t: tuple[float, str] | None = None
    for name, metrics in results_for_horizon.items():
        p = _clean((metrics or {}).get("dm_pvalue"))
        t = _clean((metrics or {}).get("rank_ic_t"))
        if p is not None and (best_p is None or p < best_p[0]):
            best_p = (p, name)
        if t is not None and (best_t is None or t > best_t[0]):
            best_t = (t, name)
        if p is not None and t is not None and p < alpha and t > min_t:
            skilled.append((p, name, p, t))
    skilled.sort()
    names = [name for _, name, _, _ in skilled]
    if skilled:
        parts = [f"{name} (DM p={_fmt_p(p)}, rank-IC t={t:.1f})" for _, name, p, t in skilled]
        if len(parts) == 1:
            _, name, p, t = skilled[0]
            statement = f"h={h}: {name} beats the random walk (DM p={_fmt_p(p)}, rank-IC t={t:.1f})."
        else:
            statement = f"h={h}: {', '.join(parts[:-1])} and {parts[-1]} beat the random walk."
    else:
        p_text = f"best DM p={_fmt_p(best_p[0])} by {best_p[1]}" if best_p else "no DM p-value available"
        t_text = f"best rank-IC t={best_t[0]:.1f} by {best_t[1]}" if best_t else "no rank-IC t available"
        statement = f"h={h}: no member shows an edge over the random walk ({p_text}; {t_text})."
    return {"skilled_members": names, "statement": statement}
