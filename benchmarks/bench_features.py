"""Benchmark: the feature pipeline on N symbols x Y years vs a bare loop of the same TA-Lib calls.

The bars come from ``bench_backfill.generate`` (real AAPL/IBM/MSFT paths replayed and rescaled). The baseline
is the floor for any TA-Lib-based pipeline: per symbol, exactly the TA-Lib calls ``compute_features`` makes
(technical, microstructure and cross-asset ``TALIB_CALLS``) on the same contiguous input arrays, outputs
discarded, no numpy/pandas work around them. ``compute_features`` additionally prepares those inputs, turns the
outputs scale-free, computes the non-TA-Lib features (returns, Corwin-Schultz, leave-one-out index, relative
strength, cross-sectional ranks, calendar, news join), cleans (inf -> NaN, forward-fill) and assembles the
DataFrame. Prints best-of-``--repeat`` (default 5) wall times, the ratio, symbols/s, the feature count, the first (cold)
run, the cost of merely writing the output matrix once, and a per-stage breakdown.

    .venv/bin/python benchmarks/bench_features.py --symbols 500 --years 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import best_of  # noqa: E402 (benchmarks/ is the script folder on sys.path)

from benchmarks.bench_backfill import generate  # noqa: E402
from ibf_core.features import Panel, calendar_features, cross_asset, microstructure, technical  # noqa: E402
from ibf_core.features.pipeline import (  # noqa: E402
    _CROSS,
    _PER_SYMBOL,
    FEATURES,
    _clean,
    _join_news,
    compute_features,
    feature_columns,
)


def talib_plans(panel: Panel) -> list[tuple[list, dict]]:
    """Every (TA-Lib calls, input arrays) pair compute_features runs, inputs prepared as it prepares them."""
    bench, _ = cross_asset.benchmark_returns(panel, "SPY")
    return [
        (technical.TALIB_CALLS, technical.talib_inputs(panel)),
        (microstructure.TALIB_CALLS, microstructure.talib_inputs(panel, np.empty((6, panel.n)))),
        (cross_asset.TALIB_CALLS, cross_asset.talib_inputs(panel, bench, np.empty((6, panel.n)))),
    ]


def bare_talib(plans: list[tuple[list, dict]], starts: np.ndarray, counts: np.ndarray) -> None:
    """Only the TA-Lib calls, per symbol, on the same arrays the pipeline slices."""
    for start, count in zip(starts.tolist(), counts.tolist()):
        stop = start + count
        for calls, inputs in plans:
            for call in calls:
                call.function(*(inputs[k][start:stop] for k in call.inputs), **call.params)


def timed(fn):
    begin = time.perf_counter()
    out = fn()
    return time.perf_counter() - begin, out


def write_matrix(n_features: int, n_rows: int) -> None:
    """Allocate and fill a matrix the size of the output: the memory cost any pipeline returning it pays."""
    matrix = np.empty((n_features, n_rows))
    matrix.fill(0.0)


def stage_times(bars) -> dict[str, float]:
    """Wall time of each pipeline stage (one run), to see where the time above the TA-Lib floor goes."""
    marks = {}

    def mark(name, fn):
        begin = time.perf_counter()
        out = fn()
        marks[name] = time.perf_counter() - begin
        return out

    panel, _ = mark("panel (sort check, index maps)", lambda: Panel.from_bars(bars))
    matrix = mark("allocate matrix", lambda: np.empty((len(FEATURES), panel.n)))
    rows = {f.name: matrix[i] for i, f in enumerate(FEATURES)}
    mark("technical (TA-Lib loop + transforms)", lambda: technical.compute(panel, rows))
    mark("returns", lambda: technical.compute_returns(panel, rows))
    mark("microstructure", lambda: microstructure.compute(panel, rows))
    mark("clean per-symbol (inf, ffill)", lambda: _clean(panel, rows, _PER_SYMBOL))
    mark("cross-asset (beta, ranks)", lambda: cross_asset.compute(panel, rows, "SPY"))
    mark("clean cross-asset", lambda: _clean(panel, rows, _CROSS))
    mark("calendar", lambda: calendar_features.compute(panel, rows))
    mark("news (none)", lambda: _join_news(panel, None, rows))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    bars = generate(args.symbols, args.years)
    print(f"data: {args.symbols} symbols x {args.years} years = {len(bars):,} rows "
          f"({bars.date.min().date()}..{bars.date.max().date()})")
    compute_features(bars.head(5000))  # warm caches (NYSE calendar, holiday rules) outside the timings
    t_cold, out = timed(lambda: compute_features(bars))
    assert list(out.columns) == ["symbol", "date", *feature_columns(), "warmup"] and len(out) == len(bars)
    del out
    panel, _ = Panel.from_bars(bars)
    plans = talib_plans(panel)
    n_calls = [len(calls) for calls, _ in plans]

    t_bare, _ = best_of(args.repeat, lambda: bare_talib(plans, panel.starts, panel.counts))
    t_pipe, _ = best_of(args.repeat, lambda: compute_features(bars))
    t_matrix, _ = best_of(args.repeat, lambda: write_matrix(len(FEATURES), len(bars)))
    print(f"features: {len(feature_columns())}; TA-Lib calls per symbol: {sum(n_calls)} "
          f"({n_calls[0]} technical, {n_calls[1]} microstructure, {n_calls[2]} cross-asset)")
    print(f"{'bare TA-Lib loop':34s} {t_bare:8.3f} s  {args.symbols / t_bare:8,.0f} symbols/s  1.00x")
    print(f"{'compute_features':34s} {t_pipe:8.3f} s  {args.symbols / t_pipe:8,.0f} symbols/s  "
          f"{t_pipe / t_bare:5.2f}x")
    print(f"{'compute_features, first run (cold)':34s} {t_cold:8.3f} s  {args.symbols / t_cold:8,.0f} symbols/s  "
          f"{t_cold / t_bare:5.2f}x")
    print(f"{'reference: write the output once':34s} {t_matrix:8.3f} s  "
          f"({len(FEATURES)} x {len(bars):,} float64 = {len(FEATURES) * len(bars) * 8 / 2**20:,.0f} MiB)")
    stages = stage_times(bars)
    print("stages of one more compute_features run (s):")
    for name, seconds in stages.items():
        print(f"  {name:38s} {seconds:7.3f}")
    t_technical, _ = best_of(args.repeat, lambda: bare_talib(plans[:1], panel.starts, panel.counts))
    technical_stage = stages["technical (TA-Lib loop + transforms)"]
    print(f"technical stage vs its own bare TA-Lib calls: {technical_stage:.3f} s / {t_technical:.3f} s = "
          f"{technical_stage / t_technical:.2f}x")


if __name__ == "__main__":
    main()
