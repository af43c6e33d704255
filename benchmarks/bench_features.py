"""Benchmark: the feature pipeline on N symbols x Y years vs a bare loop of the same TA-Lib calls.

The bars come from ``bench_backfill.generate`` (real AAPL/IBM/MSFT paths replayed and rescaled). The baseline
is the floor for any TA-Lib-based pipeline: per symbol, exactly the TA-Lib calls ``compute_features`` makes
(technical, microstructure and cross-asset ``TALIB_CALLS``) on the same contiguous input arrays, outputs
discarded, no numpy/pandas work around them. ``compute_features`` additionally prepares those inputs, turns the
outputs scale-free, computes the non-TA-Lib features (returns, Corwin-Schultz, leave-one-out index, relative
strength, cross-sectional ranks, calendar, news join), cleans (inf -> NaN, forward-fill) and assembles the
DataFrame. Prints best-of-``--repeat`` (default 5) wall times with the process's peak RSS during each measured
path, the ratio, symbols/s, the feature count, the first (cold) run, two costs any pipeline returning the same
frame pays (writing the output matrix once; the row sorts of the five cross-sectional ranks), the best process
CPU times of the same paths (on a shared machine wall time also counts waiting for a core), best-of times of
the technical, microstructure and cross-asset stages alone, and every stage of compute_features (best of the
repeats, from the pipeline's stage marks).

    .venv/bin/python benchmarks/bench_features.py --symbols 500 --years 10

Peak RSS is the process's high-water mark while the path ran (reset through ``/proc/self/clear_refs`` before
each; where that is not allowed, the process's peak so far, marked ``*``), then in parentheses what the path
added to the RSS the process had when it started: the peak includes the generated bars, and from the bare loop
on the panel and the TA-Lib inputs the bare loop reads (the ``process before`` line).
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import best_of  # noqa: E402 (benchmarks/ is the script folder on sys.path)

from benchmarks.bench_backfill import generate  # noqa: E402
from ibf_core.features import Panel, cross_asset, microstructure, technical  # noqa: E402
from ibf_core.features.pipeline import (  # noqa: E402
    _PER_SYMBOL,
    FEATURES,
    _clean,
    _compute,
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


def _reset_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False where not allowed.

    Freed heap memory glibc still holds is returned first, so the peak is what the path itself needs.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_mib(field: str) -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def with_peak(fn):
    """(fn's value, (the process's peak RSS in MiB while it ran, how much of it the path added), whether the
    peak was reset before it)."""
    reset = _reset_peak()
    before = _rss_mib("VmRSS")
    out = fn()
    peak = _rss_mib("VmHWM")
    return out, (peak, peak - before), reset


def rank_sorts(n_dates: int, n_symbols: int, ranks: int) -> None:
    """The row sorts of ``ranks`` (dates, symbols) int64 key grids: what any exact per-date ranking pays."""
    keys = np.random.default_rng(0).integers(0, 1 << 62, size=(n_dates, n_symbols))
    for _ in range(ranks):
        np.sort(keys, axis=1)


def write_matrix(n_features: int, n_rows: int) -> None:
    """Allocate and fill a matrix the size of the output: the memory cost any pipeline returning it pays."""
    matrix = np.empty((n_features, n_rows))
    matrix.fill(0.0)


def stage_times(bars, repeat: int) -> dict[str, float]:
    """Wall time of every stage of ``compute_features`` (the best of ``repeat`` runs per stage)."""
    runs = []
    for _ in range(repeat):
        marks: dict[str, float] = {}
        _compute(bars, None, cross_asset.DEFAULT_BENCHMARK, None, None, with_support=False, marks=marks)
        runs.append(marks)
    return {name: min(run[name] for run in runs) for name in runs[0]}


def module_times(bars, repeat: int) -> dict[str, tuple[float, tuple[float, float]]]:
    """Best-of wall times of the technical, microstructure and cross-asset stages alone, on a prepared panel,
    with the peak RSS of one more call (and what it added)."""
    panel, _ = Panel.from_bars(bars)
    matrix = np.empty((len(FEATURES), panel.n))
    rows = {f.name: matrix[i] for i, f in enumerate(FEATURES)}
    technical.compute(panel, rows)
    technical.compute_returns(panel, rows)
    microstructure.compute(panel, rows)
    _clean(panel, rows, _PER_SYMBOL)
    stages = {
        "technical": lambda: technical.compute(panel, rows),
        "microstructure": lambda: microstructure.compute(panel, rows),
        "cross-asset": lambda: cross_asset.compute(panel, rows, cross_asset.DEFAULT_BENCHMARK),
    }
    return {name: (best_of(repeat, fn)[0], with_peak(fn)[1]) for name, fn in stages.items()}


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
    def first_run() -> float:
        seconds, out = timed(lambda: compute_features(bars))
        assert list(out.columns) == ["symbol", "date", *feature_columns(), "warmup"] and len(out) == len(bars)
        return seconds

    t_cold, rss_cold, exact = with_peak(first_run)
    panel, _ = Panel.from_bars(bars)
    plans = talib_plans(panel)
    n_calls = [len(calls) for calls, _ in plans]
    rss_before = _rss_mib("VmRSS")

    cpu_best: dict[str, float] = {}

    def measure(name: str, fn):
        """(best-of wall time, peak RSS of one more call whose result is dropped at once); the best process CPU
        time goes to ``cpu_best`` (on a shared machine wall time also counts waiting for a core)."""
        def dropped() -> None:  # best_of keeps the last value while it makes the next: keep none
            begin = time.process_time()
            fn()
            cpu_best[name] = min(cpu_best.get(name, float("inf")), time.process_time() - begin)

        seconds, _ = best_of(args.repeat, dropped)
        _, peak, _ = with_peak(dropped)
        return seconds, peak

    t_bare, rss_bare = measure("bare", lambda: bare_talib(plans, panel.starts, panel.counts))
    t_pipe, rss_pipe = measure("pipeline", lambda: compute_features(bars))
    t_matrix, rss_matrix = measure("matrix", lambda: write_matrix(len(FEATURES), len(bars)))
    t_sorts, rss_sorts = measure("sorts", lambda: rank_sorts(len(panel.days), panel.n_symbols, len(cross_asset.RANKED)))
    star = "" if exact else "*"

    def rss(peak: tuple[float, float]) -> str:
        return f"{peak[0]:7,.0f} MiB peak{star} (+{peak[1]:5,.0f})"

    print(f"features: {len(feature_columns())}; TA-Lib calls per symbol: {sum(n_calls)} "
          f"({n_calls[0]} technical, {n_calls[1]} microstructure, {n_calls[2]} cross-asset)")
    print(f"{'process before (bars, panel, inputs)':36s} {'':8s}    {rss_before:7,.0f} MiB RSS")
    print(f"{'bare TA-Lib loop':36s} {t_bare:8.3f} s  {rss(rss_bare)}  {args.symbols / t_bare:7,.0f} symbols/s  1.00x")
    print(f"{'compute_features':36s} {t_pipe:8.3f} s  {rss(rss_pipe)}  {args.symbols / t_pipe:7,.0f} symbols/s  "
          f"{t_pipe / t_bare:5.2f}x")
    print(f"{'compute_features, first run (cold)':36s} {t_cold:8.3f} s  {rss(rss_cold)}  "
          f"{args.symbols / t_cold:7,.0f} symbols/s  {t_cold / t_bare:5.2f}x")
    print(f"{'reference: write the output once':36s} {t_matrix:8.3f} s  {rss(rss_matrix)}  "
          f"({len(FEATURES)} x {len(bars):,} float64 = {len(FEATURES) * len(bars) * 8 / 2**20:,.0f} MiB)")
    print(f"{'reference: the rank row sorts':36s} {t_sorts:8.3f} s  {rss(rss_sorts)}  "
          f"({len(cross_asset.RANKED)} x {len(panel.days):,} dates x {panel.n_symbols} symbols, int64)")
    print(f"best process CPU time (s): bare {cpu_best['bare']:.3f}, compute_features {cpu_best['pipeline']:.3f} "
          f"({cpu_best['pipeline'] / cpu_best['bare']:.2f}x), write the output {cpu_best['matrix']:.3f}, "
          f"rank sorts {cpu_best['sorts']:.3f}")
    modules = module_times(bars, args.repeat)
    print(f"stages alone (a prepared panel; inputs computed once), best of {args.repeat}:")
    for name, (seconds, peak) in modules.items():
        print(f"  {name:34s} {seconds:8.3f} s  {rss(peak)}")
    stages = stage_times(bars, args.repeat)
    print(f"every stage of compute_features, best of {args.repeat} (s; sum {sum(stages.values()):.3f}):")
    for name, seconds in stages.items():
        print(f"  {name:40s} {seconds:7.3f}")
    t_technical, _ = best_of(args.repeat, lambda: bare_talib(plans[:1], panel.starts, panel.counts))
    print(f"technical stage vs its own bare TA-Lib calls: {modules['technical'][0]:.3f} s / {t_technical:.3f} s = "
          f"{modules['technical'][0] / t_technical:.2f}x")


if __name__ == "__main__":
    main()
