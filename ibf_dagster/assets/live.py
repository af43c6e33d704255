"""The live tables ``ibf stream`` writes (observable source assets with stream checks) and ``microstructure_daily``
(symbol x date, measured once the session has closed), with the sensor that requests it after the close."""

import dagster as dg
import pandas as pd

from ibf_core.calendar import latest_complete_session
from ibf_core.settings import Settings
from ibf_core.streaming.microstructure import MICROSTRUCTURE_DAILY, check_measures, sessions_from_store
from ibf_core.streaming.monitor import (
    check_bar_gaps,
    check_crossed_quotes,
    check_stream_lag,
    check_unique_keys,
    newest_session,
)
from ibf_core.streaming.tables import INTRADAY_BARS, LIVE_TABLES, QUOTES
from ibf_dagster.compat import partition_range_tags
from ibf_dagster.metadata import OWNERS, check_result, column_schema, partition_result, table_asset
from ibf_dagster.partitions import (
    SYMBOL_PARTITIONS,
    context_rectangles,
    contiguous_blocks,
    date_key_of,
    symbol_date_partitions,
)  # fmt: skip
from ibf_dagster.resources import SettingsResource, WarehouseResource

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
LIVE_GROUP = "live"
WATCH_JOB = "live_stream_watch"


def _observer(spec) -> dg.AssetsDefinition:
    @dg.multi_observable_source_asset(
        name=f"observe_{spec.name}",
        specs=[dg.AssetSpec(
            spec.name,
            description=f"{spec.description} Written by `ibf stream` (not by Dagster); an observation records the "
            "newest session's rows, symbols and newest row time.",
            group_name=LIVE_GROUP,
            metadata={"dagster/column_schema": column_schema(spec), "dagster/table_name": spec.name},
            owners=OWNERS,
            kinds={"duckdb", "parquet", "ib"},
            tags={"layer": "raw", "domain": "live"},
        )],
    )
    def observe(warehouse: WarehouseResource):
        store = warehouse.get()
        stamp = store.table_stamp(spec) if store.exists() else None
        day, rows = newest_session(store, spec)
        newest = pd.to_datetime(rows["time"], utc=True).max() if len(rows) else None
        yield dg.ObserveResult(
            asset_key=spec.name,
            data_version=dg.DataVersion(str(stamp) if stamp is not None else "empty"),
            metadata={
                "newest_session": day or "none",
                "dagster/row_count": len(rows),
                "symbols": int(rows["symbol"].nunique()) if len(rows) else 0,
                "newest_row_utc": newest.isoformat() if newest is not None else "none",
            },
        )

    return observe


