"""Point in time: the first NYSE session whose feature row may use a fundamentals, earnings or macro value.

A feature row of session d is computed after d's close and reads only values with ``date <= d``; ``date`` is the
first session whose close comes after the value was published. When the hour is unknown we assume after the close.

- Earnings (``EARNINGS``): a ``pre-market`` report on a session counts for that session; a ``post-market`` report,
  an unknown time, or a report dated on a non-session day counts for the next session strictly after the reported
  date (conservative: a report during market hours is also moved to the next session).
- Snapshots (``OVERVIEW``) and scheduled announcements (``EARNINGS_CALENDAR``) count for the *recording session*:
  fetched before today's close, today's session if today is one (else the next session); at or after the close,
  the next session. They are what Alpha Vantage says at that moment and are never back-dated.
- Macro (``RELEASE_LAG``): a value labelled ``period`` is published ``RELEASE_LAG[indicator]`` calendar days after
  the period's end (the day itself for daily series, the month's last day for monthly ones); ``date`` is the first
  session strictly after that publication day.

The lags, and why:

- ``treasury_3m``/``treasury_2y``/``treasury_10y`` (0): Treasury posts the day's par yield curve in the late
  afternoon, at or after the equity close, so day D's yields feed the next session after D.
- ``fed_funds`` (0): the New York Fed publishes the effective rate of day D at 9:00 ET on the next business day,
  before the open, so the next session after D may use it. Caveat: on the few NYSE sessions that are Federal
  Reserve holidays (Columbus Day, Veterans Day) it comes one business day later, one session after our date.
- ``cpi`` (17): BLS releases CPI for month M at 8:30 ET (before the open) between about the 10th and the 17th of
  M+1. Month end + 17 days is the 17th of M+1, and the first session strictly after it is never before a release on
  the 17th or earlier; mid-month (+15) would date the releases on the 16th-17th (e.g. January 2011's, released
  2011-02-17) a session or two before publication.
- ``unemployment`` (9): the Employment Situation for M comes out at 8:30 ET on a Friday between the 1st and about
  the 10th of M+1 (e.g. December 2024's on 2025-01-10). Month end + 9 days keeps every release on or before the
  10th from being used early; month end + 7 would put the 10 January releases two sessions early.

Releases postponed by a government shutdown (October 2013, October-November 2025) come weeks later than these lags
assume; those few months are used early by that margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ibf_core.calendar import all_sessions, session_bounds
from ibf_core.fundamentals.inputs import MACRO_INDICATORS

EASTERN = "America/New_York"
PRE_MARKET = "pre-market"
RELEASE_LAG: dict[str, int] = {
    "treasury_3m": 0,
    "treasury_2y": 0,
    "treasury_10y": 0,
    "fed_funds": 0,
    "cpi": 17,
    "unemployment": 9,
}
# Daily series are labelled by their day, monthly ones by the month's first day (Alpha Vantage's labels).
INTERVAL: dict[str, str] = {name: params.get("interval", "monthly") for name, (_, params) in MACRO_INDICATORS.items()}


def _days(values: Any) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(pd.Series(list(values), dtype=object))).normalize()


def next_session_after(days: Any) -> pd.DatetimeIndex:
    """The first NYSE session strictly after each day (NaT beyond the calendar)."""
    sessions = all_sessions()
    idx = _days(days)
    pos = np.searchsorted(sessions.values, idx.values, side="right")
    out = sessions.values[np.minimum(pos, len(sessions) - 1)]
    return pd.DatetimeIndex(np.where((pos < len(sessions)) & ~idx.isna(), out, np.datetime64("NaT")))


def is_session(days: Any) -> np.ndarray:
    """Whether each day is an NYSE session."""
    return _days(days).isin(all_sessions())


def earnings_dates(reported: Any, report_time: Any) -> pd.DatetimeIndex:
    """Session of each earnings report: its own for pre-market reports on a session, else the next one after."""
    days = _days(reported)
    own = is_session(days) & (pd.Series(report_time, dtype=object).fillna("").to_numpy() == PRE_MARKET)
    return pd.DatetimeIndex(np.where(own, days.values, next_session_after(days).values))


def recording_session(now: Any) -> pd.Timestamp:
    """The session a value fetched at ``now`` (tz-aware; naive = UTC) counts for: today's before its close, else
    the next session."""
    stamp = pd.Timestamp(now)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    today = stamp.tz_convert(EASTERN).date()
    bounds = session_bounds(today)
    if bounds is not None and stamp < bounds[1]:
        return pd.Timestamp(today)
    day = next_session_after([pd.Timestamp(today)])[0]
    if pd.isna(day):
        raise ValueError(f"{today}: no NYSE session after it in the loaded calendar")
    return pd.Timestamp(day)


def period_end(indicator: str, periods: Any) -> pd.DatetimeIndex:
    """The last day each period covers: the day itself (daily series) or the month's last day (monthly)."""
    days = _days(periods)
    if INTERVAL[indicator] == "daily":
        return days
    return days + pd.offsets.MonthEnd(0)


def macro_dates(indicator: str, periods: Any) -> pd.DatetimeIndex:
    """First session strictly after each period's publication (its end + ``RELEASE_LAG[indicator]`` days)."""
    published = period_end(indicator, periods) + pd.Timedelta(days=RELEASE_LAG[indicator])
    return next_session_after(published)
