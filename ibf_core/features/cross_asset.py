"""Cross-asset features: beta/correlation to a benchmark, relative strength and cross-sectional ranks.

The benchmark is the configured symbol (e.g. SPY) when the frame holds it, otherwise an equal-weighted index
of the universe built per date from the symbols' daily log returns, leave-one-out (a symbol is not compared
with itself). Every cross-sectional statistic is computed per date on a ``(dates, symbols)`` grid, so row d
only ever sees data of date d and earlier.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import talib

from ibf_core.features import Feature, Panel, TalibCall, nan_aware, run_talib
from ibf_core.features.technical import log_returns

DEFAULT_BENCHMARK = "SPY"
BETA_WINDOW = 60
# Up to 10 missing benchmark days (a halted benchmark, a symbol trading on a day the benchmark has no bar).
BETA_MIN_COUNT = BETA_WINDOW - 10
RELATIVE_HORIZONS = (5, 20)
# Pairwise-complete window sums of (r, b): count, sum r, sum b, sum r^2, sum b^2, sum r*b.
_SUMS = ("count", "x", "y", "xx", "yy", "xy")
TALIB_CALLS: list[TalibCall] = [
    TalibCall(talib.SUM, (name,), (f"_sum_{name}",), {"timeperiod": BETA_WINDOW}) for name in _SUMS
]
# Feature -> its cross-sectional percentile rank column; the source features are computed earlier.
RANKED = {
    "logret_20": "rank_ret_20",
    "rsi_14": "rank_rsi_14",
    "hv_20": "rank_hv_20",
    "volume_z_20": "rank_volume_z_20",
    "amihud_20": "rank_amihud_20",
}


def _f(name: str, description: str, min_history: int, lookback: int = 0) -> Feature:
    return Feature(name, description, "cross_asset", min_history, lookback=lookback)


def features(source: Mapping[str, Feature]) -> list[Feature]:
    """Registry entries; ranks inherit the history needs and bar inputs of the feature they rank."""
    return [
        _f("beta_60", "Beta of daily log returns to the benchmark over 60 sessions (benchmark: the configured "
           "symbol when present, else the leave-one-out equal-weighted universe)", BETA_WINDOW),
        _f("corr_60", "Correlation of daily log returns with the benchmark over 60 sessions", BETA_WINDOW),
        *(_f(f"rel_strength_{k}", f"{k}-session log return minus the universe mean that date", k + 1)
          for k in RELATIVE_HORIZONS),
        *(Feature(rank, f"Cross-sectional percentile rank (0..1] of {name} that date", "cross_asset",
                  source[name].min_history, lookback=source[name].lookback, inputs=source[name].inputs)
          for name, rank in RANKED.items()),
    ]


def benchmark_returns(panel: Panel, benchmark: str | None) -> tuple[np.ndarray, str]:
    """The benchmark's daily log return aligned to every row, and what the benchmark is."""
    returns = log_returns(panel)
    hits = np.flatnonzero(panel.symbols == benchmark) if benchmark else np.array([], dtype=np.int64)
    if len(hits):
        start, count = panel.starts[hits[0]], panel.counts[hits[0]]
        by_day = np.full(len(panel.days), np.nan)
        by_day[panel.day[start:start + count]] = returns[start:start + count]
        return panel.by_date(by_day), str(benchmark)
    filled, own = nan_aware(returns)
    total = panel.by_date(date_sums(panel, filled))
    n_others = panel.by_date(date_sums(panel, own))
    # Leave one out: the index a symbol is compared with excludes the symbol itself.
    total -= filled
    n_others -= own
    with np.errstate(divide="ignore", invalid="ignore"):
        total /= n_others
    total[n_others <= 0] = np.nan
    return total, "equal-weighted universe (leave-one-out)"


def date_sums(panel: Panel, values: np.ndarray) -> np.ndarray:
    """Per-date sum of ``values`` over all symbols (NaN-free input), in one O(n) pass."""
    return np.bincount(panel.day, weights=values, minlength=len(panel.days))


def cross_sectional_mean(panel: Panel, values: np.ndarray, min_count: int = 2) -> np.ndarray:
    """Per-date mean of the finite ``values`` (NaN for dates with fewer than ``min_count``)."""
    filled, valid = nan_aware(values)
    count = date_sums(panel, valid)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = date_sums(panel, filled) / count
    mean[count < min_count] = np.nan
    return mean


