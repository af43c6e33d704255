"""NYSE trading calendar (exchange_calendars' XNYS): trading days, holidays and the latest complete session."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import pickle
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ibf_core.settings import SettingsError, get_settings

# Heavy imports (exchange_calendars) stay inside the functions that need them: importing this module loads none of them.

log = logging.getLogger(__name__)

CALENDAR_NAME = "XNYS"
# exchange_calendars ships XNYS sessions from 1885 to one year ahead; we only need this window.
_CAL_START = "1990-01-02"


@lru_cache(maxsize=1)
def _calendar():
    """XNYS from _CAL_START to a year ahead. Building it takes ~1 s (pandas' holiday rules, session by session) in
    every process that needs a session: the built calendar is kept in ``<IBF_HOME>/cache/calendar`` for the day
    (a pickle, 0.04 s to load), named by the exchange_calendars version and the window."""
    import exchange_calendars as xcals

    end = (pd.Timestamp.today() + pd.DateOffset(years=1)).normalize()
    cached = _cache_file(xcals.__version__, end)
    if cached is not None and cached.is_file():
        try:
            with open(cached, "rb") as handle:
                return pickle.load(handle)
        except Exception as exc:  # a truncated or foreign file: built again and replaced
            log.warning("calendar cache %s unreadable (%s: %s); building the calendar", cached, type(exc).__name__, exc)
    calendar = xcals.get_calendar(CALENDAR_NAME, start=_CAL_START, end=end)
    if cached is not None:
        _store(cached, calendar)
    return calendar


def _cache_file(version: str, end: pd.Timestamp) -> Path | None:
    """The cache file of this calendar, under the settings' cache folder (None without valid settings)."""
    try:
        folder = get_settings().cache_dir / "calendar"
    except SettingsError:  # the command that loaded settings says so; a calendar is still built
        return None
    return folder / f"{CALENDAR_NAME}-{version}-{_CAL_START}-{end.date()}.pickle"


def _store(path: Path, calendar: object) -> None:
    """Write the cache file whole (temp file, rename) and remove older ones; a folder that cannot be written
    (a read-only home) leaves the calendar uncached."""
    # Not ibf_core.storage.atomic: a cache needs no fsync, and the writer's fault switchboard (IBF_STORAGE_FAULTS)
    # counts warehouse files; a torn file fails to load and is built again.
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(pickle.dumps(calendar, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(temp, path)
        for old in path.parent.glob(f"{CALENDAR_NAME}-*.pickle"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        log.info("calendar not cached in %s: %s", path.parent, exc)


@lru_cache(maxsize=1)
def all_sessions() -> pd.DatetimeIndex:
    """Every NYSE session in the loaded window (tz-naive)."""
    return pd.DatetimeIndex(_calendar().sessions).tz_localize(None)


def to_date(value: str | dt.date | pd.Timestamp) -> dt.date:
    """Parse an ISO date (or pass a date through)."""
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value).strip())


def trading_days(start: str | dt.date, end: str | dt.date) -> pd.DatetimeIndex:
    """Trading sessions in [start, end], both inclusive, as tz-naive midnight timestamps."""
    sessions = all_sessions()
    lo, hi = pd.Timestamp(to_date(start)), pd.Timestamp(to_date(end))
    return sessions[(sessions >= lo) & (sessions <= hi)]


def holidays(start: str | dt.date, end: str | dt.date) -> list[dt.date]:
    """Weekdays in [start, end] on which NYSE is closed (full-day holidays and special closures)."""
    weekdays = pd.bdate_range(to_date(start), to_date(end))
    sessions = trading_days(start, end)
    return [d.date() for d in weekdays.difference(sessions)]


def latest_complete_session(now: pd.Timestamp | None = None) -> dt.date:
    """The newest session whose close has passed at ``now`` (default: the current time)."""
    cal = _calendar()
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    if now.tzinfo is None:
        now = now.tz_localize("UTC")
    closes = cal.schedule["close"]
    done = closes[closes <= now]
    return done.index[-1].date()


def lookback_start(start: str | dt.date, sessions: int) -> dt.date:
    """The session ``sessions`` NYSE sessions before ``start`` (the first day a trailing window needs)."""
    history = trading_days(pd.Timestamp(to_date(start)) - pd.Timedelta(days=int(sessions * 1.6) + 10), start)
    return history[-(sessions + 1)].date() if len(history) > sessions else history[0].date()


def week_end_sessions(start: str | dt.date, end: str | dt.date) -> list[dt.date]:
    """The last NYSE session of every week (Monday-Friday) that has a session in [start, end]."""
    days = trading_days(start, end)
    if days.empty:
        return []
    weeks = pd.Series(days, index=days).groupby(days.to_period("W-FRI")).max()
    return [d.date() for d in weeks]


def session_bounds(date: str | dt.date) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The regular session's open and close (UTC; early closes included) on ``date``, None when NYSE is closed."""
    schedule = _calendar().schedule
    day = pd.Timestamp(to_date(date))
    if day not in schedule.index:
        return None
    row = schedule.loc[day]
    return pd.Timestamp(row["open"]).tz_convert("UTC"), pd.Timestamp(row["close"]).tz_convert("UTC")


def market_is_open(now: pd.Timestamp | None = None) -> bool:
    """Whether ``now`` (default: the current time) is inside a regular NYSE session."""
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    bounds = session_bounds(now.tz_convert("America/New_York").date())
    return bounds is not None and bounds[0] <= now < bounds[1]
