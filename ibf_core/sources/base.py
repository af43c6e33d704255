"""The one interface every market-bar source implements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pandas as pd


@runtime_checkable
class BarSource(Protocol):
    """A source of daily bars. ``fetch_daily_bars`` returns the canonical frame of ``ibf_core.bars``.

    The frame holds ``symbol, date, open, high, low, close, adj_close, volume`` for the trading days in
    ``[start, end]`` the source has, validated and split-adjusted. An unknown symbol raises
    ``UnknownSymbolError``; other failures raise a ``SourceError`` subclass naming symbol and range.
    """

    name: str

    def fetch_daily_bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame: ...
