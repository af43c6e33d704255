"""Strategy backtests in ``ibf evaluate``: each chosen portfolio run on every member's, the ensemble's and each
textbook factor's walk-forward scores, with the same costs and bars, side by side.

Only out-of-sample scores trade: a member's or the ensemble's forecast of origin d comes from the fold whose
training cut-off is before d (``walk_forward`` records it as ``model_cutoff``; a row at or before its cut-off is an
error, never used). Factors are fitted on nothing; their value at d reads prices up to d's close. Every run covers
the same test origins; ``ibf_core.portfolio.simulate`` trades each rebalance at the next session's close and charges
IB's costs. The sessions simulated end ``rebalance`` sessions after the last trade (the last holding period), at the
newest bar at the latest.

Score columns: the ensemble's frame is what the ``predictions`` table holds (``rank_score``, ``pred_return``,
``pred_<member>``), so its run is the one the production portfolio would trade; a member's or factor's frame puts its
own score into the column the strategy ranks (and into ``pred_return``, ``rank_score``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions
from ibf_core.evaluation.report import _pyplot, _save, _table
from ibf_core.features.microstructure import WINDOW
from ibf_core.portfolio.costs import CostModel
from ibf_core.portfolio.metrics import benchmark_returns, equal_weight_returns, portfolio_metrics
from ibf_core.portfolio.simulate import NO_TARGET, Market, simulate
from ibf_core.portfolio.spec import Strategy, parse_portfolios

ALL = "all"
BARS_BEFORE = 3 * WINDOW  # sessions of bars kept before the first origin: the 20-session spread and dollar volume
GROSS_KEYS = ("total_return", "annual_return", "annual_volatility", "sharpe", "max_drawdown",
              "universe_excess_annual_return", "universe_information_ratio")  # fmt: skip
TABLE_KEYS = ("annual_return", "annual_return_gross", "sharpe", "max_drawdown", "universe_excess_annual_return",
              "universe_information_ratio", "benchmark_excess_annual_return", "turnover_mean", "cost_drag", "var_95")  # fmt: skip
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PortfolioEvaluation:
    """``results``: portfolio -> {strategy, forecasters: {member: run}, factors: {factor: run}}; ``nav``: portfolio ->
    the net NAV per session (rows) and run (columns ``member`` or ``factor:<name>``)."""

    results: dict[str, Any]
    nav: dict[str, pd.DataFrame] = field(default_factory=dict)


def choose_portfolios(configured: Mapping[str, Any], wanted: Sequence[str] | None, horizons: Sequence[int]) -> dict[str, Strategy]:
    """The portfolios to run: ``wanted`` names (``all``: every configured one; none: the first configured one).

    ValueError naming an unknown portfolio and the configured ones, or a portfolio whose horizon is not evaluated.
    """
    specs = parse_portfolios(configured)
    if not specs:
        raise ValueError("IBF_PORTFOLIOS holds no portfolio")
    names = list(specs) if ALL in (wanted or []) else list(dict.fromkeys(wanted or [next(iter(specs))]))
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown portfolio {', '.join(map(repr, unknown))} (configured in IBF_PORTFOLIOS: "
                         f"{', '.join(specs)}; or '{ALL}')")
    for name in names:
        if specs[name].horizon not in horizons:
            raise ValueError(f"portfolio {name!r} ranks horizon {specs[name].horizon}, which this evaluation does not "
                             f"forecast (--horizons {','.join(map(str, horizons))})")
    return {name: specs[name] for name in names}


def out_of_sample(forecasts: pd.DataFrame) -> pd.DataFrame:
    """The forecasts, checked to be out of sample: every origin after its fold's training cut-off."""
    inside = pd.to_datetime(forecasts["date"]) <= pd.to_datetime(forecasts["model_cutoff"])
    if inside.any():
        row = forecasts[inside].iloc[0]
        raise ValueError(f"{int(inside.sum())} forecast row(s) at or before their model's cut-off (e.g. {row['member']} "
                         f"{row['symbol']} {pd.Timestamp(row['date']).date()}, cut-off {pd.Timestamp(row['model_cutoff']).date()})")
    return forecasts


