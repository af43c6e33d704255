"""Bars (+ optional daily news) -> the model-ready feature matrix: one row per (symbol, date), no look-ahead.

Row d of a symbol uses only bars up to d's close (and, for cross-sectional features, other symbols' values on
the same date). The matrix is assembled into one preallocated ``(features, rows)`` float64 block that every
module writes into in place, then wrapped by a DataFrame without copying.

Missing values: infinities become NaN; interior gaps are forward-filled within the symbol (never backward,
never across symbols); leading gaps (warm-up) stay NaN; nothing is zero-filled. News columns are joined as
they come (a session without a news row has NaN there).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ibf_core.features import Feature, Panel, calendar_features, cross_asset, microstructure, technical

__all__ = [
    "FEATURES",
    "NEWS_COLUMNS",
    "WARMUP_SESSIONS",
    "compute_features",
    "compute_features_for_range",
    "feature_columns",
    "features_by_group",
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
FEATURES: list[Feature] = [*_PER_SYMBOL, *_CROSS, *calendar_features.FEATURES, *NEWS_FEATURES]
if len({f.name for f in FEATURES}) != len(FEATURES):
    raise RuntimeError("duplicate feature names in the registry")

# A symbol's row is warm-up while it has fewer bars than the longest window needs.
WARMUP_SESSIONS = max(f.min_history for f in FEATURES)


def feature_columns() -> list[str]:
    """Feature names in registry (= column) order."""
    return [f.name for f in FEATURES]


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
    bars: pd.DataFrame, news: pd.DataFrame | None = None, benchmark: str | None = cross_asset.DEFAULT_BENCHMARK
) -> pd.DataFrame:
    """``symbol, date`` + ``feature_columns()`` + ``warmup``, one row per bar, sorted by symbol and date.

    ``bars``: the canonical bar frame (``ibf_core.bars``), any order. ``news``: optional daily frame
    ``symbol, date`` + :data:`NEWS_COLUMNS`, left-joined as is. ``benchmark``: symbol for beta/correlation;
    when None or absent from ``bars`` the leave-one-out equal-weighted universe is used.
    """
    if bars.empty:
        return _empty_frame()
    panel, order = Panel.from_bars(bars)
    matrix = np.empty((len(FEATURES), panel.n))
    rows = {f.name: matrix[i] for i, f in enumerate(FEATURES)}

    technical.compute(panel, rows)
    technical.compute_returns(panel, rows)
    microstructure.compute(panel, rows)
    _clean(panel, rows, _PER_SYMBOL)
    cross_asset.compute(panel, rows, benchmark)
    _clean(panel, rows, _CROSS)
    calendar_features.compute(panel, rows)
    _join_news(panel, news, rows)

    frame = pd.DataFrame(matrix.T, columns=feature_columns(), copy=False)
    symbols = bars["symbol"].to_numpy()
    frame.insert(0, "date", panel.dates)
    frame.insert(0, "symbol", symbols if order is None else symbols[order])
    frame["warmup"] = panel.pos + 1 < WARMUP_SESSIONS
    return frame


def compute_features_for_range(
    bars: pd.DataFrame,
    start: str | dt.date | pd.Timestamp,
    end: str | dt.date | pd.Timestamp,
    news: pd.DataFrame | None = None,
    benchmark: str | None = cross_asset.DEFAULT_BENCHMARK,
) -> pd.DataFrame:
    """Features for dates in [start, end]; ``bars`` must include ``lookback_sessions()`` sessions before start."""
    frame = compute_features(bars, news=news, benchmark=benchmark)
    keep = (frame["date"] >= pd.Timestamp(start)) & (frame["date"] <= pd.Timestamp(end))
    return frame.loc[keep].reset_index(drop=True)


def _empty_frame() -> pd.DataFrame:
    columns = {"symbol": pd.Series(dtype=object), "date": pd.Series(dtype="datetime64[ns]")}
    columns.update({name: pd.Series(dtype=np.float64) for name in feature_columns()})
    columns["warmup"] = pd.Series(dtype=bool)
    return pd.DataFrame(columns)


def _clean(panel: Panel, rows: Mapping[str, np.ndarray], features: list[Feature]) -> None:
    """Infinities -> NaN, then forward-fill interior gaps within each symbol."""
    for feature in features:
        row = rows[feature.name]
        nonfinite = ~np.isfinite(row)
        missing = np.count_nonzero(nonfinite)
        # Leading NaNs a well-formed row has (min_history - 1 per symbol): equal counts mean no inf, no gap.
        if missing == _leading(panel, feature.min_history):
            continue
        row[nonfinite] = np.nan
        if feature.ffill and 0 < missing < panel.n:
            forward_fill(panel, row, ~nonfinite)


def _leading(panel: Panel, min_history: int) -> int:
    return int(np.minimum(panel.counts, min_history - 1).sum())


def forward_fill(panel: Panel, row: np.ndarray, valid: np.ndarray) -> None:
    """In place: each NaN takes the last valid value of the same symbol before it; leading NaNs stay."""
    source = np.where(valid, np.arange(panel.n), 0)
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
