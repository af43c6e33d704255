"""Load market bars for a symbol x date rectangle from a source into the warehouse (one atomic slice write),
together with the issues the bar policy recorded for it (``bar_issues``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ibf_core.market.checks import BarSlice
from ibf_core.market.issues import IssueSummary, write_bars_and_issues
from ibf_core.progress import report_progress
from ibf_core.sources.base import BarSource, fetch_slice
from ibf_core.storage.warehouse import Warehouse, WriteResult


@dataclass(frozen=True)
class IngestResult:
    write: WriteResult
    issues: pd.DataFrame  # bar_issues rows recorded inside the slice (missing sessions included)

    @property
    def summary(self) -> IssueSummary:
        return IssueSummary.of(self.issues)


def fetch_rectangle(source: BarSource, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarSlice:
    """All bars of ``symbols`` in ``[start, end]`` and their issues in one source call (file sources read their
    input once; the ibkr source reports per-symbol progress itself)."""
    report_progress(0, len(symbols), f"{source.name}: fetching {len(symbols)} symbols")
    fetched = fetch_slice(source, list(symbols), start, end)
    report_progress(len(symbols), len(symbols), f"{source.name}: {len(fetched.bars):,} bars")
    return BarSlice(fetched.bars.assign(source=source.name), fetched.issues)


def load_market_bars(
    source: BarSource, warehouse: Warehouse, symbols: Sequence[str], start: dt.date, end: dt.date
) -> IngestResult:
    """Fetch the rectangle, then replace exactly that slice of ``market_bars`` and of ``bar_issues``; on any error
    before the bars are swapped in nothing is written."""
    fetched = fetch_rectangle(source, symbols, start, end)
    write, issues = write_bars_and_issues(warehouse, fetched, symbols, start, end, source.name)
    return IngestResult(write=write, issues=issues)
