"""Walk-forward evaluation with rolling origins, purge and embargo; nothing is fitted on test data.

Test origins are the last ``test_days`` sessions whose longest-horizon target is realized. They are split
into folds of ``refit_every`` consecutive origins; for each fold the members are trained with the cut-off
``embargo`` sessions before the fold's first origin (``train_models`` truncates the data at the cut-off, so
no target, scaler statistic, weight or interval quantile can see the fold). Every origin of the fold is
then forecast by that model.

Beside the members, the textbook factors (``factors``: 1- and 5-session reversal, 20-session and 12-1 momentum)
are scored on the same origins (``results["factors"]``). Each fold's window plan (shrunk on a short history)
and the members it could not train are recorded in ``results["config"]["folds_detail"]``. The feature importance
by group each fold's bundle measured on its own validation window (``ibf_core.models.importance``) is averaged
over the folds into ``results["importance"]`` (``horizons[str(h)][member][group]``) and a report section.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.evaluation.factors import factor_ics, factor_table
from ibf_core.evaluation.factors import markdown as factor_markdown
from ibf_core.evaluation.metrics import cross_sectional_ic, ic_summary, member_metrics, skill_verdict
from ibf_core.evaluation.report import _table, write_report
from ibf_core.models import ModelDataError
from ibf_core.models import importance_report as importance
from ibf_core.models.config import ModelConfig
from ibf_core.models.ensemble import hln, independent_targets, rule
from ibf_core.models.importance_report import markdown as importance_markdown

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.evaluation.portfolios import PortfolioEvaluation

# Heavy imports (pyarrow, scipy, talib) stay inside the functions that need them: importing this module loads none of them.

MIN_JUDGED_TARGETS = 4  # independent h-day test targets against the best factor: 3 degrees of freedom at least


def member_order(present: set[str]) -> list[str]:
    """The members of ``present`` in registry order (baselines, trained members), then the ensemble, then any other."""
    from ibf_core.models.members import registered

    known = [*registered(), "ensemble"]
    return [m for m in known if m in present] + sorted(present - set(known))


@dataclass(frozen=True)
class WalkForwardResult:
    results: dict[str, Any]  # {"horizons": {"1": {member: metrics}}, "config": {...}, "verdicts": {...}}
    forecasts: pd.DataFrame  # symbol, date, horizon, member, pred, realized, bounds, fold, model_cutoff


def walk_forward(
    panel: pd.DataFrame,
    config: ModelConfig,
    test_days: int = 60,
    refit_every: int | None = None,
    embargo: int | None = None,
    cost_bps: float = 10.0,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> WalkForwardResult:
    from ibf_core.models.predict import forecast
    from ibf_core.models.training import train_models, usable

    say = progress or (lambda message: None)
    h_max = config.max_horizon
    embargo = h_max if embargo is None else embargo
    if embargo < h_max:
        raise ValueError(f"embargo {embargo} is shorter than the longest horizon {h_max}")
    refit_every = refit_every or test_days
    rows = usable(panel)
    realized_ok = rows[np.isfinite(rows[f"target_{h_max}"].to_numpy(dtype=np.float64))]
    dates = np.sort(realized_ok["date"].unique())
    if len(dates) < test_days:
        raise ModelDataError(
            f"too little history: {len(dates)} sessions have a realized {h_max}-day return, "
            f"fewer than the {test_days} test origins asked for (plus the training window before them)"
        )
    test_dates = pd.DatetimeIndex(dates[-test_days:])
    sessions = all_sessions()
    frames, details, importances = [], [], []
    for fold, start in enumerate(range(0, test_days, refit_every)):
        fold_dates = test_dates[start : start + refit_every]
        first = int(sessions.get_loc(fold_dates[0]))
        cutoff = sessions[first - 1 - embargo].date()
        say(f"fold {fold + 1}: train up to {cutoff}, forecast {fold_dates[0].date()}..{fold_dates[-1].date()}")
        bundle = train_models(panel, cutoff, config, device=device, progress=say)
        origins = rows[rows["date"].isin(fold_dates) & rows["symbol"].isin(bundle.facts["symbols"])]
        long = forecast(bundle, _upto(panel, fold_dates[-1]), origins)
        realized = pd.concat(
            [origins[["symbol", "date"]].assign(horizon=h, realized=origins[f"target_{h}"].to_numpy()) for h in config.horizons],
            ignore_index=True,
        )
        long = long.merge(realized, on=["symbol", "date", "horizon"], how="left")
        long["fold"], long["model_cutoff"] = fold + 1, pd.Timestamp(cutoff)
        frames.append((long, bundle.up_rate))
        details.append(_fold_detail(fold + 1, cutoff, bundle))
        importances.append(bundle.facts.get("importance"))
    forecasts = pd.concat([f for f, _ in frames], ignore_index=True)
    up_rate = {h: float(np.mean([u[str(h)] for _, u in frames])) for h in config.horizons}

    results: dict[str, Any] = {"horizons": {}, "verdicts": {}}
    for h in config.horizons:
        at_h = forecasts[forecasts["horizon"] == h]
        drift = at_h[at_h["member"] == "drift"][["symbol", "date", "pred"]].rename(columns={"pred": "drift_pred"})
        per_member = {}
        for member in member_order(set(at_h["member"])):
            part = at_h[at_h["member"] == member].merge(drift, on=["symbol", "date"], how="left")
            per_member[member] = member_metrics(part, h, p0=up_rate[h], cost_bps=cost_bps, rank_by="rank_score" if member == "ensemble" else None)
        results["horizons"][str(h)] = per_member
        results["verdicts"][str(h)] = skill_verdict(per_member, h=h)
    naive = forecasts[forecasts["member"] == "naive"]
    results["factors"] = factor_ics(panel, {h: naive[naive["horizon"] == h] for h in config.horizons})
    results["versus_factors"] = versus_best_factor(panel, forecasts, results["factors"], config.horizons)
    results["importance"] = importance.aggregate(importances)
    results["config"] = {
        "symbols": sorted(forecasts["symbol"].unique()),
        "test_origins": f"{test_dates[0].date()} .. {test_dates[-1].date()} ({test_days} sessions)",
        "folds": len(frames),
        "refit_every": refit_every,
        "embargo_sessions": embargo,
        "cost_bps_per_side": cost_bps,
        "device": device,
        "model": config.to_dict(),
        "folds_detail": details,
    }
    return WalkForwardResult(results, forecasts)


def versus_best_factor(panel: pd.DataFrame, forecasts: pd.DataFrame, factors: dict[str, Any], horizons) -> dict[str, Any]:
    """str(h) -> the ensemble's ranking against the factor with the best test rank IC, date by date.

    The difference of the two per-date rank ICs is tested with a Newey-West t (h-1 lags, HLN-corrected as the DM
    test is). ``below_p`` (:func:`below_best_factor_p`) is the one-sided p that the ensemble ranks below the factors:
    Student t with (independent targets - 1) degrees of freedom, Bonferroni-adjusted for the best of the factors
    being picked on the test origins themselves (which favours it). ``below_by_more_than_noise`` is ``below_p`` <
    0.05, judged where the test dates hold at least ``MIN_JUDGED_TARGETS`` independent h-day targets (dates / h)."""
    table = factor_table(panel)
    out: dict[str, Any] = {}
    for h in horizons:
        scored = {n: m for n, m in factors["horizons"].get(str(h), {}).items() if m.get("rank_ic_mean") is not None}
        rows = forecasts[(forecasts["horizon"] == h) & (forecasts["member"] == "ensemble")]
        if not scored or rows.empty or "rank_score" not in rows.columns:
            out[str(h)] = {"best_factor": None}
            continue
        best = max(scored, key=lambda n: scored[n]["rank_ic_mean"])
        rows = rows[["symbol", "date", "rank_score", "realized"]].merge(table[["symbol", "date", best]], on=["symbol", "date"], how="left")
        ours = cross_sectional_ic(rows, "rank_score", "realized", "spearman")
        theirs = cross_sectional_ic(rows, best, "realized", "spearman")
        both = pd.concat([ours, theirs], axis=1, join="inner")
        diff = ic_summary(both.iloc[:, 0] - both.iloc[:, 1], h)
        t = hln(diff["t"], diff["n_dates"], h) if diff["t"] is not None else float("nan")
        independent = independent_targets(diff["n_dates"], h)
        judged = independent >= MIN_JUDGED_TARGETS and math.isfinite(t)
        below_p = below_best_factor_p(t, independent, len(scored)) if judged else None
        out[str(h)] = {
            "best_factor": best,
            "best_factor_rank_ic": scored[best]["rank_ic_mean"],
            "ensemble_rank_ic": _mean(ours),
            "difference": diff["mean"],
            "difference_t": round(t, 3) if math.isfinite(t) else None,
            "n_dates": diff["n_dates"],
            "independent_test_targets": round(independent, 1),
            "judged": judged,
            "below_p": None if below_p is None else round(below_p, 4),
            "factors_compared": len(scored),
            "below_by_more_than_noise": bool(below_p is not None and below_p < 0.05),
        }
    return out


def below_best_factor_p(t: float, independent: float, factors: int) -> float:
    """One-sided p that a ranking is below the best of ``factors`` factors picked ex post, from the HLN t of the
    per-date rank-IC difference: Student t with ``independent - 1`` degrees of freedom (overlapping h-day targets
    hold about dates / h independent ones), times ``factors`` (Bonferroni: the best of them was picked on the same
    dates, so the smallest of ``factors`` one-sided p-values is what was tested)."""
    from scipy.stats import t as student

    return float(min(1.0, student.cdf(t, df=max(independent - 1.0, 1.0)) * max(factors, 1)))


def harm_markdown(results: dict[str, Any]) -> str:
    """The report section: per horizon, the ensemble against the random walk (MAE, DM) and the best factor (rank IC)."""
    rows = []
    for h, members in results.get("horizons", {}).items():
        ens = members.get("ensemble") or {}
        versus = (results.get("versus_factors") or {}).get(h, {})
        folds = [f.get("ensemble", {}).get(h, {}) for f in results.get("config", {}).get("folds_detail", [])]
        p_better = ens.get("dm_pvalue")
        rows.append({
            "h": h,
            "MAE vs RW": ens.get("rel_mae_vs_naive"),
            "DM p (worse)": None if p_better is None else 1.0 - p_better,
            "rank IC (t)": _ic_text(ens.get("rank_ic_mean"), ens.get("rank_ic_t")),
            "best factor (rank IC)": f"{versus['best_factor']} {versus['best_factor_rank_ic']:.3f}" if versus.get("best_factor") else None,
            "difference t": versus.get("difference_t"),
            "p below (of k)": None if versus.get("below_p") is None else f"{versus['below_p']:.3f} (k={versus.get('factors_compared')})",
            "judged": None if not versus.get("best_factor") else ("yes" if versus.get("judged") else f"no ({versus.get('independent_test_targets')} independent)"),
            "shrink per fold": ", ".join(f"{f.get('shrink', 1.0):.2f}" for f in folds) or None,
            "ranking per fold": "; ".join(str(f.get("ranking_source")) for f in folds) or None,
        })
    return "\n".join([
        "## Do no harm: the ensemble against the random walk and the best factor", "",
        "`MAE vs RW` at most 1 within noise (`DM p (worse)`: one-sided Diebold-Mariano p that the ensemble's absolute "
        "error is larger than the random walk's; `–` where the ensemble is the random walk, shrink 0). The ensemble's rank "
        "IC is that of its `rank` (the ranking choice); `difference t` is the Newey-West t of its per-date rank IC minus "
        "the best factor's (picked on these test origins; HLN-corrected). `p below (of k)` is the one-sided p that the "
        "ensemble ranks below the factors: Student t with (dates / h - 1) degrees of freedom, times k for picking the "
        "best of k factors after the fact; below 0.05 is worse than noise, judged where the test dates hold at least "
        f"{MIN_JUDGED_TARGETS} independent targets (`judged`).", "",
        _table(rows) if rows else "_no horizons_", "",
    ])


def harm_line(results: dict[str, Any], h: str) -> str:
    """``h=5 ensemble: MAE vs random walk 1.0000 (shrink 0.00, 0.00); rank IC 0.034 (t 1.7), best factor ...``."""
    ens = results.get("horizons", {}).get(h, {}).get("ensemble") or {}
    versus = (results.get("versus_factors") or {}).get(h, {})
    folds = [f.get("ensemble", {}).get(h, {}) for f in results.get("config", {}).get("folds_detail", [])]
    mae = ens.get("rel_mae_vs_naive")
    text = f"h={h} ensemble: MAE vs random walk {'-' if mae is None else f'{mae:.4f}'}"
    shrinks = ", ".join(format(f.get("shrink", 1.0), ".2f") for f in folds)
    text += f" (shrink {shrinks})" if folds else ""
    text += f"; rank IC {_ic_text(ens.get('rank_ic_mean'), ens.get('rank_ic_t')) or '-'}"
    if versus.get("best_factor"):
        t = versus.get("difference_t")
        p = versus.get("below_p")
        verdict = " (too few independent targets to judge)" if not versus.get("judged") else f", p below {p:.3f}"
        text += f", best factor {versus['best_factor']} {versus['best_factor_rank_ic']:.3f}: difference t {'-' if t is None else f'{t:.1f}'}{verdict}"
    return text


def _ic_text(mean: float | None, t: float | None) -> str | None:
    return None if mean is None else f"{mean:.3f} ({t:.1f})" if t is not None else f"{mean:.3f}"


def _mean(values: pd.Series) -> float | None:
    return float(values.mean()) if len(values) else None


def _fold_detail(fold: int, cutoff: dt.date, bundle) -> dict[str, Any]:
    """What one fold's training decided: windows (and why they shrank), members left out, symbols, ensemble rules."""
    plan = bundle.facts.get("windows", {})
    return {
        "fold": fold,
        "cutoff": cutoff.isoformat(),
        "members": list(bundle.config.members),
        "members_left_out": plan.get("members_left_out", {}),
        "windows": {k: plan.get(k) for k in ("embargo", "validation", "early_stopping")},
        "note": plan.get("note"),
        "symbols": len(bundle.facts["symbols"]),
        "ensemble": {h: rule(choice) for h, choice in bundle.ensemble.items()},
    }

