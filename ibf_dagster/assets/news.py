"""``news_sentiment``: articles per symbol and trading day (Alpha Vantage, a headline file, or none), with checks."""

import dagster as dg
import pandas as pd

from ibf_core.market import quality
from ibf_core.news import daily_news, load_news
from ibf_core.report import markdown_table
from ibf_core.settings import Settings
from ibf_core.storage.tables import NEWS_SENTIMENT
from ibf_dagster.metadata import check_result, partition_result, table_asset
from ibf_dagster.partitions import context_rectangles, symbol_date_partitions
from ibf_dagster.resources import SettingsResource, WarehouseResource

WARN = dg.AssetCheckSeverity.WARN


def build_news_sentiment(settings: Settings) -> dg.AssetsDefinition:
    @table_asset(
        NEWS_SENTIMENT,
        description=(
            "Daily news per symbol and NYSE session: article count, mean and relevance-weighted ticker sentiment, "
            "bullish/bearish shares and news-volume z-score. Articles published after a session's close count for "
            "the next session. Source: IBF_NEWS_SOURCE (alphavantage, file, none); raw articles are stored once per "
            "URL in `news_articles`, their ticker mentions in `news_mentions`."
        ),
        partitions_def=symbol_date_partitions(settings),
        check_specs=[dg.AssetCheckSpec("news_coverage", asset=NEWS_SENTIMENT.name,
                                       description="Share of sessions with news per symbol (WARN)")],
        automation_condition=dg.AutomationCondition.on_cron("0 18 * * 1-5", "America/New_York"),
        group="news",
        layer="raw",
        domain="news",
    )
    def news_sentiment(context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
        settings = ibf.get()
        store = warehouse.get()
        rects = context_rectangles(context, settings)
        notes, fetched = [], 0
        for rect in rects:
            loaded = load_news(settings, store, list(rect.symbols), rect.start, rect.end)
            fetched += loaded.articles
            notes.append(loaded.note)
            # Fetched articles are kept (the next run resumes), but unfetched sessions must not be stored
            # as zero-article days: stop here with the remaining ranges named.
            loaded.raise_if_incomplete()
        written = 0
        daily_frames = []
        for rect in rects:
            daily = daily_news(store, list(rect.symbols), rect.start, rect.end)
            store.replace_slice(NEWS_SENTIMENT, daily, rect.symbols, rect.start, rect.end)
            written += len(daily)
            daily_frames.append(daily)

        daily = pd.concat(daily_frames, ignore_index=True)
        symbols = sorted({s for r in rects for s in r.symbols})
        coverage = quality.check_news_coverage(daily, symbols, settings.news_source)
        with_news = daily[daily["news_count"] > 0]
        return partition_result(
            context,
            metadata={
                "dagster/row_count": written,
                "news_source": settings.news_source,
                "articles_fetched": fetched,
                "sessions_with_news": int(len(with_news)),
                "notes": "; ".join(n for n in notes if n) or "-",
                "preview": dg.MetadataValue.md(markdown_table(with_news.tail(8).assign(date=lambda f: f["date"].dt.date))),
            },
            check_results=[check_result(coverage, WARN)],
        )

    return news_sentiment
