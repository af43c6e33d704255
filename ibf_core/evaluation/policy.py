"""Policy backtest: drift-triggered retraining vs a fixed cadence vs never retraining, over a history.

Each policy starts from the same model (cut-off the session before ``start``) and walks forward through the
sessions. Every ``check_every`` sessions the drift monitor runs on what is known at that close (matured
forecasts, the last ``feature_window`` sessions of features against the model's training reference) with the
functions the ``drift_scores`` asset uses (``symbol_drift_rows``, ``reference_windows``, the same seeds), and
``retrain_decision`` decides. Forecasts for a session always come from
the newest model whose cut-off is before it. Compared on the 1-session forecasts: rolling MASE (MAE relative to
the random walk over ``window`` sessions), mean cross-sectional rank IC, 80% interval coverage, retrains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ibf_core.evaluation.metrics import cross_sectional_ic, ic_summary
from ibf_core.models.config import ModelConfig
from ibf_core.monitoring.outcomes import matured_outcomes
from ibf_core.monitoring.scores import DriftPolicy, reference_windows, retrain_decision, symbol_drift_rows
from ibf_core.report import markdown_table

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

POLICIES = ("never", "fixed", "drift")


@dataclass
class _Backtest:
    """What every simulated policy shares: the data, the sessions, the monitor's settings and the model cache."""

    panel: pd.DataFrame
    rows: pd.DataFrame  # usable panel rows (past the warm-up, defined return)
    days: pd.DatetimeIndex
    config: ModelConfig
    drift: DriftPolicy
    cadence: int
    check_every: int
    cooldown: int
    say: Callable[[str], None]
    by_symbol: dict[str, pd.DataFrame] = field(default_factory=dict)  # feature rows past the warm-up
    models: dict[Any, tuple[Any, float]] = field(default_factory=dict)  # cut-off -> (bundle, training seconds)

    def model_at(self, cutoff) -> tuple[Any, float]:
        """The bundle trained at ``cutoff`` and its training time (each cut-off is trained once for all policies)."""
        from ibf_core.models.training import train_models

        if cutoff not in self.models:
            began = time.perf_counter()
            self.models[cutoff] = (train_models(self.panel, cutoff, self.config), time.perf_counter() - began)
        return self.models[cutoff]


