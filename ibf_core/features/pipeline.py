"""Bars (+ optional daily news) -> the model-ready feature matrix: one row per (symbol, date), no look-ahead.

Row d of a symbol uses only bars up to d's close (and, for cross-sectional features, other symbols' values on
the same date). The matrix is assembled into one preallocated ``(features, rows)`` float64 block that every
module writes into in place, then wrapped by a DataFrame without copying.

Missing values: infinities become NaN; interior gaps are forward-filled within the symbol (never backward,
never across symbols); leading gaps (warm-up) stay NaN; nothing is zero-filled. News columns are joined as
they come (a session without a news row has NaN there).

Warm-up is per feature: a value exists from the symbol's ``min_history``-th bar on (a 200-session SMA is NULL
until 200 bars exist, a 5-session return from the 6th bar). ``warmup`` flags rows before the longest window
(200 bars) for readers that want every feature at once; models use each feature where it exists.

Missing inputs: a feature that reads the volume or the intraday range (``Feature.inputs``) is NULL on every row
whose own window (``min_history`` bars) holds a bar without that input (``Panel.input_missing``: NULL or
filler volume, high == low). A close-only file therefore gets NULL volume and range features, never zeros,
and the window recovers ``min_history`` bars after the input returns. ``compute_features_with_support`` also
returns where each feature *can* exist (past its own warm-up, inputs present): the ``features`` checks judge
missing values only there.

Missing sessions (a gap in a symbol's bars): every window counts *bars*, not sessions (TA-Lib is 1-D). Across a
gap of g sessions, ``logret_1`` spans g + 1 sessions, ``logret_k`` and every k-bar window (SMA, RSI, volatility,
Amihud, beta) cover k bars = k + g sessions, recursive indicators (EMA, Wilder's RSI/ATR/ADX) take one step for
the g + 1 sessions, and ``gap_overnight`` compares with the last close before the gap. Values stay defined
(nothing crashes, nothing is interpolated); a feature of a bar after a gap describes a slightly longer
stretch of time. Targets and the neural members' daily return are defined on NYSE sessions instead and are
NULL across a gap (``ibf_core.models.dataset``). Cross-sectional features use the symbols that have a bar
that date.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd

from ibf_core.features import (
    INPUT_NAMES, RANGE, VOLUME, Feature, Panel, calendar_features, cross_asset, fundamental, live, macro, microstructure,
    technical,
)  # fmt: skip

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.fundamentals.inputs import FundamentalInputs

_T = TypeVar("_T")

__all__ = [
    "FEATURES",
    "NEWS_COLUMNS",
    "WARMUP_SESSIONS",
    "compute_features",
    "compute_features_for_range",
    "compute_features_with_support",
    "feature_by_name",
    "input_flags",
    "unsupported_reasons",
    "feature_columns",
    "features_by_group",
    "sparse_features",
    "lookback_sessions",
]

NEWS_COLUMNS = (
    "news_count",
    "news_sentiment_mean",
    "news_sentiment_weighted",
    "news_bullish_share",
    "news_bearish_share",
    "news_volume_z",
)


def _news(name: str, description: str) -> Feature:
    # Joined as delivered: a session without articles has count 0 and NaN sentiment, never carried forward.
    return Feature(name, description, "news", 1, ffill=False)


NEWS_FEATURES: list[Feature] = [
    _news("news_count", "Articles mentioning the symbol that session (NaN without a news row)"),
    _news("news_sentiment_mean", "Mean ticker sentiment (-1..1); NaN without articles"),
    _news("news_sentiment_weighted", "Relevance-weighted ticker sentiment; NaN without articles"),
    _news("news_bullish_share", "Share of articles labelled (somewhat) bullish"),
    _news("news_bearish_share", "Share of articles labelled (somewhat) bearish"),
    _news("news_volume_z", "Article count z-score against the trailing 60 sessions"),
]

_PER_SYMBOL: list[Feature] = [*technical.FEATURES, *technical.RETURN_FEATURES, *microstructure.FEATURES]
_CROSS: list[Feature] = cross_asset.features({f.name: f for f in _PER_SYMBOL})
FEATURES: list[Feature] = [
    *_PER_SYMBOL, *_CROSS, *calendar_features.FEATURES, *NEWS_FEATURES, *live.FEATURES, *fundamental.FEATURES,
    *macro.FEATURES,
]
if len({f.name for f in FEATURES}) != len(FEATURES):
    raise RuntimeError("duplicate feature names in the registry")

# A symbol's row is warm-up while it has fewer bars than the longest window needs.
WARMUP_SESSIONS = max(f.min_history for f in FEATURES)


def feature_columns() -> list[str]:
    """Feature names in registry (= column) order."""
    return [f.name for f in FEATURES]


def sparse_features() -> set[str]:
    """Features whose input exists only on some sessions or symbols: the real quoted spread (IB BID_ASK bars), news,
    the live measures (sessions ibf stream collected), fundamentals, sectors and macro (what Alpha Vantage covers,
    from when it was published or recorded). Their NULL share is reported, never judged."""
    joined = {f.name for f in (*fundamental.FEATURES, *macro.FEATURES)}
    return {f.name for f in FEATURES if f.group == "news" or f.name in joined or f.name.startswith(("spread_quoted", "live_"))}


def features_by_group() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for f in FEATURES:
        groups.setdefault(f.group, []).append(f.name)
    return groups


def lookback_sessions() -> int:
    """Sessions to load before a partition's first date so its rows equal a full-history computation.

    The longest finite window (200) or, longer, the sessions a recursive indicator (EMA, Wilder's RSI/ATR/ADX,
    MACD) needs to forget its seed to 1e-9 (see ``ibf_core.features.seed_settle``).
    """
    return max(f.history_needed for f in FEATURES)


def compute_features(
    bars: pd.DataFrame,
    news: pd.DataFrame | None = None,
    benchmark: str | None = cross_asset.DEFAULT_BENCHMARK,
    microstructure_daily: pd.DataFrame | None = None,
    fundamentals: FundamentalInputs | None = None,
) -> pd.DataFrame:
    """``symbol, date`` + ``feature_columns()`` + ``warmup``, one row per bar, sorted by symbol and date.

    ``bars``: the canonical bar frame (``ibf_core.market.bars``), any order; ``volume`` (and ``open``/``high``/``low``)
    may be NULL or absent. ``news``: optional daily frame ``symbol, date`` + :data:`NEWS_COLUMNS`, left-joined
    as is. ``benchmark``: symbol for beta/correlation; when None or absent from ``bars`` the leave-one-out
    equal-weighted universe is used. ``microstructure_daily``: optional rows of that table (the live
    tables' sessions); the ``live_*`` features are NaN without them (``ibf_core.features.live``).
    ``fundamentals``: the point-in-time overview, earnings, calendar and macro frames
    (``ibf_core.fundamentals.read_inputs``); their features are NaN without them.
    """
    return _compute(bars, news, benchmark, microstructure_daily, fundamentals, with_support=False)[0]


def compute_features_with_support(
    bars: pd.DataFrame,
    news: pd.DataFrame | None = None,
    benchmark: str | None = cross_asset.DEFAULT_BENCHMARK,
    microstructure_daily: pd.DataFrame | None = None,
    fundamentals: FundamentalInputs | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(``compute_features``' frame, a frame of the same keys saying per feature why a row cannot have a value).

    The second frame holds one int8 column per feature: ``SUPPORTED`` (0) where the data supports a value,
    else the sum of ``WARMING_UP`` (before the feature's own ``min_history`` bars) and ``NO_VOLUME`` /
    ``NO_RANGE`` (its window holds a bar without an input it reads). Calendar, news and live columns are 0.
    """
    frame, support = _compute(bars, news, benchmark, microstructure_daily, fundamentals, with_support=True)
    assert support is not None
    return frame, support


def _compute(
    bars: pd.DataFrame,
    news: pd.DataFrame | None,
    benchmark: str | None,
    microstructure_daily: pd.DataFrame | None,
    fundamentals: FundamentalInputs | None,
    with_support: bool,
    marks: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The feature frame and, ``with_support``, the support-state frame (``compute_features`` skips building it).

    ``marks``: when given, receives the wall time of every stage (``benchmarks/bench_features.py``).
    """
    if bars.empty:
        empty = _empty_frame()
        return empty, empty.drop(columns="warmup").astype({c: np.int8 for c in feature_columns()})
    stage = _Stages(marks)
    panel, order = stage("panel (sort check, index maps)", lambda: Panel.from_bars(bars))
    matrix = np.empty((len(FEATURES), panel.n))
    rows = {f.name: matrix[i] for i, f in enumerate(FEATURES)}
    lacking = stage("input flags", lambda: _lacking_inputs(panel))
    stage("technical (TA-Lib loop + transforms)", lambda: technical.compute(panel, rows))
    stage("returns", lambda: technical.compute_returns(panel, rows))
    stage("microstructure", lambda: microstructure.compute(panel, rows))
    stage("clean per-symbol (inf, ffill, inputs)", lambda: (_clean(panel, rows, _PER_SYMBOL),
                                                            _blank_missing_inputs(rows, lacking, _PER_SYMBOL)))
    stage("cross-asset (beta, ranks)", lambda: cross_asset.compute(panel, rows, benchmark))
    stage("clean cross-asset", lambda: (_clean(panel, rows, _CROSS), _blank_missing_inputs(rows, lacking, _CROSS)))
    stage("calendar", lambda: calendar_features.compute(panel, rows))
    stage("news, live, fundamentals, macro", lambda: (
        _join_news(panel, news, rows), live.join(panel, microstructure_daily, rows),
        fundamental.compute(panel, rows, fundamentals),
        macro.compute(panel, rows, None if fundamentals is None else fundamentals.macro)))

    def assemble() -> pd.DataFrame:
        frame = _keyed(pd.DataFrame(matrix.T, columns=feature_columns(), copy=False), symbols, panel.dates)
        frame["warmup"] = panel.pos + 1 < WARMUP_SESSIONS
        return frame

    symbols = bars["symbol"].to_numpy()
    symbols = symbols if order is None else symbols[order]
    frame = stage("frame", assemble)
    if not with_support:
        return frame, None
    state = pd.DataFrame(_support_state(panel, lacking).T, columns=feature_columns(), copy=False)  # one int8 block
    return frame, _keyed(state, symbols, panel.dates)


class _Stages:
    """``stage(name, fn)`` runs ``fn``; with a ``marks`` dict it also records the wall time under ``name``."""

    def __init__(self, marks: dict[str, float] | None) -> None:
        self.marks = marks

    def __call__(self, name: str, fn: Callable[[], _T]) -> _T:
        if self.marks is None:
            return fn()
        begin = time.perf_counter()
        out = fn()
        self.marks[name] = self.marks.get(name, 0.0) + time.perf_counter() - begin
        return out


def _keyed(frame: pd.DataFrame, symbols: np.ndarray, dates: np.ndarray) -> pd.DataFrame:
    frame.insert(0, "date", dates)
    frame.insert(0, "symbol", symbols)
    return frame


def compute_features_for_range(
    bars: pd.DataFrame,
    start: str | dt.date | pd.Timestamp,
    end: str | dt.date | pd.Timestamp,
    news: pd.DataFrame | None = None,
    benchmark: str | None = cross_asset.DEFAULT_BENCHMARK,
    with_support: bool = False,
    microstructure_daily: pd.DataFrame | None = None,
    fundamentals: FundamentalInputs | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Features for dates in [start, end]; ``bars`` must include ``lookback_sessions()`` sessions before start.

    ``with_support``: also return the support-state frame of those rows (``compute_features_with_support``).
    """
    frame, support = compute_features_with_support(
        bars, news=news, benchmark=benchmark, microstructure_daily=microstructure_daily, fundamentals=fundamentals
    )
    keep = ((frame["date"] >= pd.Timestamp(start)) & (frame["date"] <= pd.Timestamp(end))).to_numpy()
    frame = frame.loc[keep].reset_index(drop=True)
    return (frame, support.loc[keep].reset_index(drop=True)) if with_support else frame


def feature_by_name() -> dict[str, Feature]:
    return {f.name: f for f in FEATURES}


def input_flags(bars: pd.DataFrame) -> pd.DataFrame:
    """``symbol, date`` + one bool column per bar input (``volume``, ``range``): True where the bar lacks it."""
    panel, order = Panel.from_bars(bars)
    symbols = bars["symbol"].to_numpy()
    flags = pd.DataFrame(panel.input_missing())
    return _keyed(flags, symbols if order is None else symbols[order], panel.dates)


# Support states (bits) of a feature on a row: why the data cannot give it a value there.
SUPPORTED, WARMING_UP, NO_VOLUME, NO_RANGE = 0, 1, 2, 4
_INPUT_BITS = {VOLUME: NO_VOLUME, RANGE: NO_RANGE}


def _has_support_state(feature: Feature) -> bool:
    """Whether warm-up and input bits apply (joined columns: news, live, fundamentals, macro, and calendar have none)."""
    return feature.ffill and feature.group != "calendar"


def _lacking_inputs(panel: Panel) -> dict[tuple[str, int], np.ndarray]:
    """(input, window) -> rows whose trailing window of that many bars holds a bar without the input.

    Only for the (input, window) pairs some feature reads, and only where the input is missing somewhere: on
    complete bars this is empty and costs one pass over the input flags.
    """
    missing = panel.input_missing()
    lacking: dict[tuple[str, int], np.ndarray] = {}
    for feature in FEATURES:
        if not _has_support_state(feature):
            continue
        for name in feature.inputs:
            key = (name, feature.min_history)
            if key not in lacking and missing[name].any():
                lacking[key] = panel.window_count(missing[name], feature.min_history) > 0
    return lacking


def _support_state(panel: Panel, lacking: Mapping[tuple[str, int], np.ndarray]) -> np.ndarray:
    """``(features, rows)`` int8: ``SUPPORTED`` or the bits of what is missing, per feature (registry order) and row."""
    state = np.zeros((len(FEATURES), panel.n), dtype=np.int8)
    for i, feature in enumerate(FEATURES):
        if not _has_support_state(feature):
            continue
        if feature.min_history > 1:  # rows among the symbol's first min_history - 1 bars
            state[i, panel.head_rows(feature.min_history - 1)] = WARMING_UP
        for name in sorted(feature.inputs):
            rows = lacking.get((name, feature.min_history))
            if rows is not None:
                state[i, rows] |= _INPUT_BITS[name]
    return state


def _blank_missing_inputs(rows: Mapping[str, np.ndarray], lacking: Mapping[tuple[str, int], np.ndarray],
                          features: list[Feature]) -> None:
    """NULL where a feature read a missing bar input (after the forward fill, so no fill reaches those rows)."""
    for feature in features:
        if not _has_support_state(feature):
            continue
        for name in feature.inputs:
            where = lacking.get((name, feature.min_history))
            if where is not None:
                rows[feature.name][where] = np.nan


def unsupported_reasons(state: pd.DataFrame, columns: list[str]) -> dict[str, str]:
    """Feature -> why no row of ``state`` (a support frame) supports it; features with a supported row are absent."""
    reasons = {}
    for column in columns:
        values = state[column].to_numpy()
        if len(values) and (values == SUPPORTED).any():
            continue
        missing = [INPUT_NAMES[name] for name, bit in _INPUT_BITS.items() if (values & bit).any()]
        if missing:
            reasons[column] = f"missing input: {', '.join(missing)}"
        else:
            reasons[column] = f"warm-up: needs {feature_by_name()[column].min_history} bars of history"
    return reasons


def _empty_frame() -> pd.DataFrame:
    columns = {"symbol": pd.Series(dtype=object), "date": pd.Series(dtype="datetime64[ns]")}
    columns.update({name: pd.Series(dtype=np.float64) for name in feature_columns()})
    columns["warmup"] = pd.Series(dtype=bool)
    return pd.DataFrame(columns)


def _clean(panel: Panel, rows: Mapping[str, np.ndarray], features: list[Feature]) -> None:
    """Infinities -> NaN, then forward-fill interior gaps within each symbol."""
    for feature in features:
        row = rows[feature.name]
        finite = np.isfinite(row)
        missing = panel.n - np.count_nonzero(finite)
        # Leading NaNs a well-formed row has (min_history - 1 per symbol): equal counts mean no inf, no gap.
        if missing == _leading(panel, feature.min_history):
            continue
        np.copyto(row, np.nan, where=~finite)
        if feature.ffill and 0 < missing < panel.n:
            forward_fill(panel, row, finite)


def _leading(panel: Panel, min_history: int) -> int:
    return int(np.minimum(panel.counts, min_history - 1).sum())


def forward_fill(panel: Panel, row: np.ndarray, valid: np.ndarray) -> None:
    """In place: each NaN takes the last valid value of the same symbol before it; leading NaNs stay."""
    source = np.arange(panel.n)
    np.copyto(source, 0, where=~valid)
    # The running maximum of "last valid row, or this symbol's first row" never reaches back into an
    # earlier symbol: a symbol's first row is larger than every row before it.
    source[panel.starts] = panel.starts
    np.maximum.accumulate(source, out=source)
    row[:] = row[source]


def _join_news(panel: Panel, news: pd.DataFrame | None, rows: Mapping[str, np.ndarray]) -> None:
    """Left-join the daily news frame on (symbol, date); rows without a news row get NaN."""
    for name in NEWS_COLUMNS:
        rows[name][:] = np.nan
    if news is None or news.empty:
        return
    missing = [c for c in ("symbol", "date", *NEWS_COLUMNS) if c not in news.columns]
    if missing:
        raise ValueError(f"news frame lacks column(s) {', '.join(missing)}")
    dates = pd.to_datetime(news["date"]).dt.normalize().to_numpy(dtype="datetime64[ns]")
    target = panel.row_of(news["symbol"].to_numpy(dtype=object), dates)
    hit = target >= 0
    if len(np.unique(target[hit])) != int(hit.sum()):
        raise ValueError("news frame has duplicate (symbol, date) rows")
    for name in NEWS_COLUMNS:
        rows[name][target[hit]] = pd.to_numeric(news[name], errors="coerce").to_numpy(dtype=np.float64)[hit]
