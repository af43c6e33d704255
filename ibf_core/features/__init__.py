"""Feature library: bars (many symbols, long format) -> the model-ready feature matrix (pure pandas/numpy/TA-Lib).

This module holds what every feature module shares:

* :class:`Feature`, one registry entry;
* :class:`Panel`, the bars sorted by symbol then date as contiguous numpy arrays, with the index maps that let
  each module work vectorized over the whole frame (lags that never cross a symbol boundary, and a
  ``(dates, symbols)`` grid for per-date cross-sections);
* :class:`TalibCall` / :func:`run_talib`: TA-Lib is 1-D, so every trailing-window computation is one TA-Lib
  call per symbol on a contiguous slice, written straight into the caller's output row. A window therefore
  never crosses into another symbol and a symbol's values never depend on another symbol's bars;
* the *input flags* (:meth:`Panel.input_missing`): per bar, whether its volume and its intraday range (open,
  high, low) are real measurements. A close-only file (open = high = low = close), a file without volume
  (NULL volume) or a constant volume column gives bars without them; a feature that reads a missing input is
  NULL wherever its own window holds such a bar (:attr:`Feature.inputs`), never 0 and never an error.

The public API (``compute_features``, ``FEATURES``, ...) lives in :mod:`ibf_core.features.pipeline` and is
re-exported here lazily (the feature modules import this package first).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

Group = Literal["technical", "returns", "microstructure", "cross_asset", "calendar", "news", "fundamentals", "macro"]
# A recursive indicator (EMA, Wilder smoothing) never forgets its seed; after seed_settle() sessions the seed's
# weight is below SEED_TOLERANCE, so computing on a look-back window equals computing on the full history.
SEED_TOLERANCE = 1e-9
TRADING_DAYS_PER_YEAR = 252
_NS_PER_DAY = 86_400_000_000_000
# Bar inputs a feature may read besides the close (the close and adj_close are always measured).
VOLUME = "volume"
RANGE = "range"  # the bar's open, high and low
INPUT_NAMES = {VOLUME: "volume", RANGE: "open/high/low"}
# A volume repeated this many bars in a row (or repeated from a symbol's first bar on) is a filler, not a
# measurement: real daily volumes never stay exactly equal for a week.
CONSTANT_VOLUME_RUN = 5


@dataclass(frozen=True)
class Feature:
    """One registered feature column."""

    name: str
    description: str
    group: Group
    min_history: int  # bars of the symbol (current one included) before the value is defined
    future_known: bool = False  # known in advance for future dates (calendar): usable as a future covariate
    lookback: int = 0  # bars that fully determine the value (> min_history for recursive indicators); 0 = min_history
    ffill: bool = True  # interior gaps are forward-filled (news is joined as-is)
    inputs: frozenset[str] = frozenset()  # bar inputs it reads besides the close: VOLUME, RANGE

    @property
    def history_needed(self) -> int:
        return max(self.lookback, self.min_history)


def seed_settle(alpha: float, stages: int = 1, tolerance: float = SEED_TOLERANCE) -> int:
    """Sessions until ``stages`` stacked exponential smoothers with weight ``alpha`` have forgotten their seeds.

    One smoother's seed weighs (1-alpha)^t after t sessions; k stacked ones (ADX smooths a Wilder-smoothed DX)
    weigh about C(t+k-1, k-1) (1-alpha)^t.
    """
    t = math.ceil(math.log(tolerance) / math.log(1.0 - alpha))
    while math.comb(t + stages - 1, stages - 1) * (1.0 - alpha) ** t > tolerance:
        t += 1
    return t


# finish(result, the symbol's input slices, destination slice): writes a transformed single output.
Finish = Callable[[np.ndarray, Mapping[str, np.ndarray], np.ndarray], Any]


@dataclass(frozen=True)
class TalibCall:
    """One TA-Lib function applied per symbol: input arrays by name, one destination row name per output.

    ``finish`` (single-output calls) replaces the plain copy into the destination with a transform done
    while the symbol's slice is still in cache (e.g. close / SMA - 1), saving full passes over the frame.
    """

    function: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # a feature name or a scratch name "_..."
    params: Mapping[str, Any] = field(default_factory=dict)
    finish: Finish | None = None

    def __post_init__(self) -> None:
        # talib wraps each function to accept pandas/polars Series (two generator scans of the arguments per
        # call); the inputs here are always numpy arrays, so call TA-Lib's own function (the same results,
        # 1-3 us less per call: ~0.05 s of the 24,500 calls for 500 symbols).
        object.__setattr__(self, "function", getattr(self.function, "__wrapped__", self.function))


def run_talib(calls: list[TalibCall], inputs: Mapping[str, np.ndarray], starts: np.ndarray, counts: np.ndarray,
              dest: Mapping[str, np.ndarray]) -> None:
    """Call every TA-Lib function per symbol; write its output(s) into ``dest[name][rows of the symbol]``."""
    plan = [(call.function, call.inputs, [dest[o] for o in call.outputs], call.params, call.finish) for call in calls]
    for start, count in zip(starts.tolist(), counts.tolist()):
        stop = start + count
        sliced = {key: values[start:stop] for key, values in inputs.items()}
        for function, names, rows, params, finish in plan:
            result = function(*(sliced[k] for k in names), **params)
            if finish is not None:
                finish(result, sliced, rows[0][start:stop])
            elif len(rows) == 1:
                rows[0][start:stop] = result
            else:
                for row, values in zip(rows, result):
                    row[start:stop] = values


def scratch_names(calls: list[TalibCall]) -> list[str]:
    """Outputs that are intermediate (``_name``) rather than feature rows."""
    return [name for call in calls for name in call.outputs if name.startswith("_")]


def nan_aware(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x with non-finite values as 0, 1.0 where x is finite): TA-Lib's running sums must never see a NaN
    (it would poison every later window), so NaN-aware window means are SUM(x0) / SUM(valid)."""
    valid = np.isfinite(x)
    filled = x.copy()
    np.copyto(filled, 0.0, where=~valid)  # (np.where with a scalar is several times slower)
    return filled, valid.astype(np.float64)


