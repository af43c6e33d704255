"""``market_bars``: daily bars per symbol x date partition, written to DuckDB, with its checks."""


import dagster as dg
import pandas as pd

from ibf_core.market import quality
from ibf_core.market.ingest import load_market_bars
from ibf_core.market.issues import IssueSummary
from ibf_core.market.quality import QualityResult
from ibf_core.report import line_plot_markdown, markdown_table
from ibf_core.settings import Settings
from ibf_core.storage import space
from ibf_core.storage.tables import MARKET_BARS
from ibf_dagster.metadata import check_result, partition_result, plot_if_small, table_asset
from ibf_dagster.partitions import context_rectangles, symbol_date_partitions
from ibf_dagster.resources import BarSourceResource, SettingsResource, WarehouseResource

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
# Checks evaluated on every materialized slice, with their severity.
SLICE_CHECKS = {
    "ohlc_consistent": (
        ERROR,
        "Stored prices positive and open/close within [low, high], after the bar policy's repairs; metadata counts "
        "the rows the load repaired and dropped (ERROR)",
        quality.check_ohlc_consistency,
    ),
    "unique_symbol_date": (ERROR, "At most one bar per (symbol, date) (ERROR)", quality.check_unique_key),
    "no_missing_trading_days": (WARN, "No NYSE session missing inside the stored range (WARN)", quality.check_missing_days),
    "no_unexplained_jumps": (
        WARN,
        f"No daily |log return| above {quality.MAX_ABS_LOG_RETURN} unless a split explains it (WARN)",
        quality.check_return_jumps,
    ),
}


def build_market_bars(settings: Settings) -> dg.AssetsDefinition:
    """The ``market_bars`` asset, with its checks, for these settings' partitions."""
    partitions = symbol_date_partitions(settings)
    # Checks of the whole table and of the disk, evaluated by the asset's own step after each write: as asset checks
    # of their own, each was a step of the run whose result made Dagster fetch the data versions of every
    # materialized partition (1.0-1.1 s each at 500 symbols for a few milliseconds of work).
    store_checks = {
        "fresh": (
            f"Every symbol's newest bar is at most IBF_FRESHNESS_MAX_SESSIONS ({settings.freshness_max_sessions}) "
            "NYSE sessions behind the latest complete session (WARN)."
        ),
        "disk_space": (
            f"At least IBF_MIN_FREE_MIB ({settings.min_free_mib} MiB) free on the filesystem under IBF_HOME, so the "
            "next writes do not hit a full disk (WARN; `/ready` answers 503 below it as well)."
        ),
    }

    @table_asset(
        MARKET_BARS,
        description=(
            "Daily OHLCV bars (split-adjusted; adj_close also dividend-adjusted) per symbol and NYSE trading day, "
            "from the configured source (sample, csv or ibkr). Stored as Parquet per symbol, queried as the "
            "DuckDB view `market_bars`."
        ),
        partitions_def=partitions,
        check_specs=[
            *(dg.AssetCheckSpec(name, asset=MARKET_BARS.name, description=desc, blocking=severity == ERROR)
              for name, (severity, desc, _) in SLICE_CHECKS.items()),
            *(dg.AssetCheckSpec(name, asset=MARKET_BARS.name, description=desc) for name, desc in store_checks.items()),
        ],
        automation_condition=dg.AutomationCondition.on_cron("0 18 * * 1-5", "America/New_York"),
        group="market_data",
        layer="raw",
        domain="market_data",
    )
    def market_bars(
        context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource, bar_source: BarSourceResource
    ) -> dg.MaterializeResult:
        settings = ibf.get()
        store, source = warehouse.get(), bar_source.get(settings)
        rects = context_rectangles(context, settings)
        written = replaced = 0
        recorded = []
        for rect in rects:
            context.log.info(f"{source.name}: {len(rect.symbols)} symbols, {rect.start}..{rect.end}")
            result = load_market_bars(source, store, rect.symbols, rect.start, rect.end)
            written += result.write.rows_written
            replaced += result.write.rows_replaced
            recorded.append(result.issues)
        symbols = sorted({s for r in rects for s in r.symbols})
        start, end = min(r.start for r in rects), max(r.end for r in rects)
        stored = store.read(MARKET_BARS, symbols, start, end)
        issues = pd.concat(recorded, ignore_index=True)
        summary = IssueSummary.of(issues)
        checks = [
            check_result(quality.check_ohlc_consistency(stored, issues) if name == "ohlc_consistent" else fn(stored), sev)
            for name, (sev, _, fn) in SLICE_CHECKS.items()
        ]
        checks += [check_result(freshness(settings, store), WARN), check_result(disk_space(settings), WARN)]
        context.log.info(f"market_bars: {summary.line()}")
        preview = stored.groupby("symbol").tail(2)[["symbol", "date", "open", "high", "low", "close", "adj_close", "volume"]]
        return partition_result(
            context,
            metadata={
                "partitions": len(context.partition_keys),
                "dagster/row_count": written,
                "rows_replaced": replaced,
                "source": source.name,
                "symbols": ", ".join(symbols),
                "first_date": str(stored["date"].min().date()) if len(stored) else "none",
                "last_date": str(stored["date"].max().date()) if len(stored) else "none",
                "rectangles": len(rects),
                "bar_issues": summary.line(),
                "rows_repaired": summary.rows_repaired,
                "rows_dropped": summary.rows_dropped,
                "issues_by_rule": dg.MetadataValue.json(summary.by_rule),
                "preview": dg.MetadataValue.md(markdown_table(preview.assign(date=preview["date"].dt.date))),
                "closes": plot_if_small(
                    context, lambda: line_plot_markdown(stored, "date", "close", "symbol", "close (split-adjusted)")
                ),
            },
            check_results=checks,
        )

    return market_bars


def freshness(settings: Settings, store) -> QualityResult:
    """The ``fresh`` check: every symbol's newest stored bar against the latest complete session."""
    latest = store.query("SELECT symbol, max(date) AS last FROM market_bars GROUP BY symbol")
    by_symbol = {r.symbol: pd.Timestamp(r.last).date() for r in latest.itertuples()}
    return quality.check_freshness(by_symbol, settings.freshness_max_sessions)


def disk_space(settings: Settings) -> QualityResult:
    """The ``disk_space`` check: free space under IBF_HOME against IBF_MIN_FREE_MIB."""
    found = space.free_space(settings.home_dir, settings.min_free_mib)
    details = {"free_bytes": found.free_bytes, "floor_bytes": found.floor_bytes}
    return QualityResult("disk_space", found.ok, found.summary(), details)
