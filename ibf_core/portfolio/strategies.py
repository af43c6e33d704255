"""Target weights from one session's predictions: top-k, TopkDropout and long-short, with their options.

Input: a frame of one origin's rows (``symbol``, the spec's score column, and ``sector`` / ``liquidity`` when the
spec needs them) and the portfolio's weights at the decision time (the origin's close). Output: the target weight
per symbol (a fraction of NAV; negative = short), non-zero names only. Names are ranked by score descending, ties
by symbol, so a target is a pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ibf_core.portfolio.spec import Strategy

_TINY = 1e-12  # a weight below this is no position
Builder = Callable[[pd.Series, int, Strategy, pd.Series], pd.Series]


def session_scores(frame: pd.DataFrame, spec: Strategy) -> pd.Series:
    """The ranking score per symbol: finite scores of liquid names, demeaned within sector when sector-neutral.

    ``rank_score`` falls back to ``pred_return`` for a session with no ranking score at all (older rows).
    """
    if frame["symbol"].duplicated().any():
        twice = sorted(frame.loc[frame["symbol"].duplicated(), "symbol"])
        raise ValueError(f"one row per symbol expected; duplicated: {twice}")
    data = frame.set_index("symbol")
    column = spec.score
    if column not in data.columns or not np.isfinite(pd.to_numeric(data[column], errors="coerce")).any():
        column = "pred_return" if column == "rank_score" and "pred_return" in data.columns else column
    if column not in data.columns:
        raise ValueError(f"the predictions have no {column!r} column")
    scores = pd.to_numeric(data[column], errors="coerce").astype(float)
    keep = np.isfinite(scores)
    if spec.min_dollar_volume > 0:
        if "liquidity" not in data.columns:
            raise ValueError("min_dollar_volume needs a 'liquidity' column (mean dollar volume per symbol)")
        liquidity = pd.to_numeric(data["liquidity"], errors="coerce")
        keep &= liquidity >= spec.min_dollar_volume
    scores = scores[keep]
    if spec.sector_neutral:
        scores = scores - scores.groupby(_sectors(data, scores.index)).transform("mean")
    return scores


def _sectors(data: pd.DataFrame, index: pd.Index) -> pd.Series:
    """Sector per symbol (a symbol without one is grouped with the others without one)."""
    if "sector" not in data.columns:
        raise ValueError("sector_neutral needs a 'sector' column (the sector code per symbol)")
    sectors = data["sector"].reindex(index).astype(object)
    return sectors.where(sectors.notna(), "unknown")


def _key(symbol: str, score: float) -> tuple[bool, float, str]:
    """Sort key: finite scores first, best first, then the symbol."""
    finite = bool(np.isfinite(score))
    return (not finite, -score if finite else 0.0, symbol)


def ranked(scores: pd.Series | dict[str, float], names: list[str] | None = None) -> list[str]:
    """Symbols (``names``, default all) by score descending, ties by symbol ascending; no or a NaN score ranks last."""
    score = scores if isinstance(scores, dict) else dict(zip(scores.index.astype(str), scores.to_numpy(dtype=float)))
    return sorted(score if names is None else names, key=lambda s: _key(s, score.get(s, np.nan)))


def topk(scores: pd.Series, k: int, spec: Strategy, current: pd.Series) -> pd.Series:
    """Long-only: leverage / k on each of the k best names."""
    names = ranked(scores)[:k]
    return pd.Series(spec.leverage / len(names), index=names) if names else pd.Series(dtype=float)


def long_short(scores: pd.Series, k: int, spec: Strategy, current: pd.Series) -> pd.Series:
    """Dollar-neutral: +leverage / 2k on the k best names, -leverage / 2k on the k worst."""
    order = ranked(scores)
    if k < 1 or len(order) < 2 * k:
        return pd.Series(dtype=float)
    size = spec.leverage / (2 * k)
    return pd.concat([pd.Series(size, index=order[:k]), pd.Series(-size, index=order[-k:])])


def topk_dropout(scores: pd.Series, k: int, spec: Strategy, current: pd.Series) -> pd.Series:
    """Qlib's TopkDropoutStrategy (method_sell="bottom", method_buy="top"), on weights.

    held = the long names now; candidates = the best ``n_drop + k - len(held)`` names not held; of held +
    candidates ranked together, the held names among the ``n_drop`` worst are sold (a held name without a score
    ranks last), and the first ``len(sold) + k - len(held)`` candidates are bought. Kept names keep their weight
    at the decision time; the buys share what is left of ``leverage`` equally. Without holdings: :func:`topk`.
    """
    held = [str(s) for s in current.index[current.to_numpy() > _TINY]]
    if not held:
        return topk(scores, k, spec, current)
    n_drop = spec.n_drop_for(k)
    score = dict(zip(scores.index.astype(str), scores.to_numpy(dtype=float)))
    held_set = set(held)
    candidates = [s for s in ranked(score) if s not in held_set][: max(n_drop + k - len(held), 0)]
    worst = set(ranked(score, held + candidates)[-n_drop:])
    sold = {s for s in held if s in worst}
    bought = candidates[: max(len(sold) + k - len(held), 0)]
    kept = current.reindex([s for s in held if s not in sold]).astype(float)
    room = spec.leverage - float(kept.sum())
    buys = pd.Series(room / len(bought), index=bought) if bought and room > _TINY else pd.Series(dtype=float)
    return pd.concat([kept, buys])


BUILDERS: dict[str, Builder] = {"topk": topk, "topk_dropout": topk_dropout, "long_short": long_short}


def cap_weights(weights: pd.Series, cap: float) -> pd.Series:
    """No |weight| above ``cap``: the excess goes to the same leg's names under it, pro rata; none left: cash."""
    out = weights.astype(float).copy()
    for sign in (1.0, -1.0):
        leg = out[np.sign(out) == sign].abs()
        for _ in range(len(leg)):
            over = leg > cap + _TINY
            if not over.any():
                break
            excess = float((leg[over] - cap).sum())
            leg[over] = cap
            free = leg[leg < cap - _TINY]
            if free.empty:
                break
            leg[free.index] += excess * free / free.sum()
        out[leg.index] = sign * leg
    return out