def score_frames(forecasts: pd.DataFrame, factors: pd.DataFrame | None, spec: Strategy) -> dict[tuple[str, str], pd.DataFrame]:
    """(kind, name) -> the prediction rows ``simulate`` reads, at the spec's horizon: kind ``forecaster`` (members
    and the ensemble) or ``factor`` (``factors``: ``symbol, date`` and one column per factor)."""
    at_h = out_of_sample(forecasts[forecasts["horizon"] == spec.horizon])
    at_h = at_h.assign(date=pd.to_datetime(at_h["date"]).dt.normalize())
    keys = ["symbol", "date"]
    wide = at_h.pivot(index=keys, columns="member", values="pred")  # one forecast per origin and member, or an error
    out: dict[tuple[str, str], pd.DataFrame] = {}
    for member in wide.columns:
        score = wide[member].rename("score").reset_index()
        if member != "ensemble":
            out[("forecaster", member)] = _scored(score, score["score"], spec)
            continue
        frame = score.rename(columns={"score": "pred_return"})
        ranks = at_h[at_h["member"] == "ensemble"]
        rank = ranks.set_index(keys)["rank_score"] if "rank_score" in ranks.columns else None
        frame["rank_score"] = np.nan if rank is None else rank.reindex(pd.MultiIndex.from_frame(frame[keys])).to_numpy()
        for other in wide.columns.drop("ensemble"):
            frame[f"pred_{other}"] = wide[other].reindex(pd.MultiIndex.from_frame(frame[keys])).to_numpy()
        out[("forecaster", "ensemble")] = frame.assign(horizon=spec.horizon)
    if factors is not None:
        origins = at_h[keys].drop_duplicates()
        table = origins.merge(factors.assign(date=pd.to_datetime(factors["date"]).dt.normalize()), on=keys, how="left")
        for name in factors.columns.drop(keys):
            out[("factor", name)] = _scored(table[keys], table[name], spec)
    return out


def _scored(rows: pd.DataFrame, score: pd.Series, spec: Strategy) -> pd.DataFrame:
    """``rows`` (symbol, date) with ``score`` in every column the spec may rank by."""
    values = score.to_numpy(dtype=float)
    frame = rows[["symbol", "date"]].assign(horizon=spec.horizon, pred_return=values, rank_score=values)
    frame[spec.score] = values
    return frame


def evaluate_portfolios(
    forecasts: pd.DataFrame,
    factors: pd.DataFrame | None,
    bars: pd.DataFrame,
    specs: Mapping[str, Strategy],
    costs: CostModel = CostModel(),
    benchmark: str | None = None,
    progress: Progress | None = None,
) -> PortfolioEvaluation:
    """Run each spec on each forecaster's and factor's out-of-sample scores; metrics net and gross of costs."""
    say = progress or (lambda message: None)
    bars = bars.assign(date=pd.to_datetime(bars["date"]).dt.normalize())
    results: dict[str, Any] = {}
    navs: dict[str, pd.DataFrame] = {}
    for name, spec in specs.items():
        frames = score_frames(forecasts, factors, spec)
        if not frames:
            raise ValueError(f"portfolio {name!r}: no forecasts at horizon {spec.horizon}")
        origins = pd.DatetimeIndex(sorted(set().union(*(set(f["date"]) for f in frames.values()))))
        sessions = _sessions(origins, bars, spec)
        window = _window(bars, sessions[0])
        market = Market.of(window, sessions)  # read once: every run trades on the same prices, spreads, liquidity
        universe = equal_weight_returns(window)
        bench = benchmark_returns(window, benchmark) if benchmark else None
        entry: dict[str, Any] = {"strategy": spec.as_dict(), "test_origins": len(origins),
                                 "sessions": f"{sessions[0].date()} .. {sessions[-1].date()}",
                                 "benchmark": benchmark if bench is not None else None, "forecasters": {}, "factors": {}}
        curves = {}
        for (kind, run), frame in frames.items():
            outcome = _run(frame, market, spec, costs, f"{name}:{run}", universe, bench)
            curve = outcome.pop("nav_curve", None)
            entry[f"{kind}s"][run] = outcome
            if curve is not None:
                curves[_label(kind, run)] = curve
        results[name], navs[name] = entry, pd.DataFrame(curves)
        say(f"portfolio {name}: {len(frames)} runs over {entry['sessions']}")
    return PortfolioEvaluation(results, navs)


def _sessions(origins: pd.DatetimeIndex, bars: pd.DataFrame, spec: Strategy) -> pd.DatetimeIndex:
    """NYSE sessions from the first origin to ``rebalance`` sessions after the last origin's trade (newest bar at most)."""
    every = all_sessions()
    first = int(every.searchsorted(origins[0]))
    last = int(every.searchsorted(origins[-1])) + 1 + int(spec.rebalance)
    newest = int(every.searchsorted(bars["date"].max(), side="right")) - 1
    return every[first : min(last, newest) + 1]


def _window(bars: pd.DataFrame, first: pd.Timestamp) -> pd.DataFrame:
    """The bars from ``BARS_BEFORE`` sessions before ``first``: what the costs' and liquidity's trailing windows read."""
    every = all_sessions()
    start = every[max(int(every.searchsorted(first)) - BARS_BEFORE, 0)]
    return bars[bars["date"] >= start]


