"""The evaluation entry point's own parts (ibf_core.evaluation.pipeline); `ibf evaluate` end to end is in
test_forecast_assets.py and test_cli_csv.py."""

import pandas as pd

from ibf_core.evaluation.pipeline import EvaluationResult, evaluation_signals, factor_line
from ibf_core.evaluation.walkforward import WalkForwardResult
from ibf_core.settings import load_settings


def test_factor_line_names_each_factor_and_why_one_is_unavailable():
    factors = {
        "reversal_1": {"available": True, "rank_ic_mean": 0.0312, "rank_ic_t": 1.24},
        "momentum_20": {"available": True, "rank_ic_mean": -0.01, "rank_ic_t": None},
        "momentum_12_1": {"available": False, "reason": "too little history"},
    }
    assert factor_line("5", factors) == (
        "h=5 factors (rank IC, t): reversal_1 0.031 (1.2), momentum_20 -0.010 (-), momentum_12_1 unavailable (too little history)"
    )


def test_summary_lines_per_horizon_then_the_policy_table():
    results = {
        "verdicts": {"1": {"statement": "h=1: no skill"}, "5": {"statement": "h=5: no skill"}},
        "factors": {"horizons": {"1": {}, "5": {"reversal_1": {"available": False, "reason": "r"}}}},
        "horizons": {"1": {"ensemble": {"rel_mae_vs_naive": 1.0}}, "5": {}},
    }
    evaluation = EvaluationResult(WalkForwardResult(results, pd.DataFrame()))
    lines = evaluation.summary_lines()
    assert lines[0] == "h=1: no skill" and lines[1] == "h=1 factors (rank IC, t): "
    assert lines[2].startswith("h=1 ensemble: MAE vs random walk 1.0000")
    assert lines[3:5] == ["h=5: no skill", "h=5 factors (rank IC, t): reversal_1 unavailable (r)"]
    assert len(lines) == 6


def test_no_fundamentals_source_loads_nothing_and_says_nothing():
    said = []
    assert evaluation_signals(load_settings(fundamentals_source="none"), ["AAPL"], said.append) is None
    assert said == []
