"""``fundamentals`` (per symbol: company overview snapshot, quarterly earnings, scheduled announcements) and
``macro_indicators`` (by date: Treasury yields, fed funds, CPI, unemployment), with point-in-time checks."""

import dagster as dg
import pandas as pd

from ibf_core.fundamentals.checks import (
    check_coverage,
    check_earnings_point_in_time,
    check_macro_coverage,
    check_macro_point_in_time,
)
from ibf_core.fundamentals.load import load_fundamentals, load_macro, read_inputs
from ibf_core.fundamentals.store import FUNDAMENTALS as FUNDAMENTALS_TABLE
from ibf_core.fundamentals.store import MACRO_INDICATORS_TABLE
from ibf_core.report import markdown_table
from ibf_core.settings import Settings
from ibf_dagster.metadata import check_result, partition_result, table_asset
from ibf_dagster.partitions import SYMBOL_PARTITIONS, date_partitions
from ibf_dagster.resources import SettingsResource, WarehouseResource

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN
FUNDAMENTALS = FUNDAMENTALS_TABLE.name
MACRO_INDICATORS = MACRO_INDICATORS_TABLE.name


def _issues_table(issues) -> dg.MetadataValue:
    frame = pd.DataFrame(list(issues), columns=["subject", "endpoint", "reason"]).head(20)
    return dg.MetadataValue.md(markdown_table(frame) if len(frame) else "_none_")


def build_fundamentals(settings: Settings) -> dg.AssetsDefinition:
    @table_asset(
        FUNDAMENTALS_TABLE,
        description=(
            "Per symbol, from Alpha Vantage (IBF_FUNDAMENTALS_SOURCE): the company overview recorded once per session "
            "(sector, industry, exchange; snapshot fields such as shares outstanding, analyst target and ratings exist "
            "from the first recording on and are never back-filled), quarterly earnings in `earnings` (reported and "
            "estimated EPS, surprise, report time; usable from the session after an after-close report) and scheduled "
            "announcements in `earnings_calendar`. What could not be loaded is in `fundamentals_issues`."
        ),
        partitions_def=SYMBOL_PARTITIONS,
        check_specs=[
            dg.AssetCheckSpec("earnings_point_in_time", asset=FUNDAMENTALS, blocking=True,
                              description="No earnings row is usable before its report: date after reported_date "
                                          "unless pre-market on a session (ERROR)"),
            dg.AssetCheckSpec("fundamentals_coverage", asset=FUNDAMENTALS,
                              description="Symbols without an overview or earnings, with the reason (WARN)"),
        ],
        automation_condition=dg.AutomationCondition.on_cron("30 18 * * 1-5", "America/New_York"),
        group="fundamentals",
        layer="raw",
        domain="fundamentals",
    )
    def fundamentals(context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
        settings = ibf.get()
        store = warehouse.get()
        symbols = sorted(context.partition_keys)
        result = load_fundamentals(settings, store, symbols)
        # What was fetched is kept (the next run resumes), but partitions not fetched must not read as done.
        result.raise_if_incomplete()
        inputs = read_inputs(store, symbols)
        newest = inputs.overview.sort_values("date").groupby("symbol").tail(1)
        return partition_result(
            context,
            metadata={
                "dagster/row_count": int(len(inputs.overview) + len(inputs.earnings)),
                "overview_rows": len(inputs.overview),
                "earnings_rows": len(inputs.earnings),
                "calendar_rows": len(inputs.calendar),
                "issues": _issues_table(result.issues),
                **{k: v for k, v in result.metadata().items() if k not in ("issues", "issue_examples")},
                "overview": dg.MetadataValue.md(markdown_table(
                    newest[["symbol", "date", "sector", "industry", "shares_outstanding", "analyst_target_price"]]
                    .assign(date=lambda f: f["date"].dt.date).head(20)) if len(newest) else "_none_"),
            },
            check_results=[
                check_result(check_earnings_point_in_time(inputs.earnings), ERROR),
                check_result(check_coverage(symbols, inputs, result.issues), WARN),
            ],
        )

    return fundamentals


def build_macro_indicators(settings: Settings) -> dg.AssetsDefinition:
    @table_asset(
        MACRO_INDICATORS_TABLE,
        description=(
            "Treasury yields (3-month, 2-year, 10-year), the effective federal funds rate, CPI and the unemployment "
            "rate from Alpha Vantage's economic endpoints, each value dated by the first session after its "
            "publication (period + the documented release lag), so a feature never sees a value before it was "
            "published. Missing months are recorded in `fundamentals_issues`, never filled."
        ),
        partitions_def=date_partitions(settings),
        check_specs=[
            dg.AssetCheckSpec("published_before_use", asset=MACRO_INDICATORS, blocking=True,
                              description="Every value is usable only after its period and release lag (ERROR)"),
            dg.AssetCheckSpec("macro_coverage", asset=MACRO_INDICATORS,
                              description="Indicators without values up to the partition, with the reason (WARN)"),
        ],
        automation_condition=dg.AutomationCondition.on_cron("45 18 * * 1-5", "America/New_York"),
        group="fundamentals",
        layer="raw",
        domain="macro",
    )
    def macro_indicators(context: dg.AssetExecutionContext, ibf: SettingsResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
        settings = ibf.get()
        store = warehouse.get()
        window = context.partition_time_window
        end = (pd.Timestamp(window.end).tz_localize(None) - pd.Timedelta(days=1)).normalize()
        result = load_macro(settings, store)
        result.raise_if_incomplete()
        macro = read_inputs(store, []).macro
        known = macro[pd.to_datetime(macro["date"]) <= end]
        latest = known.sort_values(["date", "period"]).groupby("indicator").tail(1)
        return partition_result(
            context,
            metadata={
                "dagster/row_count": int(len(known)),
                **{k: v for k, v in result.metadata().items() if k not in ("issues", "issue_examples")},
                "indicators": int(macro["indicator"].nunique()) if len(macro) else 0,
                "issues": _issues_table(result.issues),
                "known_at_partition_end": dg.MetadataValue.md(markdown_table(
                    latest[["indicator", "period", "date", "value"]].assign(
                        period=lambda f: pd.to_datetime(f["period"]).dt.date, date=lambda f: pd.to_datetime(f["date"]).dt.date
                    )) if len(latest) else "_none_"),
            },
            check_results=[
                check_result(check_macro_point_in_time(macro), ERROR),
                check_result(check_macro_coverage(known, end, result.issues), WARN),
            ],
        )

    return macro_indicators