def build_live_sources(settings: Settings) -> tuple[list, list]:
    """The observable source assets of the live tables and their checks."""
    sources = [_observer(spec) for spec in LIVE_TABLES]

    @dg.asset_check(
        asset=INTRADAY_BARS.name,
        name="stream_lag",
        description=f"During market hours every streamed symbol's newest 5-second bar ended at most "
        f"IBF_STREAM_MAX_LAG_SECONDS ({settings.stream_max_lag_seconds:g} s) ago; passes while the market is closed (WARN)",
    )
    def stream_lag(ibf: SettingsResource, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        _, bars = newest_session(warehouse.get(), INTRADAY_BARS)
        return check_result(check_stream_lag(bars, pd.Timestamp.now(tz="UTC"), ibf.get().stream_max_lag_seconds), WARN)

    @dg.asset_check(
        asset=INTRADAY_BARS.name,
        name="no_gaps_in_session",
        description="No 5-second bar missing inside the stored stretch of the newest session, per symbol and bar "
        "type, regular hours only (a reconnect that lost bars shows here) (WARN)",
    )
    def no_gaps(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        _, bars = newest_session(warehouse.get(), INTRADAY_BARS)
        return check_result(check_bar_gaps(bars, pd.Timestamp.now(tz="UTC")), WARN)

    @dg.asset_check(asset=QUOTES.name, name="no_crossed_quotes",
                    description="No quote of the newest session with bid above ask (ERROR)")
    def no_crossed(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        _, book = newest_session(warehouse.get(), QUOTES)
        return check_result(check_crossed_quotes(book), ERROR)

    return sources, [stream_lag, no_gaps, no_crossed, *(_unique_keys(spec) for spec in LIVE_TABLES)]


def _unique_keys(spec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=spec.name, name="unique_keys",
                    description=f"No two rows of the newest session share the key ({', '.join(spec.key)}): what a "
                    "reconnect or a restart re-sends is stored once (ERROR)")
    def unique_keys(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        _, rows = newest_session(warehouse.get(), spec)
        return check_result(check_unique_keys(rows, list(spec.key)), ERROR)

    return unique_keys


def build_live_watch(settings: Settings) -> tuple:
    """A job observing the live tables and running their checks, scheduled each minute of the trading day
    (stopped by default: turn it on where ``ibf stream`` runs)."""
    job = dg.define_asset_job(
        WATCH_JOB,
        selection=dg.AssetSelection.assets(*(spec.name for spec in LIVE_TABLES)),
        description="Observe the live tables and run the stream checks (lag, gaps, crossed quotes).",
    )
    schedule = dg.ScheduleDefinition(
        name="live_stream_watch_schedule",
        job=job,
        cron_schedule="* 9-16 * * 1-5",
        execution_timezone="America/New_York",
        description="Each minute 09:00-16:59 New York on weekdays: observe the live tables and check the stream.",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    return job, schedule


def build_microstructure_daily(settings: Settings) -> dg.AssetsDefinition:
    spec = MICROSTRUCTURE_DAILY

    @table_asset(
        spec,
        description=(
            "The session's microstructure per symbol from the live tables: time-weighted quoted spread, effective "
            "spread, top-of-book depth imbalance, Lee-Ready trade-flow imbalance, Kyle's lambda, 5-second realized "
            "volatility, VWAP deviation, trade-size distribution. A session is measured only after its close; "
            "sessions ibf stream did not collect have no row (the live features are NULL there)."
        ),
        partitions_def=symbol_date_partitions(settings),
        deps=[INTRADAY_BARS.name, QUOTES.name],
        check_specs=[dg.AssetCheckSpec(
            "measures_finite", asset=spec.name, blocking=True,
            description="Every stored measure is finite or NULL, spreads non-negative, imbalances in [-1, 1] (ERROR)",
        )],
        group=LIVE_GROUP,
        layer="features",
        domain="live",
    )
    def microstructure_daily(context: dg.AssetExecutionContext, ibf: SettingsResource,
                             warehouse: WarehouseResource) -> dg.MaterializeResult:
        settings = ibf.get()
        store = warehouse.get()
        frames, still_open = [], set()
        for rect in context_rectangles(context, settings):
            daily, open_sessions = sessions_from_store(store, list(rect.symbols), rect.start, rect.end)
            still_open.update(open_sessions)
            store.replace_slice(spec, daily, rect.symbols, rect.start, rect.end)
            frames.append(daily)
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=spec.column_names)
        return partition_result(
            context,
            metadata={
                "dagster/row_count": len(frame),
                "sessions_measured": int(frame["date"].nunique()) if len(frame) else 0,
                "symbols_measured": int(frame["symbol"].nunique()) if len(frame) else 0,
                "sessions_not_closed_yet": dg.MetadataValue.json(sorted(still_open)),
                "median_coverage": float(frame["coverage"].median()) if len(frame) else 0.0,
            },
            check_results=[check_result(check_measures(frame), ERROR)],
        )

    return microstructure_daily


def build_microstructure_after_close(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="microstructure_after_close",
        description="Once a session has closed, requests `microstructure_daily` for the symbols ibf stream "
        "collected that session (one run per contiguous block of symbol partitions, keyed so it runs once).",
        minimum_interval_seconds=300,
        asset_selection=[MICROSTRUCTURE_DAILY.name],
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def microstructure_after_close(context: dg.SensorEvaluationContext, ibf: SettingsResource,
                                   warehouse: WarehouseResource) -> dg.SensorResult | dg.SkipReason:
        return after_close_requests(context.instance, warehouse.get(), ibf.get())

    return microstructure_after_close


def after_close_requests(instance: dg.DagsterInstance, store, settings: Settings,
                         now: pd.Timestamp | None = None) -> dg.SensorResult | dg.SkipReason:
    """Run requests for the newest closed session's streamed symbols (a session's run key is stable)."""
    session = latest_complete_session(now)
    key = date_key_of(session, settings)
    prefix = f"{session:%Y-%m-%d}."
    streamed = sorted({n[len(prefix):] for n in store.partitions(INTRADAY_BARS) if n.startswith(prefix)}) if store.exists() else []
    if not streamed:
        return dg.SkipReason(f"nothing streamed on {session} (the newest closed session)")
    known = list(instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name))
    missing = [s for s in streamed if s not in known]
    requests = []
    for block in contiguous_blocks(known + missing, streamed):
        first = dg.MultiPartitionKey({"date": key, "symbol": block[0]})
        last = dg.MultiPartitionKey({"date": key, "symbol": block[-1]})
        requests.append(dg.RunRequest(
            run_key=f"microstructure-{session}-{block[0]}-{block[-1]}",
            asset_selection=[dg.AssetKey(MICROSTRUCTURE_DAILY.name)],
            tags={**partition_range_tags(first, last), "ibf/trigger": "after_close"},
        ))
    extra = [SYMBOL_PARTITIONS.build_add_request(missing)] if missing else []
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=extra)
