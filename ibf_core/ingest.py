"""Load market bars for a symbol x date rectangle from a source into the warehouse (one atomic slice write)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ibf_core.progress import report_progress
from ibf_core.sources.base import BarSource
from ibf_core.storage.tables import MARKET_BARS
from ibf_core.storage.warehouse import Warehouse, WriteResult

@dataclass(frozen=True)
class IngestResult:
    write: WriteResult


def fetch_rectangle(source: BarSource, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
    """All bars of ``symbols`` in ``[start, end]`` in one source call (file sources read their input once;
    the ibkr source reports per-symbol progress itself)."""
    report_progress(0, len(symbols), f"{source.name}: fetching {len(symbols)} symbols")
    bars = source.fetch_daily_bars(list(symbols), start, end)
    report_progress(len(symbols), len(symbols), f"{source.name}: {len(bars):,} bars")
    return bars.assign(source=source.name)


def load_market_bars(
    source: BarSource, warehouse: Warehouse, symbols: Sequence[str], start: dt.date, end: dt.date
) -> IngestResult:
    """Fetch the rectangle, then replace exactly that slice of ``market_bars``; on any error nothing is written."""
    bars = fetch_rectangle(source, symbols, start, end)
    write = warehouse.replace_slice(MARKET_BARS, bars, symbols, start, end)
    return IngestResult(write=write)
