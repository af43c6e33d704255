"""``features``: the model-ready feature matrix per symbol x trading day, with its checks."""

import dagster as dg
import pandas as pd

from ibf_core.calendar import lookback_start
from ibf_core.features.table import features_spec
from ibf_core.fundamentals.load import read_inputs
from ibf_core.fundamentals.store import FUNDAMENTALS, MACRO_INDICATORS_TABLE
from ibf_core.market import quality
from ibf_core.news import daily_news
from ibf_core.report import heatmap_markdown, markdown_table
from ibf_core.settings import Settings
from ibf_core.storage.tables import MARKET_BARS, NEWS_SENTIMENT
from ibf_core.streaming.microstructure import MICROSTRUCTURE_DAILY
from ibf_dagster.metadata import check_result, partition_result, plot_if_small, table_asset
from ibf_dagster.partitions import context_rectangles, require_upstream, symbol_date_partitions
from ibf_dagster.resources import SettingsResource, WarehouseResource

# Heavy imports (talib) stay inside the functions that need them: importing this module loads none of them.

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
CHECKS = {
    "no_infinities": (ERROR, "No infinite feature value (ERROR)"),
    "nan_share_after_warmup": (
        ERROR,
        f"Each feature at most {quality.MAX_NAN_SHARE_AFTER_WARMUP:.0%} NaN past its own warm-up, on the rows "
        "whose bars have the inputs it reads; features the data cannot support (no volume, close-only bars) and "
        "sparse inputs (real spread, news sentiment) are reported, not judged (ERROR)",
    ),
    "schema_matches": (ERROR, "Columns equal the declared feature registry, in order (ERROR)"),
    "news_coverage": (WARN, "Share of sessions with news per symbol (WARN)"),
}


def build_features(settings: Settings) -> dg.AssetsDefinition:
    from ibf_core.features.pipeline import (
        FEATURES,
        compute_features_for_range,
        feature_columns,
        lookback_sessions,
        sparse_features,
        unsupported_reasons,
    )

    spec = features_spec()
    sparse = sparse_features()
    feature_list = "\n".join(f"| `{f.name}` | {f.group} | {'yes' if f.future_known else ''} | {f.description} |" for f in FEATURES)

    @table_asset(
        spec,
        description=(
            f"{len(FEATURES)} scale-free features per symbol and NYSE session from `market_bars` and "
            "`news_sentiment` (and `microstructure_daily` where ibf stream collected the session): TA-Lib indicators, "
            "microstructure estimators, cross-asset beta/correlation/ranks, calendar (future-known), news and the "
            "live microstructure (NULL for sessions without live data). Row d uses only data known at d's close; gaps are forward-filled "
            "only; each partition loads its own look-back window, so a single-day partition is exact."
        ),
        partitions_def=symbol_date_partitions(settings),
        deps=[MARKET_BARS.name, NEWS_SENTIMENT.name, MICROSTRUCTURE_DAILY.name, FUNDAMENTALS.name, MACRO_INDICATORS_TABLE.name],
        metadata={
            "features": dg.MetadataValue.md("| feature | group | future-known | description |\n|---|---|---|---|\n" + feature_list),
        },
        check_specs=[
            dg.AssetCheckSpec(name, asset=spec.name, description=desc, blocking=severity == ERROR)
            for name, (severity, desc) in CHECKS.items()
        ],
        # A daily fundamentals/macro refresh must not recompute every stored session's features: later sessions
        # read the new values when they are computed; re-materialize features to rebuild history with them.
        automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets(FUNDAMENTALS.name, MACRO_INDICATORS_TABLE.name)),
        group="features",
        layer="features",
        domain="features",
    )
    def features(context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
        settings = ibf.get()
        require_upstream(context, dg.AssetKey(MARKET_BARS.name))
        store = warehouse.get()
        rects = context_rectangles(context, settings)
        # Cross-asset features (universe index, cross-sectional ranks) need every stored symbol on the same dates.
        universe = store.symbols(MARKET_BARS)
        columns = feature_columns()
        frames, supports, live_rows = [], [], 0
        for rect in rects:
            first = lookback_start(rect.start, lookback_sessions())
            bars = store.read(MARKET_BARS, universe, first, rect.end)
            news = daily_news(store, universe, first, rect.end) if settings.news_source != "none" else None
            live = store.read(MICROSTRUCTURE_DAILY, universe, rect.start, rect.end)
            signals = read_inputs(store, universe, first, rect.end)
            out, support = compute_features_for_range(
                bars, rect.start, rect.end, news=news, benchmark=settings.benchmark, with_support=True,
                microstructure_daily=live, fundamentals=signals,
            )
            live_rows += len(live)
            mine = out["symbol"].isin(rect.symbols).to_numpy()
            out = out[mine]
            store.replace_slice(spec, out, rect.symbols, rect.start, rect.end)
            frames.append(out)
            supports.append(support[mine])
        frame = pd.concat(frames, ignore_index=True)
        support = pd.concat(supports, ignore_index=True)
        symbols = sorted({s for r in rects for s in r.symbols})
        news_daily = store.read(NEWS_SENTIMENT, symbols, min(r.start for r in rects), max(r.end for r in rects))
        # With a single stored symbol there is nothing to compare against: cross-asset features are NaN by design.
        undefined = {f.name for f in FEATURES if f.group == "cross_asset"} if len(universe) < 2 else set()
        checks = [
            check_result(quality.check_no_infinities(frame, columns), ERROR),
            check_result(quality.check_nan_share_after_warmup(frame, columns, sparse | undefined, support=support), ERROR),
            check_result(quality.check_schema(frame, ["symbol", "date", *columns, "warmup"]), ERROR),
            check_result(quality.check_news_coverage(news_daily, symbols, settings.news_source), WARN),
        ]
        ready = frame[~frame["warmup"]]
        nan_share = quality.nan_shares_where_supported(frame, support, columns).sort_values(ascending=False).head(10)
        return partition_result(
            context,
            metadata={
                "dagster/row_count": len(frame),
                "feature_count": len(columns),
                "warmup_rows": int(frame["warmup"].sum()),
                "news": "included" if settings.news_source != "none" else "none (IBF_NEWS_SOURCE=none): news features are empty",
                "live_microstructure_sessions": live_rows,
                "fundamentals_source": settings.fundamentals_source,
                "benchmark": settings.benchmark if settings.benchmark in universe else "equal-weighted universe",
                "features_not_supported": dg.MetadataValue.json(unsupported_reasons(support, columns)),
                "highest_nan_share_after_warmup": dg.MetadataValue.md(
                    markdown_table(nan_share.rename("nan_share").reset_index().rename(columns={"index": "feature"}))
                ),
                "correlation_heatmap": plot_if_small(context, lambda: _heatmap(ready, columns)),
            },
            check_results=checks,
        )

    return features


def _heatmap(frame: pd.DataFrame, columns: list[str], top: int = 16) -> str:
    """A small correlation heat map (inline PNG) of the most populated features."""
    if len(frame) < 30:
        return "_too few rows past the warm-up for a correlation map_"
    chosen = frame[columns].notna().mean().sort_values(ascending=False).index[:top]
    return heatmap_markdown(frame[list(chosen)].corr(), "feature correlation")
