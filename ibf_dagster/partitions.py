"""Symbol x date partitions shared by every per-symbol asset, and the rectangle a run covers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from ibf_core.calendar import holidays, to_date, trading_days
from ibf_core.settings import Settings

SYMBOL_PARTITIONS = dg.DynamicPartitionsDefinition(name="symbol")
NY_TZ = "America/New_York"
DATE_FMT = "%Y-%m-%d"


def date_partitions(settings: Settings) -> dg.PartitionsDefinition:
    """NYSE trading days (holidays excluded) or calendar months, from IBF_HISTORY_START.

    ``end_offset=1`` keeps the in-progress day/month as a partition so the daily update can refresh it.
    """
    start = settings.history_start
    if settings.date_partitions == "day":
        far = dt.date.today() + dt.timedelta(days=366)
        closed = [dt.datetime.combine(d, dt.time()) for d in holidays(start, far)]
        return dg.TimeWindowPartitionsDefinition(
            start=dt.datetime.combine(start, dt.time()),
            cron_schedule="0 0 * * 1-5",
            fmt=DATE_FMT,
            timezone=NY_TZ,
            end_offset=1,
            exclusions=closed,
        )
    return dg.MonthlyPartitionsDefinition(start_date=start.replace(day=1).isoformat(), timezone=NY_TZ, end_offset=1)


def symbol_date_partitions(settings: Settings) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({"date": date_partitions(settings), "symbol": SYMBOL_PARTITIONS})


def date_key_window(key: str, settings: Settings) -> tuple[dt.date, dt.date]:
    """First and last calendar day a date partition key covers."""
    first = to_date(key)
    if settings.date_partitions == "day":
        return first, first
    last = (pd.Timestamp(first) + pd.offsets.MonthEnd(0)).date()
    return first, last


@dataclass(frozen=True)
class Rectangle:
    """The symbols x [start, end] slice one run materializes."""

    symbols: tuple[str, ...]
    start: dt.date
    end: dt.date

    @property
    def sessions(self) -> int:
        return len(trading_days(self.start, self.end))


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