@dataclass(eq=False)
class Panel:
    """Bars sorted by (symbol, date) as contiguous float64 arrays plus the per-symbol and per-date index maps."""

    symbols: np.ndarray  # (S,) symbol names in order
    starts: np.ndarray  # (S,) first row of each symbol
    counts: np.ndarray  # (S,) bars per symbol
    sym: np.ndarray  # (N,) symbol index of each row
    pos: np.ndarray  # (N,) position of the row within its symbol (0 = first bar)
    dates: np.ndarray  # (N,) datetime64[ns]
    days: pd.DatetimeIndex  # (D,) distinct dates, sorted
    day: np.ndarray  # (N,) index of each row's date in ``days``
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    adj_close: np.ndarray
    volume: np.ndarray  # 0 where the bar has no volume (see ``input_missing``)
    spread: np.ndarray | None  # relative quoted spread, None when the bars have no such column
    raw_volume: np.ndarray  # volume as delivered (NaN where unknown)
    raw_range: np.ndarray  # False where open, high or low is not a number (the computing arrays hold the close)

    def __post_init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @classmethod
    def from_bars(cls, bars: pd.DataFrame) -> tuple[Panel, np.ndarray | None]:
        """Build the panel; also return the row order applied to ``bars`` (None when already sorted)."""
        symbol_values = bars["symbol"].to_numpy(dtype=object)
        dates = _as_datetime64(bars["date"])
        order, change = _sort_order(symbol_values, dates)
        if order is not None:
            symbol_values, dates = symbol_values[order], dates[order]
            change = np.flatnonzero(symbol_values[1:] != symbol_values[:-1]) + 1
        n = len(symbol_values)
        starts = np.concatenate([[0], change]).astype(np.int64) if n else np.array([], dtype=np.int64)
        counts = np.diff(np.append(starts, n)).astype(np.int64)
        sym = np.repeat(np.arange(len(starts)), counts)
        pos = np.arange(n, dtype=np.int64) - np.repeat(starts, counts)
        if n and np.any((np.diff(dates.view(np.int64)) <= 0) & (pos[1:] > 0)):
            raise ValueError("bars have duplicate (symbol, date) rows")
        days, day = _date_index(dates)

        def column(name: str) -> np.ndarray:
            if name not in bars.columns:  # a file without volume (or without open/high/low)
                return np.full(n, np.nan)
            values = pd.to_numeric(bars[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            return np.ascontiguousarray(values[order] if order is not None else values)

        close = column("close")
        raw_volume = column("volume")
        # TA-Lib's running sums must never see a NaN (it would poison every later window): an unknown volume
        # computes as 0 and an unknown open/high/low as the close; the input flags then blank what read them.
        volume = raw_volume.copy()
        np.copyto(volume, 0.0, where=~(np.isfinite(raw_volume) & (raw_volume >= 0)))
        prices = {name: column(name) for name in ("open", "high", "low")}
        raw_range = np.ones(n, dtype=bool)
        for name, values in prices.items():
            known = np.isfinite(values)
            raw_range &= known
            prices[name] = values = values.copy()  # column() may return a view of the caller's frame
            np.copyto(values, close, where=~known)
        panel = cls(
            symbols=symbol_values[starts], starts=starts, counts=counts, sym=sym, pos=pos, dates=dates,
            days=days, day=day, open=prices["open"], high=prices["high"], low=prices["low"],
            close=close, adj_close=column("adj_close") if "adj_close" in bars.columns else close,
            volume=volume, spread=column("spread") if "spread" in bars.columns else None,
            raw_volume=raw_volume, raw_range=raw_range,
        )
        return panel, order

    @property
    def n(self) -> int:
        return len(self.sym)

    @property
    def n_symbols(self) -> int:
        return len(self.starts)

    def cache_get(self, key: str, make: Callable[[], Any]) -> Any:
        """A derived array computed once per panel (log prices, daily returns, ...)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def scratch(self, k: int) -> np.ndarray:
        """A reusable ``(k, n)`` float64 work area (contents undefined); one module at a time.

        Fresh memory is expensive to touch; reusing one block for every module's intermediates keeps the
        pipeline's footprint near the output matrix itself.
        """
        block = self._cache.get("scratch")
        if block is None or len(block) < k:
            block = np.empty((k, self.n))
            self._cache["scratch"] = block
        return block[:k]

    # ----- per-symbol helpers (never cross a symbol boundary) ----------------------------------------
    def head_rows(self, k: int) -> np.ndarray:
        """Rows that are among the first k bars of their symbol (tiny: at most k per symbol)."""
        def make() -> np.ndarray:
            offsets = np.arange(k)
            rows = (self.starts[:, None] + offsets[None, :])[offsets[None, :] < self.counts[:, None]]
            return rows.astype(np.int64)

        return self.cache_get(f"head_rows_{k}", make)

    def lag(self, x: np.ndarray, k: int, out: np.ndarray | None = None) -> np.ndarray:
        """x from k bars earlier within each symbol (NaN for a symbol's first k bars)."""
        out = np.empty(self.n) if out is None else out
        if k >= self.n:  # fewer bars than the lag: nothing is defined
            out[:] = np.nan
            return out
        out[k:] = x[: self.n - k]
        out[:k] = np.nan
        out[self.head_rows(k)] = np.nan
        return out

    def diff(self, x: np.ndarray, k: int, out: np.ndarray | None = None) -> np.ndarray:
        """x - x from k bars earlier within each symbol (NaN for a symbol's first k bars)."""
        out = np.empty(self.n) if out is None else out
        if k >= self.n:  # fewer bars than the window: nothing is defined
            out[:] = np.nan
            return out
        np.subtract(x[k:], x[: self.n - k], out=out[k:])
        out[:k] = np.nan
        out[self.head_rows(k)] = np.nan
        return out

    def window_count(self, flag: np.ndarray, k: int) -> np.ndarray:
        """Per row: how many of the last k bars of its symbol (the row included) have ``flag`` set."""
        total = np.cumsum(flag, dtype=np.int64)  # flags up to and including each row
        out = total.copy()
        if k < self.n:
            out[k:] -= total[: self.n - k]  # the last k rows, wherever they belong...
        # ...except within a symbol's first k bars, whose window starts at the symbol's first row.
        head = self.head_rows(k)
        start = self.starts[self.sym[head]]
        out[head] = total[head] - np.where(start > 0, total[np.maximum(start - 1, 0)], 0)
        return out

    def input_missing(self) -> dict[str, np.ndarray]:
        """Per input (``VOLUME``, ``RANGE``): True on bars where it is not a real measurement.

        Volume: not a number, negative, or a filler (the same value ``CONSTANT_VOLUME_RUN`` bars in a row, or
        since the symbol's first bar). Range: open, high or low not a number, or high == low (a close-only bar:
        no intraday range was recorded). Each flag reads only the bar and earlier bars of its symbol.
        """
        def make() -> dict[str, np.ndarray]:
            volume = self.raw_volume
            repeated = np.zeros(self.n, dtype=bool)
            if self.n > 1:
                repeated[1:] = (volume[1:] == volume[:-1]) & (self.pos[1:] > 0)
            run = self.window_count(repeated, CONSTANT_VOLUME_RUN - 1)
            # all repeats since the first bar: the run reaches back to the symbol's first row
            from_start = (run == self.pos) & (self.pos > 0)
            filler = repeated & ((run >= CONSTANT_VOLUME_RUN - 1) | from_start)
            no_volume = ~(np.isfinite(volume) & (volume >= 0)) | filler
            no_range = ~self.raw_range | (self.high == self.low)
            return {VOLUME: no_volume, RANGE: no_range}

        return self.cache_get("input_missing", make)

    def rows_after(self, mask: np.ndarray, k: int) -> np.ndarray:
        """Rows k bars after the rows where ``mask`` holds, within the same symbol."""
        hits = np.flatnonzero(mask)
        hits = hits[self.pos[hits] + k < self.counts[self.sym[hits]]]
        return hits + k

    # ----- cross-sectional helpers -------------------------------------------------------------------
    @property
    def cells(self) -> np.ndarray:
        """Row -> index in the flattened ``(dates, symbols)`` grid."""
        return self.cache_get("cells", lambda: self.day * self.n_symbols + self.sym)

    def row_of_cell(self, cells: np.ndarray) -> np.ndarray:
        """Grid cell index -> row (-1 where the symbol has no bar that date)."""
        def make() -> np.ndarray:
            lookup = np.full(len(self.days) * self.n_symbols, -1, dtype=np.int64)
            lookup[self.cells] = np.arange(self.n)
            return lookup

        return np.take(self.cache_get("row_of_cell", make), cells, mode="clip")

    def wide(self, x: np.ndarray) -> np.ndarray:
        """``(dates, symbols)`` grid (NaN where a symbol has no bar that day)."""
        out = np.full(len(self.days) * self.n_symbols, np.nan)
        out[self.cells] = x
        return out.reshape(len(self.days), self.n_symbols)

    def by_date(self, per_date: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One value per distinct date (``days`` order) -> the value of each row's date."""
        return np.take(per_date, self.day, out=out, mode="clip")  # day is always in range; clip skips the checks

    def long(self, grid: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Back from ``(dates, symbols)`` to one value per row."""
        return np.take(grid.reshape(-1), self.cells, out=out)

    def row_of(self, symbols: np.ndarray, dates: np.ndarray) -> np.ndarray:
        """Row index of each (symbol, date) pair, -1 where the panel has no such bar."""
        s = pd.Index(self.symbols).get_indexer(symbols)
        d = self.days.get_indexer(pd.DatetimeIndex(dates))
        rows = np.full(len(s), -1, dtype=np.int64)
        ok = (s >= 0) & (d >= 0)
        rows[ok] = self.row_of_cell(d[ok] * self.n_symbols + s[ok])
        return rows


def _as_datetime64(dates: pd.Series) -> np.ndarray:
    values = dates if pd.api.types.is_datetime64_any_dtype(dates) else pd.to_datetime(dates)
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_localize(None)
    return values.to_numpy(dtype="datetime64[ns]")


def _sort_order(symbols: np.ndarray, dates: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(the (symbol, date) sort order or None when already sorted, the rows where the symbol changes).

    The warehouse reads sorted bars: then the symbol boundaries found here are the panel's (returned so they
    are not searched twice); after a sort they must be found again.
    """
    n = len(symbols)
    change = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    if n < 2:
        return None, change
    heads = symbols[np.concatenate([[0], change])].tolist()
    same_symbol = np.ones(n - 1, dtype=bool)
    same_symbol[change - 1] = False
    dates_ascending = not np.any(same_symbol & (np.diff(dates.view(np.int64)) < 0))
    if dates_ascending and all(a < b for a, b in zip(heads, heads[1:])):
        return None, change
    codes, _ = pd.factorize(symbols, sort=True)
    return np.lexsort((dates.view(np.int64), codes)), change


def _date_index(dates: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Distinct dates and each row's index into them, in O(n) through a day-offset table."""
    if not len(dates):
        return pd.DatetimeIndex([]), np.array([], dtype=np.int64)
    ns = dates.view(np.int64)
    first = ns.min()
    offset = (ns - first) // _NS_PER_DAY
    if np.any(ns != first + offset * _NS_PER_DAY):  # intraday timestamps: fall back to a sort
        days, day = np.unique(dates, return_inverse=True)
        return pd.DatetimeIndex(days), day.astype(np.int64)
    present = np.zeros(int(offset.max()) + 1, dtype=bool)
    present[offset] = True
    table = np.cumsum(present) - 1
    days = pd.DatetimeIndex((first + np.flatnonzero(present) * _NS_PER_DAY).astype("datetime64[ns]"))
    return days, table[offset]


def __getattr__(name: str) -> Any:
    """Lazy re-export of the pipeline API (``from ibf_core.features import compute_features``)."""
    pipeline = importlib.import_module("ibf_core.features.pipeline")
    if name in pipeline.__all__:
        return getattr(pipeline, name)
    raise AttributeError(f"module 'ibf_core.features' has no attribute {name!r}")
