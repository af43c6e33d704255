"""Real daily bars shipped by ``bokeh-sampledata`` (Quandl WIKI, public domain), the offline default source.

AAPL, IBM and MSFT cover 2000-03-01..2013-03-01, GOOG 2004-08-19..2013-03-01, FB 2012-05-18..2013-03-01.
OHLCV are unadjusted in the file; ``split_adjust`` removes the AAPL (2000, 2005) and MSFT (2003) splits.
GOOG's volume is already adjusted for its 2014 2-for-1 split while its prices are not, so the volume is
halved here to match the prices (its IPO day then reads 22.3 M shares, as reported at the time).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import lru_cache

import pandas as pd

from ibf_core.market.bars import split_adjust
from ibf_core.market.checks import validate_bars
from ibf_core.sources.base import SymbolLookup
from ibf_core.sources.errors import UnknownSymbolError

# Heavy imports (bokeh_sampledata) stay inside the functions that need them: importing this module loads none of them.

SAMPLE_SYMBOLS = ("AAPL", "FB", "GOOG", "IBM", "MSFT")
SAMPLE_FIRST_DATE, SAMPLE_LAST_DATE = dt.date(2000, 3, 1), dt.date(2013, 3, 1)
_GOOG_POST_DATA_SPLIT = 2.0


@lru_cache(maxsize=1)
def load_sample_bars() -> pd.DataFrame:
    """All sample bars as the canonical frame (validated, split-adjusted)."""
    from bokeh_sampledata import package_dir

    path = package_dir() / "stocks.csv.gz"
    raw = pd.read_csv(path)
    raw = raw.rename(columns={"Ticker": "symbol", "Adj Close": "adj_close"})
    raw.columns = [c.lower() for c in raw.columns]
    goog = raw["symbol"] == "GOOG"
    raw.loc[goog, "volume"] = (raw.loc[goog, "volume"] / _GOOG_POST_DATA_SPLIT).round()
    raw["_line"] = raw.index + 2
    return split_adjust(validate_bars(raw, origin=f"bokeh-sampledata {path.name}"))


class SampleSource:
    """Offline source over the embedded sample."""

    name = "sample"

    def lookup_symbols(self, symbols: Sequence[str]) -> SymbolLookup:
        """The symbols not in the embedded sample (no file is read: the sample's symbols are fixed)."""
        unknown = tuple(s for s in symbols if s not in SAMPLE_SYMBOLS)
        return SymbolLookup(unknown, f"the embedded sample has {', '.join(SAMPLE_SYMBOLS)}")

    def fetch_daily_bars(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        bars = load_sample_bars()
        unknown = [s for s in symbols if s not in SAMPLE_SYMBOLS]
        if unknown:
            raise UnknownSymbolError(
                ", ".join(unknown), f"the sample source has only {', '.join(SAMPLE_SYMBOLS)}"
            )
        mask = bars["symbol"].isin(list(symbols)) & bars["date"].between(pd.Timestamp(start), pd.Timestamp(end))
        return bars.loc[mask].reset_index(drop=True)