def talib_inputs(panel: Panel, bench: np.ndarray, work: np.ndarray) -> dict[str, np.ndarray]:
    """Zero-filled symbol/benchmark returns where both are known, their squares and product (``work``: (6, n))."""
    returns = log_returns(panel)
    count, x, y, xx, yy, xy = work
    both = np.isfinite(returns) & np.isfinite(bench)
    count[:] = both
    np.copyto(x, returns)
    np.copyto(y, bench)
    missing = ~both
    x[missing] = 0.0
    y[missing] = 0.0
    np.multiply(x, x, out=xx)
    np.multiply(y, y, out=yy)
    np.multiply(x, y, out=xy)
    return dict(zip(_SUMS, work))


def compute(panel: Panel, out: Mapping[str, np.ndarray], benchmark: str | None = DEFAULT_BENCHMARK) -> str:
    """Fill the cross-asset rows of ``out`` (the ranked source rows must be final); returns the benchmark used."""
    bench, label = benchmark_returns(panel, benchmark)
    block = panel.scratch(2 * len(_SUMS))
    inputs = talib_inputs(panel, bench, block[: len(_SUMS)])
    sums = dict(zip(_SUMS, block[len(_SUMS):]))
    run_talib(TALIB_CALLS, inputs, panel.starts, panel.counts, {f"_sum_{k}": v for k, v in sums.items()})
    _beta_corr(sums, out["beta_60"], out["corr_60"])
    for k in RELATIVE_HORIZONS:
        mean = panel.by_date(cross_sectional_mean(panel, out[f"logret_{k}"]), out=out[f"rel_strength_{k}"])
        np.subtract(out[f"logret_{k}"], mean, out=mean)
    for name, rank in RANKED.items():
        rank_by_date(panel, out[name], out[rank])
    return label


def _beta_corr(sums: dict[str, np.ndarray], beta: np.ndarray, corr: np.ndarray) -> None:
    """beta = cov / var_b and corr = cov / (sd_r sd_b) from window sums, in place (sums are consumed)."""
    count, sx, sy, sxx, syy, sxy = (sums[k] for k in _SUMS)
    with np.errstate(divide="ignore", invalid="ignore"):
        count[count < BETA_MIN_COUNT] = np.nan
        # A flat benchmark has no beta: its centered sum of squares is then rounding residue, not 0.
        flat_level = syy * 1e-12
        # Centered sums: S_ab - S_a S_b / n (the 1/(n-1) factors cancel in both ratios).
        scale = np.divide(sy, count)
        sxy -= sx * scale
        syy -= sy * scale
        np.divide(sx, count, out=scale)
        sxx -= sx * scale
        syy[syy <= flat_level] = np.nan
        np.divide(sxy, syy, out=beta)
        np.multiply(sxx, syy, out=sxx)
        np.sqrt(sxx, out=sxx)
        np.divide(sxy, sxx, out=corr)


def percentile_rank(grid: np.ndarray) -> np.ndarray:
    """Per-row percentile rank in (0, 1] of the finite values (ties share their average rank), NaN elsewhere.

    As ``DataFrame.rank(axis=1, pct=True)``, but about twice as fast: each value becomes an order-preserving
    int64 whose lowest bits are replaced by its column, so one plain row sort yields both the order and where
    each value came from. Values closer than 2^(log2 columns) units in the last place (relative ~1e-13 for
    500 symbols) therefore count as ties.
    """
    rows, cols = grid.shape
    valid = np.isfinite(grid)
    bits = _column_bits(cols)
    key = _order_keys(grid, valid, bits, np.arange(cols, dtype=np.int64))
    key.sort(axis=1)
    column, position = _sorted_positions(key, bits, np.count_nonzero(valid, axis=1))
    ranks = np.empty(rows * cols)
    ranks[(np.arange(rows, dtype=np.int64) * cols)[:, None] + column] = position
    ranks = ranks.reshape(rows, cols)
    ranks[~valid] = np.nan
    return ranks


