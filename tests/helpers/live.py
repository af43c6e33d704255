"""The live side of the IB Gateway simulator: the sample session it streams and how fast (the ``live_sim`` fixture)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from ibf_core.sim.intraday import DailyBar
from ibf_core.sources.sample import load_sample_bars

DAY = dt.date(2013, 2, 28)
SPEED = 200.0  # a 5-second bar every 25 ms
SLOW_SPEED = 50.0  # a 5-second bar every 100 ms (the slow_live_sim fixture)


def sample_day(symbol: str, date: dt.date = DAY) -> DailyBar:
    bars = load_sample_bars()
    row = bars[(bars.symbol == symbol) & (pd.to_datetime(bars.date).dt.date == date)].iloc[0]
    return DailyBar(symbol, date, row.open, row.high, row.low, row.close, row.volume)
