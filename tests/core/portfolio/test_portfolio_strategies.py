"""Target weights: top-k, TopkDropout (at most n_drop names replaced, as Qlib defines it), dollar-neutral long-short,
and the options (max weight, turnover cap, sector neutrality, minimum liquidity)."""

import numpy as np
import pandas as pd
import pytest

from ibf_core.portfolio.spec import STRATEGY_NAMES, Strategy
from ibf_core.portfolio.strategies import BUILDERS, cap_weights, ranked, target_weights


def frame(scores: dict, **extra) -> pd.DataFrame:
    data = pd.DataFrame({"symbol": list(scores), "rank_score": list(scores.values())})
    data["pred_return"] = data["rank_score"] / 100
    for column, values in extra.items():
        data[column] = data["symbol"].map(values)
    return data


def test_the_registry_names_every_builder():
    assert list(BUILDERS) == list(STRATEGY_NAMES)


def test_topk_is_equal_weight_on_the_best_names_ties_by_symbol():
    weights = target_weights(frame({"A": 1.0, "B": 3.0, "C": 3.0, "D": 2.0}), Strategy(strategy="topk", k=2))
    assert weights.to_dict() == {"B": 0.5, "C": 0.5}
    assert ranked(pd.Series({"Z": 1.0, "A": 1.0, "M": np.nan})) == ["A", "Z", "M"]


def test_a_fractional_k_has_a_floor_and_the_session_without_rank_scores_falls_back_to_pred_return():
    spec = Strategy(strategy="topk", k=0.1, k_min=2)
    assert (spec.k_for(4), spec.k_for(500), spec.k_for(1)) == (2, 50, 1)
    older = frame({"A": 1.0, "B": 3.0, "C": 2.0}).assign(rank_score=np.nan)
    assert list(target_weights(older, spec).index) == ["B", "C"]


def dropout(current: dict, scores: dict, k=3, n_drop=1) -> pd.Series:
    spec = Strategy(strategy="topk_dropout", k=k, n_drop=n_drop)
    return target_weights(frame(scores), spec, pd.Series(current, dtype=float))


def test_topk_dropout_sells_the_worst_held_name_only_for_a_better_one():
    held = {"A": 0.4, "B": 0.35, "C": 0.25}
    swapped = dropout(held, {"A": 5.0, "B": 4.0, "C": 1.0, "D": 10.0, "E": 9.0})
    assert swapped.to_dict() == {"A": 0.4, "B": 0.35, "D": 0.25}  # kept names keep their weight; D gets C's
    kept = dropout(held, {"A": 5.0, "B": 4.0, "C": 3.0, "D": 1.0})
    assert kept.to_dict() == held  # every held name beats every candidate: no trade


def test_topk_dropout_replaces_at_most_n_drop_names_and_sells_a_name_without_a_score():
    held = {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3}
    scores = {"A": 1.0, "B": 0.5, "C": 5.0, "D": 10.0, "E": 9.0, "F": 8.0}
    assert set(dropout(held, scores, n_drop=1).index) == {"A", "C", "D"}  # only B, the worst, goes
    assert set(dropout(held, scores, n_drop=2).index) == {"C", "D", "E"}
    unscored = dropout(held, {"A": 1.0, "B": 2.0, "D": 0.5})  # C has no forecast any more: it ranks last
    assert set(unscored.index) == {"A", "B", "D"}


def test_a_session_without_scores_trades_nothing():
    held = pd.Series({"A": 0.5, "B": 0.5})
    nothing = frame({"A": np.nan, "B": np.nan, "C": np.nan}).assign(pred_return=np.nan)
    assert target_weights(nothing, Strategy(strategy="topk_dropout", k=2, n_drop=1), held).empty


