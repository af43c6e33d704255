"""Declared tables and views of the warehouse (used for storage, Dagster column metadata and docs).

Each table or view is declared by the module that writes it: the symbol x date tables below, ``features`` in
``ibf_core.features.table``, the news tables in ``ibf_core.news.store``, ``alerts`` in ``ibf_core.monitoring.alerts``, ``portfolio_weights`` / ``portfolio_returns`` in
``ibf_core.portfolio.stored``, ``bar_issues`` in
``ibf_core.market.issues`` and the
``forecast_outcomes`` view in ``ibf_core.monitoring.outcomes``. ``ibf_core.catalog`` gathers them into one
:class:`Catalog`; storage itself imports none of those modules.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

SCHEMA_FILE = "_schema.parquet"  # an empty file of the declared schema in every table folder
SYMBOL_FILES = "<SYMBOL>.parquet"
_VIEW_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    optional: bool = False  # a writer may omit it; stored as NULL

    @property
    def sql_type(self) -> str:
        return {
            pa.string(): "VARCHAR",
            pa.date32(): "DATE",
            pa.float64(): "DOUBLE",
            pa.int64(): "BIGINT",
            pa.bool_(): "BOOLEAN",
            pa.timestamp("us", tz="UTC"): "TIMESTAMP WITH TIME ZONE",
        }[self.type]


@dataclass(frozen=True)
class TableSpec:
    """A table: Parquet files under ``lake/<name>/`` (named as ``files`` says), a DuckDB view ``<name>`` over all.

    ``files`` is ``<SYMBOL>.parquet`` (one file per symbol, what ``Warehouse.replace_slice`` and ``read`` handle)
    or another layout whose module writes the files itself, e.g. ``<YYYY-MM>.parquet`` for news articles.
    """

    name: str
    columns: tuple[Column, ...]
    description: str
    key: tuple[str, ...] = ("symbol", "date")
    files: str = SYMBOL_FILES

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.type) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def per_symbol(self) -> bool:
        return self.files == SYMBOL_FILES


@dataclass(frozen=True)
class ViewSpec:
    """A DuckDB view ``name AS sql`` (a SELECT); ``version`` tells an existing warehouse that ``sql`` changed."""

    name: str
    sql: str
    description: str = ""

    def __post_init__(self) -> None:
        if not _VIEW_NAME.match(self.name):
            raise ValueError(f"view name {self.name!r} must be a lower-case SQL identifier")

    @property
    def version(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Catalog:
    """Every table and view ibf writes; views come after the tables they read."""

    tables: tuple[TableSpec, ...]
    views: tuple[ViewSpec, ...] = ()


def data_files(folder: Path) -> list[Path]:
    """The table's Parquet data files in ``folder`` (the empty schema file left out), sorted."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("*.parquet") if p.name != SCHEMA_FILE)


MARKET_BARS = TableSpec(
    name="market_bars",
    description="Daily OHLCV bars per symbol and NYSE trading day, split-adjusted.",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE trading day"),
        Column("open", pa.float64(), "Opening price, split-adjusted"),
        Column("high", pa.float64(), "High price, split-adjusted"),
        Column("low", pa.float64(), "Low price, split-adjusted"),
        Column("close", pa.float64(), "Closing price, split-adjusted"),
        Column("adj_close", pa.float64(), "Closing price adjusted for splits and dividends (total return)"),
        Column("volume", pa.float64(), "Shares traded, split-adjusted"),
        Column(
            "spread",
            pa.float64(),
            "Relative quoted spread (ask - bid) / mid from IB BID_ASK bars; NULL when unknown",
            optional=True,
        ),
        Column("source", pa.string(), "Source that delivered the bar: sample, csv or ibkr"),
    ),
)

NEWS_SENTIMENT = TableSpec(
    name="news_sentiment",
    description="News per symbol and trading day (articles after the close count for the next session).",
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "NYSE trading day the articles count for"),
        Column("news_count", pa.int64(), "Articles mentioning the symbol"),
        Column("news_sentiment_mean", pa.float64(), "Mean ticker sentiment (-1..1); NULL without articles"),
        Column("news_sentiment_weighted", pa.float64(), "Relevance-weighted ticker sentiment; NULL without articles"),
        Column("news_bullish_share", pa.float64(), "Share of articles labelled (somewhat) bullish"),
        Column("news_bearish_share", pa.float64(), "Share of articles labelled (somewhat) bearish"),
        Column("news_volume_z", pa.float64(), "Article count z-score against the trailing 60 sessions"),
    ),
)


def _bounds() -> tuple[Column, ...]:
    cols = []
    for level in (80, 95):
        cols.append(Column(f"lower_{level}", pa.float64(), f"Lower bound of the {level}% interval of the h-day log return"))
        cols.append(Column(f"upper_{level}", pa.float64(), f"Upper bound of the {level}% interval of the h-day log return"))
    for level in (80, 95):
        cols.append(Column(f"price_lower_{level}", pa.float64(), f"Price at the lower {level}% bound"))
        cols.append(Column(f"price_upper_{level}", pa.float64(), f"Price at the upper {level}% bound"))
    return tuple(cols)


