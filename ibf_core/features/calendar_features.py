"""Future-known calendar features from the NYSE calendar (usable as future covariates by forecasting models).

"Future-known" must mean known in advance, so everything here is computed on the *scheduled* NYSE calendar:
weekdays minus the exchange's rule-based holidays. Ad-hoc closures (9/11, Hurricane Sandy, state funerals)
were not known beforehand and are deliberately ignored: on 2012-10-26 nobody knew the market would be shut
on the 29th, so that Friday is not flagged as the session before a holiday.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import pandas as pd

from ibf_core.calendar import _calendar
from ibf_core.features import Feature, Panel

# Far enough ahead to find the next holiday after the last date (the longest NYSE holiday gap is ~3 months).
_HORIZON = pd.Timedelta(days=400)


def _f(name: str, description: str) -> Feature:
    return Feature(name, description, "calendar", 1, future_known=True, ffill=False)


FEATURES: list[Feature] = [
    _f("day_of_week", "Day of the week, 0 = Monday .. 4 = Friday"),
    _f("month", "Month, 1..12"),
    _f("is_month_start", "1 on the first scheduled session of the month, else 0"),
    _f("is_month_end", "1 on the last scheduled session of the month, else 0"),
    _f("is_quarter_end", "1 on the last scheduled session of the quarter, else 0"),
    _f("sessions_to_month_end", "Scheduled sessions left in the month after this one"),
    _f("sessions_to_holiday", "Scheduled sessions after this one before the next weekday NYSE holiday"),
    _f("is_pre_holiday", "1 when the next weekday is an NYSE holiday (long weekend ahead), else 0"),
    _f("is_post_holiday", "1 when the previous weekday was an NYSE holiday, else 0"),
]


def scheduled_calendar(first: pd.Timestamp, last: pd.Timestamp) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """(scheduled sessions, weekday regular holidays) covering at least [first, last] (whole years)."""
    return _scheduled_years(first.year, last.year)


@lru_cache(maxsize=16)
def _scheduled_years(first_year: int, last_year: int) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    # Evaluating the holiday rules is slow (pandas holiday calendars); whole years make the cache hit.
    first, last = pd.Timestamp(first_year, 1, 1), pd.Timestamp(last_year, 12, 31)
    weekdays = pd.bdate_range(first, last)
    rule_based = pd.DatetimeIndex(_calendar().regular_holidays.holidays(first, last))
    holidays = rule_based[rule_based.dayofweek < 5].unique().sort_values()
    return weekdays.difference(holidays), holidays


def calendar_table(days: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    """Every calendar feature for each of ``days`` (one value per date), as float arrays."""
    if not len(days):
        return {f.name: np.array([], dtype=np.float64) for f in FEATURES}
    sessions, holidays = scheduled_calendar(days[0] - pd.Timedelta(days=40), days[-1] + _HORIZON)
    i = sessions.searchsorted(days)
    month_key = (sessions.year * 12 + sessions.month).to_numpy()
    quarter_key = (sessions.year * 4 + (sessions.month - 1) // 3).to_numpy()
    last_of_month = np.searchsorted(month_key, month_key, side="right") - 1
    first_of_month = np.searchsorted(month_key, month_key, side="left")
    last_of_quarter = np.searchsorted(quarter_key, quarter_key, side="right") - 1

    next_holiday = holidays.searchsorted(days, side="right")
    known = next_holiday < len(holidays)
    upcoming = sessions.searchsorted(holidays[np.minimum(next_holiday, len(holidays) - 1)])
    to_holiday = np.where(known, upcoming - i - 1, np.nan)
    previous_weekday = days - pd.offsets.BDay(1)

    return {
        "day_of_week": days.dayofweek.to_numpy(dtype=np.float64),
        "month": days.month.to_numpy(dtype=np.float64),
        "is_month_start": (first_of_month[i] == i).astype(np.float64),
        "is_month_end": (last_of_month[i] == i).astype(np.float64),
        "is_quarter_end": (last_of_quarter[i] == i).astype(np.float64),
        "sessions_to_month_end": (last_of_month[i] - i).astype(np.float64),
        "sessions_to_holiday": to_holiday.astype(np.float64),
        "is_pre_holiday": np.where(known, to_holiday == 0, np.nan).astype(np.float64),
        "is_post_holiday": previous_weekday.isin(holidays).astype(np.float64),
    }


def compute(panel: Panel, out: Mapping[str, np.ndarray]) -> None:
    """Fill the calendar rows of ``out`` (computed once per distinct date, broadcast to rows)."""
    for name, values in calendar_table(panel.days).items():
        panel.by_date(values, out=out[name])