def rank_by_date(panel: Panel, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``percentile_rank`` of each date's cross-section of ``values`` (one per row), written into ``out`` by row.

    The same keys, sort and ties as ``percentile_rank(panel.wide(values))`` (identical numbers), without the
    float grids: the keys are made per row and moved into the ``(dates, symbols)`` grid once (a transpose when
    every symbol has a bar every date), and after the sort each valid slot is written straight to its row.
    """
    days, cols = len(panel.days), panel.n_symbols
    valid = np.isfinite(values)
    bits = _column_bits(cols)
    keys = _order_keys(values, valid, bits, panel.sym)
    full = panel.n == days * cols  # rows are (symbol, date) pairs: every cell has a row
    if full:
        grid = np.ascontiguousarray(keys.reshape(cols, days).T)
    else:
        grid = np.full((days, cols), np.iinfo(np.int64).max)  # absent or invalid: after every finite value
        grid.reshape(-1)[panel.cells] = keys
    del keys
    grid.sort(axis=1)
    # valid values per date
    count = np.count_nonzero(valid.reshape(cols, days), axis=0) if full else np.bincount(panel.day[valid], minlength=days)
    column, rank = _sorted_positions(grid, bits, count)
    if full:
        column *= days
        column += np.arange(days, dtype=np.int64)[:, None]  # row = symbol x dates + date
        target = column
    else:
        column += (np.arange(days, dtype=np.int64) * cols)[:, None]
        target = panel.row_of_cell(column.reshape(-1)).reshape(days, cols)
    if count.min(initial=cols) == cols:  # every value valid: no slot to leave out
        out[target.reshape(-1)] = rank.reshape(-1)
        return out
    out.fill(np.nan)
    slots = np.arange(cols)[None, :] < count[:, None]  # the first count[d] sorted slots hold the valid values
    out[target[slots]] = rank[slots]
    return out


def _column_bits(cols: int) -> int:
    return max(1, (cols - 1).bit_length())


def _order_keys(values: np.ndarray, valid: np.ndarray, bits: int, column: np.ndarray) -> np.ndarray:
    """Order-preserving int64 keys of ``values`` (non-finite: +inf) with the lowest ``bits`` bits = ``column``."""
    key = np.add(values, 0.0, dtype=np.float64)  # + 0.0 turns -0.0 into 0.0
    np.copyto(key, np.inf, where=~valid)  # (np.where with a scalar is several times slower)
    key = key.view(np.int64)
    sign = np.right_shift(key, 63)  # -1 for negative floats: reverse their bit order
    sign &= np.int64(0x7FFFFFFFFFFFFFFF)
    key ^= sign
    key &= ~np.int64((1 << bits) - 1)
    key |= column
    return key


def _sorted_positions(key: np.ndarray, bits: int, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From row-sorted keys: (each slot's column, its percentile rank among the row's ``count`` valid values).

    ``key`` is consumed. Ties (equal value parts among a row's valid slots) share the mean of the first and last
    position of their run. Slots past a row's ``count`` (non-finite values) get ranks that mean nothing.
    """
    rows, cols = key.shape
    column = key & np.int64((1 << bits) - 1)
    key >>= bits  # the value part, for ties
    with np.errstate(divide="ignore", invalid="ignore"):
        rank = np.arange(1, cols + 1, dtype=np.float64)[None, :] / count[:, None]
    ties = key[:, 1:] == key[:, :-1]
    if count.min(initial=cols) < cols:
        ties &= np.arange(1, cols)[None, :] < count[:, None]  # both slots valid: non-finite values never tie
    later = np.flatnonzero(ties)  # (row, slot - 1) of every slot equal to the slot before it
    if len(later):
        row, slot = np.divmod(later, cols - 1)
        slot += 1
        new_run = np.ones(len(later), dtype=bool)
        # a run continues through consecutive tied slots of one row (the flat index also continues from one
        # row's last slot to the next row's first)
        new_run[1:] = (later[1:] != later[:-1] + 1) | (row[1:] != row[:-1])
        run = np.cumsum(new_run) - 1
        first = slot[new_run] - 1  # the run's first slot (the one the first tie equals)
        last = slot[np.append(new_run[1:], True)]
        mean = ((first + 1).astype(np.float64) + (last + 1)) / 2.0  # positions are 1-based
        run_row = row[new_run]
        with np.errstate(divide="ignore", invalid="ignore"):
            rank[run_row, first] = mean / count[run_row]
            rank[row, slot] = mean[run] / count[row]
    return column, rank