PREDICTIONS = TableSpec(
    name="predictions",
    description="Forecasts per symbol, origin trading day and horizon (1-20 sessions) with intervals and ranks.",
    key=("symbol", "date", "horizon"),
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "Forecast origin: the NYSE session whose close the forecast starts from"),
        Column("horizon", pa.int64(), "Trading sessions ahead (1, 3, 5, 10, 15, 20)"),
        Column("target_date", pa.date32(), "The session the forecast is for (origin + horizon sessions)"),
        Column("close", pa.float64(), "Close at the origin (split-adjusted)"),
        Column("pred_return", pa.float64(), "Forecast h-day log return of the ensemble (the member in member_used)"),
        Column("pred_price", pa.float64(), "Forecast price: close x exp(pred_return)"),
        *_bounds(),
        Column("pred_drift", pa.float64(), "Drift baseline: trailing mean daily log return x h"),
        Column("pred_lstm", pa.float64(), "LSTM member's h-day log return", optional=True),
        Column("pred_tft", pa.float64(), "TFT member's h-day log return", optional=True),
        Column("pred_gbdt", pa.float64(), "GBDT member's h-day log return", optional=True),
        Column("pred_gbdt_rank", pa.float64(), "Cross-sectional rank GBDT member's h-day log return (sums to 0 across a session)", optional=True),
        Column("pred_reversal_1", pa.float64(), "1-day reversal factor member: centred cross-sectional rank x its return scale", optional=True),
        Column("pred_reversal_5", pa.float64(), "5-day reversal factor member: centred cross-sectional rank x its return scale", optional=True),
        Column("pred_momentum_20", pa.float64(), "20-day momentum factor member: centred cross-sectional rank x its return scale", optional=True),
        Column("pred_momentum_12_1", pa.float64(), "12-1 momentum factor member: centred cross-sectional rank x its return scale", optional=True),
        Column(
            "rank_score",
            pa.float64(),
            "The ensemble's ranking score: the members' centred cross-sectional ranks weighted by their rank IC (chosen apart "
            "from pred_return; 0 = middle of the cross-section); rank orders it",
            optional=True,
        ),
        Column("rank", pa.int64(), "Cross-sectional rank among the universe on (date, horizon) by rank_score (pred_return in older rows); 1 = best"),
        Column("member_used", pa.string(), "Which forecast pred_return holds (ensemble unless a single member is trained)"),
        Column("model_version", pa.string(), "MLflow registered-model version that produced the row"),
        Column("model_cutoff", pa.date32(), "Training cut-off of that version (always before date)"),
        Column(
            "inputs_digest",
            pa.string(),
            "Digest of what the origin's rows were forecast from (every universe symbol's inputs over the model's "
            "look-back, the model version); a run forecasts the origin again only when it changed "
            "(ibf_core.models.inference.origin_digests)",
            optional=True,
        ),
    ),
)

DRIFT_SCORES = TableSpec(
    name="drift_scores",
    description="Drift detectors and rolling forecast performance per symbol and session (one row per detector/feature).",
    key=("symbol", "date", "detector", "feature"),
    columns=(
        Column("symbol", pa.string(), "Ticker symbol"),
        Column("date", pa.date32(), "Session evaluated (data up to its close)"),
        Column(
            "detector",
            pa.string(),
            "ks, cvm, psi (per feature), mmd (features jointly), cusum (forecast residuals), "
            "perf_mase, perf_mae, perf_mape, perf_rmse, perf_da, perf_rank_ic, perf_coverage_80, perf_coverage_95",
        ),
        Column("feature", pa.string(), "Feature tested (univariate detectors); NULL otherwise", optional=True),
        Column("statistic", pa.float64(), "Test statistic or metric value; NULL when skipped"),
        Column("p_value", pa.float64(), "p-value (ks, cvm, mmd); NULL otherwise"),
        Column("threshold", pa.float64(), "Corrected p-value threshold, or the statistic's threshold"),
        Column("breached", pa.bool_(), "True when the detector fired (never for a skipped row)"),
        Column("skipped_reason", pa.string(), "Why the detector could not run (no matured forecasts, too few points, ...)", optional=True),
        Column("n", pa.int64(), "Points behind the value (recent window rows or matured forecasts)"),
        Column("model_version", pa.string(), "Model version whose training window is the reference"),
        Column(
            "inputs_digest",
            pa.string(),
            "Digest of what the symbol-session's rows were scored from (features, matured forecasts, model version and "
            "reference, settings); a run rescores the pair only when it changed (ibf_core.monitoring.rectangle.refresh_rectangle)",
            optional=True,
        ),
    ),
)

TABLES = {t.name: t for t in (MARKET_BARS, NEWS_SENTIMENT, PREDICTIONS, DRIFT_SCORES)}
