"""Textbook price factors: their definitions, and the members that forecast with them.

Each factor is a signal known at the origin's close, built from split- and dividend-adjusted closes on the NYSE
calendar (``dataset.session_shift``: a price k sessions back is NULL when that bar is missing):

* ``reversal_1``: minus the last session's log return, -log(p[t] / p[t-1]);
* ``reversal_5``: minus the 5-session log return, -log(p[t] / p[t-5]);
* ``momentum_20``: the 20-session log return, log(p[t] / p[t-20]);
* ``momentum_12_1``: 12-1 momentum, log(p[t-21] / p[t-252]) (the last month skipped).

Signs are chosen so that a positive rank IC means the factor works as its name says (past losers bounce back;
past winners keep winning).

As forecast members (``members.FactorMember``) a factor becomes an h-day return the way ``gbdt_rank``'s score does:
the factor's percentile rank among the symbols of the origin's session, centred to [-0.5, 0.5], times ``scale_h``,
the no-intercept OLS slope of the realized h-day return on that centred rank over the training rows (floored at 0:
a factor that did not work as named in the training window forecasts 0, the random walk). The fit also records the
factor's rank IC over the training rows with its Newey-West t: the factor has no other parameter, so that IC is
the long-history evidence the ensemble's ranking falls back on when the validation window is too short to judge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ibf_core.evaluation.metrics import cross_sectional_ic, ic_summary
from ibf_core.models.dataset import session_shift
from ibf_core.models.gbdt import centred_rank


@dataclass(frozen=True)
class Factor:
    """sign x log(p[t - recent] / p[t - past]) in NYSE sessions."""

    name: str
    description: str
    recent: int
    past: int
    sign: float

    @property
    def history_sessions(self) -> int:
        """Sessions of history (the origin included) the factor needs at an origin."""
        return self.past + 1


FACTORS: tuple[Factor, ...] = (
    Factor("reversal_1", "minus the last session's log return", 0, 1, -1.0),
    Factor("reversal_5", "minus the 5-session log return", 0, 5, -1.0),
    Factor("momentum_20", "the 20-session log return", 0, 20, 1.0),
    Factor("momentum_12_1", "12-1 momentum: log return from 252 to 21 sessions back", 21, 252, 1.0),
)
FACTOR_BY_NAME = {f.name: f for f in FACTORS}


def factor_values(panel: pd.DataFrame, factor: Factor) -> np.ndarray:
    """The factor per panel row (``symbol, session, adj_close``, sorted by symbol then session); NaN without history."""
    log_price = np.log(panel["adj_close"].to_numpy(dtype=np.float64))
    recent = log_price if factor.recent == 0 else session_shift(panel, log_price, -factor.recent)
    return factor.sign * (recent - session_shift(panel, log_price, -factor.past))


def _ordered(panel: pd.DataFrame) -> pd.DataFrame:
    """``panel`` sorted by symbol then session (``session_shift``'s order), keeping its index."""
    return panel.sort_values(["symbol", "session"], kind="stable")


def centred_scores(panel: pd.DataFrame, factor: Factor) -> pd.Series:
    """The factor's centred percentile rank among the rows of the same session, indexed like ``panel`` (NaN: no value)."""
    ordered = _ordered(panel)
    values = pd.DataFrame({"v": factor_values(ordered, factor)}, index=ordered.index)
    return centred_rank(values, ordered["session"].to_numpy())["v"].reindex(panel.index)


def fit_factor(train: pd.DataFrame, factor: Factor, horizons: tuple[int, ...]) -> tuple[dict[int, float], dict[str, Any]]:
    """(h -> return per unit of centred rank, facts): the scale fit and the training-window rank IC per horizon."""
    score = centred_scores(train, factor).to_numpy()
    scales: dict[int, float] = {}
    rank_ic: dict[str, dict[str, Any]] = {}
    for h in horizons:
        realized = train[f"target_{h}"].to_numpy(dtype=np.float64)
        ok = np.isfinite(score) & np.isfinite(realized)
        denom = float(score[ok] @ score[ok])
        scales[h] = max(float(score[ok] @ realized[ok]) / denom, 0.0) if denom > 0 else 0.0
        frame = pd.DataFrame({"date": train["date"].to_numpy()[ok], "x": score[ok], "y": realized[ok]})
        summary = ic_summary(cross_sectional_ic(frame, "x", "y", "spearman"), h)
        rank_ic[str(h)] = {"mean": summary["mean"], "t": summary["t"], "n_dates": summary["n_dates"]}
    facts = {
        "factor": factor.description,
        "rows_with_value": int(np.isfinite(score).sum()),
        "return_scale": {str(h): v for h, v in scales.items()},
        "training_rank_ic": rank_ic,
    }
    if not np.isfinite(score).any():
        facts["note"] = f"no training row has the {factor.history_sessions} sessions of history the factor needs: it forecasts nothing"
    return scales, facts


def predict_factor(scales: dict[int, float], panel: pd.DataFrame, origins: pd.DataFrame, factor: Factor, horizons: tuple[int, ...]) -> pd.DataFrame:
    """``scale_h x centred rank`` aligned with ``origins``; ranks are over ``panel``'s rows of each origin's session."""
    sessions = np.unique(origins["session"].to_numpy())
    first = int(sessions.min()) - factor.past
    # the three columns a factor reads, before the row mask: masking the whole panel copied every feature column
    narrow = panel[["symbol", "session", "adj_close"]]
    reach = narrow[(narrow["session"] >= first) & (narrow["session"] <= int(sessions.max()))]
    scores = centred_scores(reach, factor)
    day = reach[reach["session"].isin(sessions)]
    index = pd.MultiIndex.from_arrays([day["symbol"].to_numpy(), day["session"].to_numpy()])
    at = index.get_indexer(pd.MultiIndex.from_arrays([origins["symbol"].to_numpy(), origins["session"].to_numpy()]))
    values = np.where(at >= 0, scores.loc[day.index].to_numpy()[np.maximum(at, 0)], np.nan)
    return pd.DataFrame({f"h{h}": scales.get(h, 0.0) * values for h in horizons}, index=origins.index)


def stein_weight(mean: float | None, t: float | None) -> float:
    """max(0, mean) x max(0, 1 - 1/t^2): an effect shrunk towards zero by how weakly it is measured (0 when t <= 1)."""
    if mean is None or t is None or not (math.isfinite(mean) and math.isfinite(t)) or mean <= 0 or t <= 1:
        return 0.0
    return float(mean * (1.0 - 1.0 / (t * t)))


__all__ = ["FACTORS", "FACTOR_BY_NAME", "Factor", "centred_scores", "factor_values", "fit_factor", "predict_factor", "stein_weight"]
