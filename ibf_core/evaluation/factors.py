"""Textbook factors beside the models: short-term reversal and momentum, scored on the models' own test origins.

The factors are defined in ``ibf_core.models.factors`` (where they are also forecast members). Per horizon h the factor is ranked against the realized h-day return across symbols
on every test date (Spearman, ``metrics.cross_sectional_ic``) and summarized with ``metrics.ic_summary``
(Newey-West t with h-1 lags), exactly as the members' rank IC. A factor no test origin has enough history for
(12-1 momentum needs 253 sessions) is reported unavailable, with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ibf_core.evaluation.metrics import cross_sectional_ic, ic_summary
from ibf_core.evaluation.report import _table
from ibf_core.models.factors import FACTORS, Factor, factor_values

MIN_SYMBOLS = 3  # per date, as the IC needs
__all__ = ["FACTORS", "Factor", "factor_ics", "factor_table", "factor_values", "markdown"]


def factor_table(panel: pd.DataFrame) -> pd.DataFrame:
    """``symbol, date`` + one column per factor, for every panel row."""
    ordered = panel.sort_values(["symbol", "session"], kind="stable").reset_index(drop=True)
    table = ordered[["symbol", "date"]].copy()
    for factor in FACTORS:
        table[factor.name] = factor_values(ordered, factor)
    return table


def factor_ics(panel: pd.DataFrame, origins: dict[int, pd.DataFrame]) -> dict[str, Any]:
    """``{"definitions": {...}, "horizons": {"h": {factor: metrics}}}`` on the given origins per horizon.

    ``origins[h]``: ``symbol, date, realized`` (the h-day return that followed), the models' test origins.
    Metrics: ``rank_ic_mean``, ``rank_ic_t``, ``rank_ic_positive_share``, ``n`` (origins with a factor value
    and a realized return), ``n_dates``, ``available`` and, when unavailable, ``reason``.
    """
    table = factor_table(panel)
    first_session = panel.groupby("symbol")["session"].min()
    sessions = panel.set_index(["symbol", "date"])["session"]
    out: dict[str, Any] = {"definitions": {f.name: f.description for f in FACTORS}, "horizons": {}}
    for h, rows in sorted(origins.items()):
        scored = rows[["symbol", "date", "realized"]].merge(table, on=["symbol", "date"], how="left")
        at = sessions.reindex(pd.MultiIndex.from_frame(scored[["symbol", "date"]])).to_numpy()
        history = at - first_session.reindex(scored["symbol"]).to_numpy() + 1
        out["horizons"][str(h)] = {f.name: _score(scored, f, h, history) for f in FACTORS}
    return out


def _score(scored: pd.DataFrame, factor: Factor, h: int, history: np.ndarray) -> dict[str, Any]:
    """Rank IC summary of one factor at one horizon, or why it is unavailable."""
    values = scored[factor.name].to_numpy(dtype=np.float64)
    realized = scored["realized"].to_numpy(dtype=np.float64)
    n = int((np.isfinite(values) & np.isfinite(realized)).sum())
    result: dict[str, Any] = {"n": n, "available": n > 0}
    if n == 0:
        longest = int(np.nanmax(history)) if np.isfinite(history).any() else 0
        result["reason"] = (
            f"needs {factor.history_sessions} sessions of history at an origin; "
            f"the longest history at a test origin is {longest}"
        )
        result.update(rank_ic_mean=None, rank_ic_t=None, rank_ic_positive_share=None, n_dates=0)
        return result
    summary = ic_summary(cross_sectional_ic(scored, factor.name, "realized", "spearman"), h)
    result.update(
        rank_ic_mean=summary["mean"], rank_ic_t=summary["t"], rank_ic_positive_share=summary["positive_share"],
        n_dates=summary["n_dates"],
    )
    if summary["n_dates"] == 0:
        result["available"] = False
        result["reason"] = f"no test date has {MIN_SYMBOLS} symbols with a value and a realized return"
    return result


def markdown(factors: dict[str, Any], members: dict[str, dict[str, Any]] | None = None) -> str:
    """The report section: one row per (horizon, factor), the best member's rank IC beside it."""
    rows = []
    for h, by_factor in factors.get("horizons", {}).items():
        best = _best_member_ic((members or {}).get(h, {}))
        for name, metrics in by_factor.items():
            rows.append({
                "h": h, "factor": name, "rank_ic_mean": metrics.get("rank_ic_mean"), "rank_ic_t": metrics.get("rank_ic_t"),
                "n_dates": metrics.get("n_dates"), "best member rank IC (t)": best,
                "note": metrics.get("reason", ""),
            })
    definitions = "; ".join(f"`{k}`: {v}" for k, v in factors.get("definitions", {}).items())
    return "\n".join([
        "## Textbook factors", "",
        "Ranked against the realized h-day return on the same test origins as the members (Spearman rank IC per "
        "date, Newey-West t). A positive IC means the factor works as named. " + definitions + ".", "",
        _table(rows) if rows else "_no factors_", "",
    ])


def _best_member_ic(members: dict[str, dict[str, Any]]) -> str:
    """``member ic (t)`` of the member with the highest rank-IC t at a horizon, or a dash."""
    scored = [(m, v.get("rank_ic_mean"), v.get("rank_ic_t")) for m, v in members.items() if v and v.get("rank_ic_t") is not None]
    if not scored:
        return "–"
    name, ic, t = max(scored, key=lambda item: item[2])
    return f"{name} {ic:.3f} ({t:.1f})"
