"""Partitions: symbol x date for every per-symbol asset, training cut-offs, and the rectangle a run covers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from ibf_core.calendar import holidays, trading_days
from ibf_core.settings import Settings

SYMBOL_PARTITIONS = dg.DynamicPartitionsDefinition(name="symbol")
# Training cut-offs: one NYSE session each (weekly cadence and drift retrains add them).
MODEL_CUTOFFS = dg.DynamicPartitionsDefinition(name="model_cutoff")
NY_TZ = "America/New_York"


# cron of each window start and key format; a key names the first calendar day of its window
GRANULARITIES = {
    "day": ("0 0 * * 1-5", "%Y-%m-%d"),
    "month": ("0 0 1 * *", "%Y-%m"),
    "year": ("0 0 1 1 *", "%Y"),
}


def date_partitions(settings: Settings) -> dg.TimeWindowPartitionsDefinition:
    """NYSE trading days (holidays excluded), calendar months or years, from IBF_HISTORY_START.

    ``end_offset=1`` keeps the in-progress day/month/year as a partition so the daily update can refresh it.
    """
    cron, fmt = GRANULARITIES[settings.date_partitions]
    start = settings.history_start
    exclusions = None
    if settings.date_partitions == "day":
        far = dt.date.today() + dt.timedelta(days=366)
        exclusions = [dt.datetime.combine(d, dt.time()) for d in holidays(start, far)]
    elif settings.date_partitions == "month":
        start = start.replace(day=1)
    else:
        start = start.replace(month=1, day=1)
    return dg.TimeWindowPartitionsDefinition(
        start=dt.datetime.combine(start, dt.time()),
        cron_schedule=cron,
        fmt=fmt,
        timezone=NY_TZ,
        end_offset=1,
        exclusions=exclusions,
    )


def symbol_date_partitions(settings: Settings) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({"date": date_partitions(settings), "symbol": SYMBOL_PARTITIONS})


def date_key_of(day: dt.date, settings: Settings) -> str:
    """The date partition key whose window holds ``day``."""
    return day.strftime(GRANULARITIES[settings.date_partitions][1])


def date_key_window(key: str, settings: Settings) -> tuple[dt.date, dt.date]:
    """First and last calendar day a date partition key covers."""
    granularity = settings.date_partitions
    first = dt.datetime.strptime(key, GRANULARITIES[granularity][1]).date()
    if granularity == "day":
        return first, first
    if granularity == "month":
        return first, (pd.Timestamp(first) + pd.offsets.MonthEnd(0)).date()
    return first, first.replace(month=12, day=31)


@dataclass(frozen=True)
class Rectangle:
    """The symbols x [start, end] slice one run materializes."""

    symbols: tuple[str, ...]
    start: dt.date
    end: dt.date


def rectangles_from_keys(keys: list[dg.MultiPartitionKey], settings: Settings) -> list[Rectangle]:
    """Group partition keys into rectangles: one when the keys are a full date range x symbol set."""
    by_symbol: dict[str, set[str]] = {}
    for key in keys:
        by_symbol.setdefault(key.keys_by_dimension["symbol"], set()).add(key.keys_by_dimension["date"])
    groups: dict[tuple[str, ...], list[str]] = {}
    for symbol, dates in by_symbol.items():
        groups.setdefault(tuple(sorted(dates)), []).append(symbol)
    rects = []
    for dates, symbols in groups.items():
        windows = [date_key_window(d, settings) for d in dates]
        # date keys with no trading day between them collapse into one window; gaps split the rectangle
        start, end = windows[0]
        for lo, hi in windows[1:]:
            if len(trading_days(end + dt.timedelta(days=1), lo - dt.timedelta(days=1))) == 0:
                end = max(end, hi)
            else:
                rects.append(Rectangle(tuple(sorted(symbols)), start, end))
                start, end = lo, hi
        rects.append(Rectangle(tuple(sorted(symbols)), start, end))
    return rects


def context_rectangles(context: dg.AssetExecutionContext, settings: Settings) -> list[Rectangle]:
    """The rectangles of a (possibly single-run backfill) partitioned materialization."""
    keys = [k if isinstance(k, dg.MultiPartitionKey) else context.partitions_def.get_partition_key_from_str(k)
            for k in context.partition_keys]
    return rectangles_from_keys(keys, settings)


class UpstreamMissingError(RuntimeError):
    """An upstream partition this run needs was never materialized."""


def require_upstream(context: dg.AssetExecutionContext, upstream: dg.AssetKey) -> None:
    """Fail clearly, before anything is written, when ``upstream`` lacks some of this run's partitions."""
    done = context.instance.get_materialized_partitions(upstream)
    missing = sorted(str(k) for k in context.partition_keys if str(k) not in done)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UpstreamMissingError(
            f"{upstream.to_user_string()} is not materialized for partition(s) {shown}; "
            f"backfill it first (ibf backfill --assets {upstream.to_user_string()})"
        )


def contiguous_blocks(ordered: Sequence[str], wanted: Sequence[str]) -> list[list[str]]:
    """Split ``wanted`` into runs of symbols adjacent in the partition order (one Dagster range per block)."""
    wanted_set, blocks, current = set(wanted), [], []
    for symbol in ordered:
        if symbol in wanted_set:
            current.append(symbol)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks
