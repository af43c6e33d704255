"""The evaluation ``ibf evaluate`` runs, end to end: bars from the source, point-in-time fundamentals, features,
the modelling panel, the walk-forward (``walkforward``) and, when asked for, the retraining-policy backtest
(``policy``) and the chosen portfolios' backtests on every forecaster's and factor's scores (``portfolios``).

Entry point: :func:`run_evaluation`, returning an :class:`EvaluationResult` that writes the JSON and the report
and gives the summary lines. Nothing here writes the user's warehouse: fundamentals load into a scratch
warehouse that is removed after.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ibf_core.calendar import to_date
from ibf_core.evaluation.factors import factor_table
from ibf_core.evaluation.policy import backtest_policies
from ibf_core.evaluation.policy import markdown as policy_markdown
from ibf_core.evaluation.portfolios import PortfolioEvaluation, evaluate_portfolios, summary_line
from ibf_core.evaluation.walkforward import WalkForwardResult, harm_line, walk_forward, write_outputs
from ibf_core.features.pipeline import compute_features
from ibf_core.fundamentals.inputs import FundamentalInputs
from ibf_core.fundamentals.load import load_fundamentals, load_macro, read_inputs
from ibf_core.models.config import ModelConfig
from ibf_core.models.dataset import build_panel
from ibf_core.monitoring.scores import DriftPolicy
from ibf_core.portfolio.spec import Strategy
from ibf_core.portfolio.stored import cost_model
from ibf_core.settings import Settings
from ibf_core.sources import make_source
from ibf_core.storage.backends import open_warehouse

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PolicyBacktest:
    """The retraining-policy backtest (drift-triggered vs fixed cadence vs never): its first session (an ISO date;
    None: two years before the data ends), the members every retrain trains, the fixed cadence in sessions."""

    start: str | None = None
    members: tuple[str, ...] = ("gbdt",)
    cadence: int = 63


@dataclass(frozen=True)
class EvaluationResult:
    walk_forward: WalkForwardResult
    policy: dict[str, Any] | None = None  # a backtest_policies result, when one was asked for
    portfolios: PortfolioEvaluation | None = None  # the strategy backtests, when portfolios were chosen

    def write(self, json_path: Path, report_path: Path | None = None) -> tuple[Path, Path]:
        """The metrics JSON and the markdown report (default: next to the JSON); returns both paths."""
        return write_outputs(self.walk_forward, json_path, report_path, self.policy, self.portfolios)

    def summary_lines(self) -> list[str]:
        """Per horizon its verdict, factor and do-no-harm lines; each portfolio's line; the policy table, if any."""
        results = self.walk_forward.results
        lines = []
        for h, verdict in results["verdicts"].items():
            lines += [verdict["statement"], factor_line(h, results["factors"]["horizons"].get(h, {})), harm_line(results, h)]
        if self.portfolios is not None:
            lines += [summary_line(name, entry) for name, entry in self.portfolios.results.items()]
        if self.policy is not None:
            lines.append(policy_markdown(self.policy))
        return lines


def run_evaluation(
    settings: Settings,
    config: ModelConfig,
    symbols: Sequence[str] | None = None,
    start: dt.date | None = None,
    test_days: int = 60,
    refit_every: int | None = None,
    device: str = "cpu",
    policy: PolicyBacktest | None = None,
    progress: Progress | None = None,
    portfolios: Mapping[str, Strategy] | None = None,
) -> EvaluationResult:
    """Walk-forward evaluation of ``config``'s members on ``symbols`` (None: IBF_UNIVERSE, or with the csv source
    every symbol of the file) from ``start`` (None: IBF_HISTORY_START) to today; ``portfolios`` (name -> spec, e.g.
    ``portfolios.choose_portfolios``) are backtested on the walk-forward's forecasts and the factors.

    Raises ``SourceError`` (bars), ``ModelDataError`` (too little data) or ``ValueError`` (e.g. a bad policy start).
    """
    say = progress or (lambda message: None)
    bar_source = make_source(settings)
    if symbols is None:
        symbols = bar_source.read().symbols() if settings.source == "csv" else settings.universe
    bars = bar_source.fetch_daily_bars(symbols, start or settings.history_start, dt.date.today())
    say(f"{len(bars):,} bars of {bars['symbol'].nunique()} symbols from {settings.source}")
    signals = evaluation_signals(settings, sorted(bars["symbol"].unique()), say)
    features = compute_features(bars, benchmark=settings.benchmark, fundamentals=signals)
    panel = build_panel(bars, features, config.horizons)
    result = walk_forward(panel, config, test_days=test_days, refit_every=refit_every, cost_bps=settings.cost_bps,
                          device=device, progress=say)
    backtest = _backtest(settings, panel, config, policy, say) if policy else None
    chosen = _portfolios(settings, panel, bars, result, portfolios, say) if portfolios else None
    return EvaluationResult(result, backtest, chosen)


def _portfolios(settings: Settings, panel: pd.DataFrame, bars: pd.DataFrame, result: WalkForwardResult,
                specs: Mapping[str, Strategy], say: Progress) -> PortfolioEvaluation:
    started = time.perf_counter()
    costs = cost_model(settings.portfolio_capital, settings.portfolio_slippage_bps)
    done = evaluate_portfolios(result.forecasts, factor_table(panel), bars, specs, costs, settings.benchmark, say)
    say(f"portfolio backtests: {time.perf_counter() - started:.1f} s")
    return done


def _backtest(settings: Settings, panel: pd.DataFrame, config: ModelConfig, policy: PolicyBacktest, say: Progress) -> dict[str, Any]:
    last = panel["date"].max()
    first = pd.Timestamp(to_date(policy.start)) if policy.start else last - pd.DateOffset(years=2)
    return backtest_policies(
        panel, config.replace(members=list(policy.members)), DriftPolicy.from_settings(settings), first, last,
        cadence=policy.cadence, cooldown=settings.retrain_cooldown_sessions, progress=say,
    )


def evaluation_signals(settings: Settings, symbols: list[str], progress: Progress | None = None) -> FundamentalInputs | None:
    """Fundamentals, earnings and macro for the evaluation (IBF_FUNDAMENTALS_SOURCE), loaded into a scratch
    warehouse that is removed after: evaluation never writes the user's warehouse. None when the source is none."""
    say = progress or (lambda message: None)
    if settings.fundamentals_source == "none":
        return None
    with tempfile.TemporaryDirectory(prefix="ibf-evaluate-") as scratch:
        store = open_warehouse(settings.replace(home=Path(scratch), warehouse="lake"))
        loaded = [load_fundamentals(settings, store, symbols), load_macro(settings, store)]
        for result in loaded:
            for subject, endpoint, reason in list(result.issues)[:10]:
                say(f"fundamentals: {subject} {endpoint}: {reason}")
        inputs = read_inputs(store, symbols)
    say(f"fundamentals from {settings.fundamentals_source}: {len(inputs.overview)} overview, {len(inputs.earnings)} "
        f"earnings, {len(inputs.macro)} macro rows")
    return inputs


def factor_line(h: str, factors: dict) -> str:
    """``h=5 factors (rank IC, t): reversal_1 0.031 (1.2), ...``; an unavailable factor says why."""
    parts = []
    for name, metrics in factors.items():
        if not metrics.get("available"):
            parts.append(f"{name} unavailable ({metrics.get('reason')})")
            continue
        ic, t = metrics.get("rank_ic_mean"), metrics.get("rank_ic_t")
        parts.append(f"{name} {ic:.3f} ({'-' if t is None else f'{t:.1f}'})")
    return f"h={h} factors (rank IC, t): " + ", ".join(parts)