def backtest_policies(
    panel: pd.DataFrame,
    config: ModelConfig,
    drift: DriftPolicy,
    start: pd.Timestamp,
    end: pd.Timestamp,
    cadence: int = 63,
    check_every: int = 5,
    cooldown: int = 21,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Simulate the three policies on ``panel`` over [start, end]; returns the summary table and the series."""
    from ibf_core.models.training import usable

    # the comparison is on 1-session forecasts and the monitor watches drift.horizon: both must be trained
    config = config.replace(horizons=sorted({*config.horizons, 1, drift.horizon}))
    rows = usable(panel)
    days = pd.DatetimeIndex(sorted(d for d in rows["date"].unique() if start <= d <= end))
    if len(days) < 2 * check_every:
        raise ValueError(f"only {len(days)} sessions between {start.date()} and {end.date()}")
    past_warmup = panel[~panel["warmup"].astype(bool)]
    run = _Backtest(panel, rows, days, config, drift, cadence, check_every, cooldown, progress or (lambda message: None),
                    by_symbol={s: g for s, g in past_warmup.groupby("symbol")})
    first_cutoff = rows.loc[rows["date"] < days[0], "date"].max().date()
    summary, series = [], {}
    for policy in POLICIES:
        run.say(f"policy {policy}: {len(days)} sessions from {days[0].date()}")
        table, retrains, reasons, train_seconds = _simulate(run, policy, first_cutoff)
        row, series[policy] = _score(run, table)
        summary.append({"policy": policy, "retrains": len(retrains), **row, "train_seconds": round(train_seconds, 1),
                        "retrain_dates": retrains, "retrain_reasons": _tally(reasons)})
    window = f"{days[0].date()} .. {days[-1].date()}"
    return {"window": window, "cadence_sessions": cadence, "check_every": check_every, "table": summary, "rolling_mase": series,
            "first_cutoff": first_cutoff.isoformat(), "members": list(config.members)}


def _simulate(run: _Backtest, policy: str, first_cutoff) -> tuple[pd.DataFrame, list[str], list[str], float]:
    """Walk one policy through the sessions: (its predictions, retrain dates, retrain reasons, training seconds)."""
    from ibf_core.models.predict import forecast, predictions_table

    drift, days, every = run.drift, run.days, run.check_every
    bundle, train_seconds = run.model_at(first_cutoff)
    retrains, history, predictions, reasons = [], [], [], []
    last_retrain = 0
    references = reference_windows(run.panel, bundle.cutoff, drift)
    no_rows = run.rows.iloc[:0]
    for i in range(0, len(days), every):
        block = days[i : i + every]
        origins = run.rows[run.rows["date"].isin(block) & run.rows["symbol"].isin(bundle.facts["symbols"])]
        long = forecast(bundle, run.panel[run.panel["date"] <= block[-1]], origins)
        predictions.append(predictions_table(long, origins, bundle, str(bundle.cutoff)))
        check_day = block[-1]
        due = False
        if policy == "fixed":
            due = i + every - last_retrain >= run.cadence
        elif policy == "drift":
            outcomes = matured_outcomes(pd.concat(predictions, ignore_index=True), run.panel, check_day)
            for symbol in bundle.facts["symbols"]:
                own = run.by_symbol.get(symbol, no_rows)
                history += symbol_drift_rows(symbol, check_day, own, references, outcomes, drift, str(bundle.cutoff))
            decision = retrain_decision(pd.DataFrame(history), check_day, drift)
            due = decision["retrain"] and i + every - last_retrain >= run.cooldown
            if due:
                reasons.extend(decision["reasons"])
        if due and i + every < len(days):
            cutoff = check_day.date()
            bundle, seconds = run.model_at(cutoff)
            train_seconds += seconds
            retrains.append(cutoff.isoformat())
            last_retrain = i + every
            references = reference_windows(run.panel, bundle.cutoff, drift)
            run.say(f"  {policy}: retrained at {cutoff}")
    return pd.concat(predictions, ignore_index=True), retrains, reasons, train_seconds


def _score(run: _Backtest, table: pd.DataFrame) -> tuple[dict[str, Any], pd.Series]:
    """The 1-session comparison of one policy's predictions, and its rolling MASE."""
    outcomes = matured_outcomes(table, run.panel, run.days[-1])
    one = outcomes[outcomes["horizon"] == 1].copy()
    daily = one.groupby("date").agg(err=("abs_error", "mean"), naive=("realized_return", lambda r: r.abs().mean()))
    rolling = daily["err"].rolling(run.drift.window).sum() / daily["naive"].rolling(run.drift.window).sum()
    ic_stats = ic_summary(cross_sectional_ic(one, "pred_return", "realized_return", "spearman"), 1)
    row = {
        "mase": float(one["abs_error"].mean() / one["realized_return"].abs().mean()),
        "rolling_mase_median": float(rolling.median()),
        "rolling_mase_max": float(rolling.max()),
        "rank_ic_mean": ic_stats["mean"],
        "rank_ic_t": ic_stats["t"],
        "coverage_80": float(one["hit_80"].mean()),
    }
    return row, rolling


def _tally(reasons: list[str]) -> dict[str, int]:
    """Retrain reasons by rule (symbol names stripped)."""
    out: dict[str, int] = {}
    for reason in reasons:
        rule = "MMD" if "MMD" in reason else "coverage" if "coverage" in reason else "MASE" if "MASE" in reason else reason
        out[rule] = out.get(rule, 0) + 1
    return out


def markdown(result: dict[str, Any]) -> str:
    """The report section: one row per policy."""
    table = pd.DataFrame(result["table"]).drop(columns=["retrain_dates", "retrain_reasons"])
    lines = [
        "## Retraining policies (backtest)",
        "",
        f"Sessions {result['window']}; every policy starts from the model with cut-off {result['first_cutoff']} "
        f"(members: {', '.join(result['members'])}); fixed cadence = every {result['cadence_sessions']} sessions; "
        f"the drift monitor runs every {result['check_every']} sessions. 1-session forecasts; MASE < 1 beats the random walk.",
        "",
        markdown_table(table, max_rows=10),
        "",
    ]
    for row in result["table"]:
        if row["retrain_dates"]:
            why = f" (rules that fired: {row['retrain_reasons']})" if row["retrain_reasons"] else ""
            lines.append(f"- {row['policy']} retrained at: {', '.join(row['retrain_dates'])}{why}")
    return "\n".join(lines) + "\n"