def test_topk_dropout_without_holdings_is_topk():
    weights = dropout({}, {"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0})
    assert weights.to_dict() == pytest.approx({"B": 1 / 3, "C": 1 / 3, "D": 1 / 3})


def test_long_short_is_dollar_neutral_with_k_names_a_side():
    scores = {s: float(i) for i, s in enumerate("ABCDEFGH")}
    weights = target_weights(frame(scores), Strategy(strategy="long_short", k=3))
    assert weights.sum() == pytest.approx(0.0, abs=1e-12)
    assert weights.abs().sum() == pytest.approx(2.0)
    assert set(weights[weights > 0].index) == {"F", "G", "H"} and set(weights[weights < 0].index) == {"A", "B", "C"}
    assert target_weights(frame({"A": 1.0}), Strategy(strategy="long_short", k=1)).empty  # no room for two legs


def test_sector_neutrality_ranks_within_the_sector_and_nets_each_sector_to_zero():
    scores = {"T1": 10.0, "T2": 9.0, "T3": 8.0, "F1": 2.0, "F2": 1.0, "F3": 0.0}
    sectors = {s: s[0] for s in scores}
    plain = target_weights(frame(scores, sector=sectors), Strategy(strategy="topk", k=2))
    neutral = target_weights(frame(scores, sector=sectors), Strategy(strategy="topk", k=2, sector_neutral=True))
    assert set(plain.index) == {"T1", "T2"}
    assert set(neutral.index) == {"F1", "T1"}  # the best of each sector, relative to its sector's mean
    # Unequal sectors: the legs alone would be net short T and net long F; demeaning per sector nets both to 0.
    scores = {"T1": 10.0, "T2": 9.0, "T3": 8.0, "T4": 7.0, "F1": 1.0, "F2": 0.0}
    sectors = {s: s[0] for s in scores}
    spec = Strategy(strategy="long_short", k=2, sector_neutral=True)
    weights = target_weights(frame(scores, sector=sectors), spec)
    assert weights.to_dict() == pytest.approx({"T1": 0.625, "T2": 0.125, "T3": -0.375, "T4": -0.375, "F1": 0.25, "F2": -0.25})
    assert weights.groupby(weights.index.str[0]).sum().abs().max() == pytest.approx(0.0, abs=1e-12)
    assert weights.abs().sum() == pytest.approx(spec.leverage)
    with pytest.raises(ValueError, match="sector"):
        target_weights(frame(scores), spec)


def test_max_weight_caps_every_name_and_hands_the_excess_to_the_others():
    capped = cap_weights(pd.Series({"A": 0.5, "B": 0.3, "C": 0.2}), 0.4)
    assert capped.to_dict() == pytest.approx({"A": 0.4, "B": 0.36, "C": 0.24})
    weights = target_weights(frame({"A": 3.0, "B": 2.0, "C": 1.0}), Strategy(strategy="topk", k=2, max_weight=0.3))
    assert weights.to_dict() == pytest.approx({"A": 0.3, "B": 0.3})  # all capped: the rest stays cash
    short = target_weights(frame({s: float(i) for i, s in enumerate("ABCD")}), Strategy(strategy="long_short", k=1, max_weight=0.5))
    assert short.to_dict() == pytest.approx({"A": -0.5, "D": 0.5})


def test_the_turnover_cap_scales_the_trade_down():
    current = pd.Series({"A": 0.5, "B": 0.5})
    spec = Strategy(strategy="topk", k=2, turnover_cap=0.5)
    weights = target_weights(frame({"A": 0.0, "B": 0.0, "C": 2.0, "D": 1.0}), spec, current)
    traded = weights.reindex(list("ABCD"), fill_value=0.0) - current.reindex(list("ABCD"), fill_value=0.0)
    assert traded.abs().sum() == pytest.approx(0.5)
    assert weights.to_dict() == pytest.approx({"A": 0.375, "B": 0.375, "C": 0.125, "D": 0.125})


def test_minimum_liquidity_drops_names_below_the_dollar_volume():
    liquidity = {"A": 5e6, "B": 1e5, "C": 2e6, "D": np.nan}
    spec = Strategy(strategy="topk", k=2, min_dollar_volume=1e6)
    weights = target_weights(frame({"A": 1.0, "B": 9.0, "C": 2.0, "D": 8.0}, liquidity=liquidity), spec)
    assert set(weights.index) == {"A", "C"}  # B and D score best but trade too little (D: unknown)
    with pytest.raises(ValueError, match="liquidity"):
        target_weights(frame({"A": 1.0}), spec)