def _upto(panel: pd.DataFrame, last: pd.Timestamp) -> pd.DataFrame:
    """Rows up to the last origin: forecasting never reads a later row (targets are not inputs either)."""
    out = panel[panel["date"] <= last]
    return out.drop(columns=[c for c in out.columns if c.startswith("target_")])


def write_outputs(
    result: WalkForwardResult, json_path: Path, report_path: Path | None = None, policy: dict[str, Any] | None = None,
    portfolios: PortfolioEvaluation | None = None,
) -> tuple[Path, Path]:
    """The JSON (shape ``{"horizons": {"1": {"naive": {...}, ...}}}`` plus config and verdicts) and the report.

    ``policy``: a ``backtest_policies`` result, stored under ``policy_backtest`` and printed as a report section;
    ``portfolios``: a ``portfolios.PortfolioEvaluation``, stored under ``portfolios`` with its report section and plots.
    """
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(result.results)
    sections = [harm_markdown(result.results)]
    if "factors" in result.results:
        sections.append(factor_markdown(result.results["factors"], result.results["horizons"]))
    if "importance" in result.results:
        sections.append(importance_markdown(result.results["importance"]))
    if policy is not None:
        from ibf_core.evaluation.policy import markdown

        payload["policy_backtest"] = {k: v for k, v in policy.items() if k != "rolling_mase"}
        sections.append(markdown(policy))
    report_path = Path(report_path) if report_path else json_path.with_suffix(".md")
    if portfolios is not None:
        from ibf_core.evaluation.portfolios import markdown as portfolio_markdown

        payload["portfolios"] = portfolios.results
        sections.insert(1, portfolio_markdown(portfolios, report_path.parent / f"{report_path.stem}_plots"))
    json_path.write_text(json.dumps(payload, indent=1, allow_nan=False, default=_default))
    write_report(result.results, result.forecasts, report_path, extra_sections=sections)
    return json_path, report_path


def _default(value: Any) -> Any:
    if isinstance(value, (dt.date, pd.Timestamp)):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value).__name__)