def _run(frame: pd.DataFrame, market: Market, spec: Strategy, costs: CostModel, label: str,
         universe: pd.Series, bench: pd.Series | None) -> dict[str, Any]:
    """One backtest's counts, net and gross metrics and USD costs; unavailable (with the reason) without scores."""
    scores = pd.to_numeric(frame[spec.score], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(scores).any():
        return {"available": False, "reason": "no score at any test origin"}
    sim = simulate(frame, None, spec, costs, portfolio=label, market=market)
    returns = sim.returns
    gross = returns.assign(net_return=returns["gross_return"], cost=0.0,
                           nav=(1.0 + returns["gross_return"].astype(float)).cumprod())
    gross_metrics = portfolio_metrics(gross, universe, bench)
    paid = sim.costs.drop(columns="date").astype(float).sum()
    skipped = int((sim.events["event"] == NO_TARGET).sum())
    return {
        "available": True,
        "rebalances": len(sim.costs),
        "rebalances_skipped": skipped,
        "sessions": len(returns),
        "first_session": str(returns["date"].iloc[0]) if len(returns) else None,
        "last_session": str(returns["date"].iloc[-1]) if len(returns) else None,
        "net": portfolio_metrics(returns, universe, bench),
        "gross": {key: gross_metrics.get(key) for key in GROSS_KEYS},
        "costs_usd": {key: round(float(value), 2) for key, value in paid.items()},
        "nav_curve": pd.Series(returns["nav"].to_numpy(dtype=float), index=pd.to_datetime(returns["date"])),
    }


def _label(kind: str, run: str) -> str:
    return run if kind == "forecaster" else f"factor:{run}"


def _runs(entry: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, outcome) of one portfolio's runs: forecasters first, then factors."""
    return [("forecaster", n, o) for n, o in entry["forecasters"].items()] + [
        ("factor", n, o) for n, o in entry["factors"].items()]


def summary_line(name: str, entry: dict[str, Any]) -> str:
    """``portfolio topk (h=1), net annual return / Sharpe: ensemble 3.1% / 0.40, ..., factor:reversal_1 ...``."""
    parts = []
    for kind, run, outcome in _runs(entry):
        net = outcome.get("net") or {}
        annual, sharpe = net.get("annual_return"), net.get("sharpe")
        parts.append(f"{_label(kind, run)} " + ("unavailable" if not outcome.get("available") else
                     f"{'-' if annual is None else f'{annual:.1%}'} / {'-' if sharpe is None else f'{sharpe:.2f}'}"))
    return f"portfolio {name} (h={entry['strategy']['horizon']}), net annual return / Sharpe: " + ", ".join(parts)


def markdown(evaluation: PortfolioEvaluation, plots_dir: Path | None = None) -> str:
    """The report section: per portfolio a table of its runs (net of costs, gross beside) and a NAV plot."""
    lines = [
        "## Portfolios: one strategy on every forecaster and factor", "",
        "Each portfolio (`IBF_PORTFOLIOS`, chosen with `--portfolio`) is backtested on the out-of-sample walk-forward "
        "scores of every member, the ensemble (ranked as the `predictions` table ranks) and each textbook factor, on the "
        "same test origins and bars: targets of origin d trade at the next session's close, IB's commission, fees and "
        "half the spread are charged (`IBF_PORTFOLIO_CAPITAL`, `IBF_PORTFOLIO_SLIPPAGE_BPS`). Returns are annual, net "
        "of costs unless marked gross; excess over the equal-weighted universe (EW) and `IBF_BENCHMARK`. A few dozen "
        "test sessions make every figure noisy: read the differences against the random walk's (`naive`) and the "
        "factors' runs.", "",
    ]
    for name, entry in evaluation.results.items():
        spec = entry["strategy"]
        shown = ", ".join(f"{k} {v}" for k, v in spec.items() if k != "strategy" and v is not None)
        lines += [f"### `{name}`: {spec['strategy']} ({shown})", "",
                  f"Sessions {entry['sessions']} ({entry['test_origins']} test origins); benchmark "
                  f"{entry['benchmark'] or 'not in the data'}.", ""]
        rows = []
        for kind, run, outcome in _runs(entry):
            if not outcome.get("available"):
                rows.append({"run": _label(kind, run), "rebalances": outcome.get("reason")})
                continue
            net = outcome["net"]
            rows.append({"run": _label(kind, run), "rebalances": outcome["rebalances"], "sessions": outcome["sessions"],
                         **{key: net.get(key) for key in TABLE_KEYS}, "sharpe_gross": outcome["gross"].get("sharpe")})
        lines += [_table(rows) if rows else "_no runs_", ""]
        curves = evaluation.nav.get(name)
        if plots_dir is not None and curves is not None and not curves.empty:
            file = f"portfolio_{name}_nav.png"
            _nav_plot(curves, Path(plots_dir) / file, name)
            lines += [f"![{name} net NAV]({quote(Path(plots_dir).name)}/{quote(file)})", ""]
    return "\n".join(lines)


def _nav_plot(curves: pd.DataFrame, target: Path, name: str) -> None:
    """The net NAV of each run: forecasters solid, factors dashed."""
    plt = _pyplot()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
    for run in curves.columns:
        series = curves[run].dropna()
        ax.plot(series.index, series.to_numpy(), linewidth=1, label=run,
                linestyle="--" if run.startswith("factor:") else "-")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_title(f"portfolio {name}: NAV net of costs", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5, loc="upper left", ncol=2)
    fig.autofmt_xdate()
    _save(fig, target)
