"""Markdown walk-forward evaluation report with small PNG plots (forecast vs realized, rank IC, calibration)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from ibf_core.evaluation.metrics import cross_sectional_ic, skill_verdict
from ibf_core.report import markdown_table

# Heavy imports (matplotlib) stay inside the functions that need them: importing this module loads none of them.

TABLE_METRICS = (
    "n", "mae", "rel_mae_vs_naive", "oos_r2", "da", "da_pvalue", "dm_stat", "dm_pvalue",
    "rank_ic_mean", "rank_ic_t", "coverage_80", "coverage_95", "topk_spread_net",
)  # fmt: skip
NAIVE_MEMBERS = ("naive", "random_walk")
MISSING = "–"
FIGSIZE = (5, 3)
DPI = 80
SCATTER_POINTS = 2000

HOW_TO_READ = """## How to read this

Daily stock returns are close to unpredictable. The best published daily cross-sectional models reach an
information coefficient (IC) of about 0.04-0.05 (Qlib's CSI300 benchmarks), and under a Gaussian approximation
directional accuracy is DA = 1/2 + arcsin(IC)/pi, so IC 0.05 is only about 51.6% DA; claims of 58-65% DA almost
always come from leakage. A good model's error relative to the random walk (rel_mae_vs_naive) is about 1.00
(0.98-1.02). `dm_pvalue` is the one-sided Diebold-Mariano test (absolute loss, Newey-West variance with h-1 lags,
Harvey-Leybourne-Newbold correction) that the member beats the random walk; `da_pvalue` is a one-sided binomial test
on non-overlapping origins; `rank_ic_t` is the Newey-West t-statistic of the mean per-date Rank IC. Skill at a
horizon is claimed only when DM p < 0.05 and the rank-IC t-stat exceeds 2; otherwise the verdict says plainly that
no member shows an edge over a random walk. Empirical interval coverage should sit within 2-3 points of the
nominal 80% and 95%, and `topk_spread_net` is the long-top-k minus short-bottom-k return per rebalance after costs.
"""


def _cell(value: object) -> object:
    """A table cell: None / NaN as an en dash, floats to 4 significant digits, the rest as is."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), ".4g") if math.isfinite(float(value)) else MISSING
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _table(rows: list[dict]) -> str:
    frame = pd.DataFrame([{key: _cell(value) for key, value in row.items()} for row in rows])
    return markdown_table(frame, max_rows=max(len(frame), 1), floatfmt=".4g")


def _horizon_sort_key(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), str(key))
    except (TypeError, ValueError):
        return (1, 0.0, str(key))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)) or "x"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, target: Path) -> None:
    plt = _pyplot()
    try:
        fig.tight_layout()
        fig.savefig(target, dpi=DPI)
    finally:
        plt.close(fig)


def _scatter_plot(sub: pd.DataFrame, members: list[str], target: Path, h: str) -> bool:
    """Forecast vs realized, one small panel per non-naive member."""
    panels = [m for m in members if not sub[sub["member"] == m].empty]
    if not panels:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=FIGSIZE, dpi=DPI, squeeze=False)
    for ax, member in zip(axes[0], panels):
        points = sub[sub["member"] == member]
        if len(points) > SCATTER_POINTS:
            points = points.sample(SCATTER_POINTS, random_state=0)
        ax.scatter(points["pred"], points["realized"], s=3, alpha=0.4)
        low = float(np.nanmin([points["pred"].min(), points["realized"].min()]))
        high = float(np.nanmax([points["pred"].max(), points["realized"].max()]))
        ax.plot([low, high], [low, high], color="grey", linewidth=0.7, linestyle="--")
        ax.set_title(member, fontsize=7)
        ax.set_xlabel("forecast", fontsize=6)
        ax.tick_params(labelsize=5)
        ax.xaxis.set_major_locator(MaxNLocator(4))
    axes[0][0].set_ylabel("realized", fontsize=6)
    fig.suptitle(f"h={h}: forecast vs realized", fontsize=8)
    _save(fig, target)
    return True


