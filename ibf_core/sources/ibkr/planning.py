"""Which historical requests a date range needs: <= 1-year chunks and the runs of sessions still missing."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import pandas as pd

from ibf_core.calendar import all_sessions, trading_days
from ibf_core.sources.ibkr.parsing import EASTERN

MAX_DAYS_PER_D_DURATION = 365  # IB: longer durations must be given in years
# Consecutive "1 Y" chunks overlap by a week, so a gateway whose "1 Y" means 52 weeks leaves no gap.
CHUNK_OVERLAP_DAYS = 7


# ---- request planning ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Chunk:
    """One TRADES request: bars for [first, end] asked as ``duration`` ending at ``end``."""

    end: dt.date
    duration: str
    first: dt.date

    @property
    def end_date_time(self) -> str:
        # Explicit zone: ib_insync would turn a date into the caller's local midnight, which shifts the day.
        return f"{self.end:%Y%m%d} 23:59:59 {EASTERN}"


def plan_chunks(first: dt.date, last: dt.date) -> list[Chunk]:
    """Requests covering [first, last], newest first, each at most one year ('1 Y' or 'N D')."""
    chunks: list[Chunk] = []
    end = last
    while end >= first:
        days = (end - first).days + 1
        if days <= MAX_DAYS_PER_D_DURATION:
            chunks.append(Chunk(end, f"{days} D", first))
            break
        year_first = (pd.Timestamp(end) - pd.DateOffset(years=1)).date() + dt.timedelta(days=1)
        chunks.append(Chunk(end, "1 Y", year_first))
        if year_first <= first:
            break
        end = year_first - dt.timedelta(days=1) + dt.timedelta(days=CHUNK_OVERLAP_DAYS)
    return chunks


def session_runs(sessions: pd.DatetimeIndex) -> list[tuple[dt.date, dt.date]]:
    """Split sessions into runs of consecutive NYSE sessions, oldest first."""
    if len(sessions) == 0:
        return []
    positions = all_sessions().get_indexer(sessions)
    runs, run_start = [], 0
    for i in range(1, len(sessions) + 1):
        if i == len(sessions) or positions[i] != positions[i - 1] + 1:
            runs.append((sessions[run_start].date(), sessions[i - 1].date()))
            run_start = i
    return runs


def merge_ranges(ranges: Sequence[tuple[dt.date, dt.date]]) -> list[tuple[dt.date, dt.date]]:
    """Coalesce date ranges that overlap or have no NYSE session between them."""
    merged: list[tuple[dt.date, dt.date]] = []
    for lo, hi in sorted(ranges):
        if merged:
            prev_lo, prev_hi = merged[-1]
            gap_start = prev_hi + dt.timedelta(days=1)
            if lo <= gap_start or len(trading_days(gap_start, lo - dt.timedelta(days=1))) == 0:
                merged[-1] = (prev_lo, max(prev_hi, hi))
                continue
        merged.append((lo, hi))
    return merged
