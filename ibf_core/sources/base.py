"""The one interface every market-bar source implements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from ibf_core.market.checks import BarSlice

# Heavy imports (numpy) stay inside the functions that need them: importing this module loads none of them.


@dataclass(frozen=True)
class SymbolLookup:
    """A source's answer to "which of these symbols do you know?": those it does not, and where it looked."""

    unknown: tuple[str, ...]
    where: str  # completes "source NAME: ...", e.g. "/data/bars.csv has AAPL, MSFT"


def listed(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c and 7 more``: a long list truncated for one error line."""
    shown = ", ".join(names[:limit]) or "nothing"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@runtime_checkable
class BarSource(Protocol):
    """A source of daily bars. ``fetch_daily_bars`` returns the canonical frame of ``ibf_core.market.bars``.

    The frame holds ``symbol, date, open, high, low, close, adj_close, volume`` for the trading days in
    ``[start, end]`` the source has, validated and split-adjusted. An unknown symbol raises
    ``UnknownSymbolError``; other failures raise a ``SourceError`` subclass naming symbol and range.
    ``lookup_symbols`` says which symbols the source does not know, before anything is fetched (the pre-flight
    check of ``ibf_core.sources.preflight``).
    """

    name: str

    def fetch_daily_bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame: ...

    def lookup_symbols(self, symbols: Sequence[str]) -> SymbolLookup: ...


@runtime_checkable
class IssueReportingSource(BarSource, Protocol):
    """A source that repairs or drops rows under the bar policy and says which (the csv source)."""

    def fetch_checked(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarSlice: ...


def fetch_slice(source: BarSource, symbols: Sequence[str], start: dt.date, end: dt.date) -> BarSlice:
    """The rectangle's bars and issues; a source that reports none (sample, ibkr: strict) gives no issues."""
    from ibf_core.market.checks import BarSlice, empty_issues

    if isinstance(source, IssueReportingSource):
        return source.fetch_checked(symbols, start, end)
    return BarSlice(source.fetch_daily_bars(symbols, start, end), empty_issues())