def _cumulative_ic_plot(sub: pd.DataFrame, members: list[str], target: Path, h: str) -> bool:
    """Cumulative per-date Rank IC of each member."""
    series = {}
    for member in members:
        ic = cross_sectional_ic(sub[sub["member"] == member], "pred", "realized", "spearman")
        if not ic.empty:
            series[member] = ic.cumsum()
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for member, cumulative in series.items():
        try:
            x = pd.to_datetime(cumulative.index)
        except (TypeError, ValueError):
            x = np.arange(len(cumulative))
        ax.plot(x, cumulative.to_numpy(), linewidth=1, label=member)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_title(f"h={h}: cumulative Rank IC", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper left")
    fig.autofmt_xdate()
    _save(fig, target)
    return True


def _calibration_plot(members: dict[str, dict], target: Path, h: str) -> bool:
    """Nominal vs empirical coverage of the 80% and 95% intervals, with the diagonal."""
    nominal = [0.8, 0.95]
    rows = {}
    for member, metrics in members.items():
        empirical = [(metrics or {}).get("coverage_80"), (metrics or {}).get("coverage_95")]
        if any(value is not None for value in empirical):
            rows[member] = [np.nan if value is None else float(value) for value in empirical]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    ax.plot([0.5, 1.0], [0.5, 1.0], color="grey", linewidth=0.7, linestyle="--", label="ideal")
    for member, empirical in rows.items():
        ax.plot(nominal, empirical, marker="o", markersize=3, linewidth=1, label=member)
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("nominal coverage", fontsize=7)
    ax.set_ylabel("empirical coverage", fontsize=7)
    ax.set_title(f"h={h}: interval calibration", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="lower right")
    _save(fig, target)
    return True


def _horizon_forecasts(forecasts: pd.DataFrame, h: str) -> pd.DataFrame:
    needed = {"member", "horizon", "pred", "realized", "date", "symbol"}
    if forecasts is None or forecasts.empty or not needed.issubset(forecasts.columns):
        return pd.DataFrame(columns=sorted(needed))
    sub = forecasts[forecasts["horizon"].astype(str) == str(h)]
    if sub.empty:
        try:
            sub = forecasts[pd.to_numeric(forecasts["horizon"], errors="coerce") == float(h)]
        except (TypeError, ValueError):
            pass
    sub = sub.copy()
    sub["pred"] = pd.to_numeric(sub["pred"], errors="coerce")
    sub["realized"] = pd.to_numeric(sub["realized"], errors="coerce")
    return sub[np.isfinite(sub["pred"]) & np.isfinite(sub["realized"])]


def write_report(
    results: dict,
    forecasts: pd.DataFrame,
    path: Path,
    title: str = "ibf walk-forward evaluation",
    extra_sections: list[str] | None = None,
) -> Path:
    """Write the markdown evaluation report to ``path`` and its PNG plots to ``<stem>_plots/`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = path.parent / f"{path.stem}_plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]

    config = results.get("config") or {}
    lines += ["## Configuration", ""]
    if isinstance(config, dict) and config:
        lines += [_table([{"setting": key, "value": value} for key, value in config.items()]), ""]
    else:
        lines += ["_no configuration recorded_", ""]

    horizons = results.get("horizons") or {}
    for h in sorted(horizons, key=_horizon_sort_key):
        members = horizons[h] or {}
        lines += [f"## Horizon h={h}", ""]
        rows = [
            {"member": name, **{key: (metrics or {}).get(key) for key in TABLE_METRICS}}
            for name, metrics in members.items()
        ]
        lines += [_table(rows) if rows else "_no members_", ""]
        try:
            verdict = skill_verdict(members, h=int(float(h)))
        except (TypeError, ValueError):
            verdict = skill_verdict(members, h=0)
            verdict["statement"] = verdict["statement"].replace("h=0", f"h={h}", 1)
        lines += [f"**{verdict['statement']}**", ""]

        sub = _horizon_forecasts(forecasts, h)
        modelled = [m for m in dict.fromkeys(list(members) + list(sub["member"].unique())) if m not in NAIVE_MEMBERS]
        slug = _slug(h)
        plots = [
            ("forecast vs realized", f"h{slug}_scatter.png", lambda t: _scatter_plot(sub, modelled, t, h)),
            ("cumulative rank IC", f"h{slug}_rank_ic.png", lambda t: _cumulative_ic_plot(sub, modelled, t, h)),
            ("interval calibration", f"h{slug}_calibration.png", lambda t: _calibration_plot(members, t, h)),
        ]
        for label, name, draw in plots:
            target = plots_dir / name
            if draw(target):
                lines += [f"![h={h} {label}]({quote(plots_dir.name)}/{quote(name)})", ""]
            else:
                lines += [f"_no data for the {label} plot_", ""]

    lines += [HOW_TO_READ]
    for section in extra_sections or []:
        lines += [section.rstrip(), ""]
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