def cap_turnover(target: pd.Series, current: pd.Series, cap: float) -> pd.Series:
    """The trade from ``current`` towards ``target`` scaled down so that sum |w_new - w_now| <= ``cap``."""
    index = target.index.union(current.index)
    wanted, now = target.reindex(index, fill_value=0.0), current.reindex(index, fill_value=0.0)
    turnover = float((wanted - now).abs().sum())
    if turnover <= cap:
        return target
    return now + (wanted - now) * (cap / turnover)


def sector_demeaned(weights: pd.Series, sectors: pd.Series, leverage: float) -> pd.Series:
    """Weights minus their sector's mean over the scored names (every sector nets to 0), scaled to ``leverage``."""
    full = weights.reindex(sectors.index, fill_value=0.0)
    out = full - full.groupby(sectors).transform("mean")
    gross = float(out.abs().sum())
    return out * (leverage / gross) if gross > _TINY else out * 0.0


def target_weights(frame: pd.DataFrame, spec: Strategy, current: pd.Series | None = None) -> pd.Series:
    """The spec's target weights for one session's predictions, given the weights at the decision time."""
    now = pd.Series(dtype=float) if current is None else current.astype(float)
    now = now[now.abs() > _TINY]
    scores = session_scores(frame, spec)
    if scores.empty:  # nothing scored (or nothing liquid): no information, no trade
        return pd.Series(dtype=float, name="weight")
    weights = BUILDERS[spec.strategy](scores, spec.k_for(len(scores)), spec, now)
    if spec.sector_neutral and spec.strategy == "long_short" and not weights.empty:
        weights = sector_demeaned(weights, _sectors(frame.set_index("symbol"), scores.index), float(spec.leverage))
    if spec.max_weight is not None:
        weights = cap_weights(weights, spec.max_weight)
    if spec.turnover_cap is not None:
        weights = cap_turnover(weights, now, spec.turnover_cap)
    weights = weights[weights.abs() > _TINY].astype(float)
    weights.index = weights.index.astype(str)
    return weights.sort_index().rename("weight")
